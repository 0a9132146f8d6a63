"""Bad input gets a clear error that names the argument, what it got and what was expected.

Cases tried (each a test below):
 1. shape mismatch between input and target (elementwise and softmax losses)
 2. wrong target dtype: float target of index shape, bool target, integer input
 3. class index out of range (and the same index allowed when it is ignore_index)
 4. negative gamma, delta <= 0, alpha outside [0, 1], label_smoothing outside [0, 1], softcap <= 0
 5. unknown reduction; normalizer with a reduction other than "mean"
 6. non-finite input (NaN, +inf, -inf on a target class), named in the error; overflow; and
    non-finite values that cannot affect the loss (a masked class, an ignored sample) pass
 7. class-weight vector of the wrong length; a scalar alpha for the softmax focal loss
 8. value checks switched off globally and in a context manager
 9. unknown loss name (did-you-mean), config without "name", unknown family, unknown option
"""

from __future__ import annotations

import pytest
import torch

import losskit


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"target must have the same shape as input \(3,\), got shape \(4,\)"):
        losskit.mse_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"target holds class indices, so it must have shape \(2,\)"):
        losskit.cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


def test_float_target_of_index_shape_explains_both_encodings():
    with pytest.raises(ValueError, match="class indices of shape \\(2,\\) need an integer dtype"):
        losskit.cross_entropy(torch.zeros(2, 3), torch.zeros(2))


def test_bool_target_and_integer_input_are_type_errors():
    with pytest.raises(TypeError, match="target must be integer class indices or floating probabilities"):
        losskit.cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.bool))
    with pytest.raises(TypeError, match="input must be a floating-point tensor, got dtype torch.int64"):
        losskit.binary_cross_entropy(torch.zeros(3, dtype=torch.long), torch.zeros(3))
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        losskit.sigmoid_focal_loss([0.0], torch.zeros(1))


def test_class_index_out_of_range():
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"target has class indices outside \[0, 3\] or ignore_index=-100: found 4..7"):
        losskit.cross_entropy(logits, torch.tensor([0, 4, 7]))
    with pytest.raises(ValueError, match="outside"):
        losskit.cross_entropy(logits, torch.tensor([0, -1, 2]))
    losskit.cross_entropy(logits, torch.tensor([0, -100, 2]))  # ignored: fine
    losskit.cross_entropy(logits, torch.tensor([0, 9, 2]), ignore_index=9)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, t: losskit.sigmoid_focal_loss(x, t, gamma=-1.0), r"gamma must be in \[0, inf\], got -1"),
        (lambda x, t: losskit.sigmoid_focal_loss(x, t, alpha=1.5), r"alpha must be in \[0, 1\], got 1.5"),
        (lambda x, t: losskit.huber_loss(x, t, delta=0.0), "delta"),
        (lambda x, t: losskit.huber_loss(x, t, delta=-2.0), "delta"),
        (lambda x, t: losskit.binary_cross_entropy(x, t, label_smoothing=1.2), "label_smoothing"),
        (lambda x, t: losskit.asymmetric_loss(x, t, clip=1.0), r"clip must be in \[0, 1\)"),
    ],
)
def test_options_out_of_range(call, message):
    with pytest.raises(ValueError, match=message):
        call(torch.zeros(3), torch.zeros(3))


def test_softmax_options_out_of_range():
    logits, target = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="softcap must be in"):
        losskit.cross_entropy(logits, target, softcap=0.0)
    with pytest.raises(ValueError, match="z_loss"):
        losskit.cross_entropy(logits, target, z_loss=-1e-4)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\), one entry per class, got shape \(2,\)"):
        losskit.cross_entropy(logits, target, weight=torch.ones(2))
    with pytest.raises(TypeError, match="alpha must be a per-class sequence"):
        losskit.softmax_focal_loss(logits, target, alpha=0.25)
    with pytest.raises(ValueError, match="class_counts must be > 0"):
        losskit.balanced_softmax_loss(logits, target, class_counts=[3, 0, 1])
    with pytest.raises(TypeError, match="integer class indices"):
        losskit.ldam_loss(logits, torch.softmax(logits, 1), class_counts=[1, 2, 3])


def test_unknown_reduction_and_misplaced_normalizer():
    with pytest.raises(ValueError, match=r"reduction must be one of \('none', 'mean', 'sum'\), got 'batchmean'"):
        losskit.l1_loss(torch.zeros(3), torch.zeros(3), reduction="batchmean")
    with pytest.raises(ValueError, match="normalizer= divides the weighted sum, so it needs reduction='mean'"):
        losskit.l1_loss(torch.zeros(3), torch.zeros(3), reduction="sum", normalizer=2)
    with pytest.raises(ValueError, match="normalizer must be in"):
        losskit.l1_loss(torch.zeros(3), torch.zeros(3), normalizer=0)


def test_non_finite_input_is_rejected_naming_the_culprit():
    with pytest.raises(ValueError, match=r"the loss is not finite: input contains non-finite values \(1 NaN\)"):
        losskit.binary_cross_entropy(torch.tensor([0.0, float("nan")]), torch.zeros(2))
    with pytest.raises(ValueError, match=r"input contains non-finite values \(1 \+inf\)"):
        losskit.cross_entropy(torch.tensor([[0.0, float("inf")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"target contains non-finite values \(1 NaN\)"):
        losskit.huber_loss(torch.zeros(3), torch.tensor([0.0, float("nan"), 1.0]), reduction="none")
    # A target class whose logit is -inf: the loss is infinite, and the -inf is named.
    with pytest.raises(ValueError, match=r"input contains non-finite values \(1 -inf\)"):
        losskit.cross_entropy(torch.tensor([[float("-inf"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="every input is finite, so it overflowed"):
        losskit.mse_loss(torch.tensor([3e38]), torch.tensor([-3e38]))


def test_non_finite_values_that_cannot_affect_the_loss_are_allowed():
    masked = torch.tensor([[0.0, float("-inf")]])  # a masked class the target does not name
    assert losskit.cross_entropy(masked, torch.tensor([0])).item() == 0.0
    ignored = torch.tensor([[0.0, 1.0], [float("nan"), 0.0]])  # an ignored sample may hold anything
    losskit.cross_entropy(ignored, torch.tensor([1, -100]))


def test_value_checks_can_be_switched_off():
    bad = torch.tensor([0, 4])
    logits = torch.zeros(2, 5)
    with losskit.set_checks(False):
        assert not losskit.checks_enabled()
        losskit.cross_entropy(torch.zeros(2, 5), torch.tensor([0, 4]))  # index 4 is valid for 5 classes
        losskit.binary_cross_entropy(torch.tensor([float("nan")]), torch.zeros(1))  # no check: NaN out
    assert losskit.checks_enabled()
    previous = losskit.set_checks(False)
    try:
        assert not losskit.checks_enabled()
    finally:
        losskit.set_checks(previous.previous)
    assert losskit.checks_enabled()
    with pytest.raises(ValueError, match="outside"):
        losskit.cross_entropy(logits[:, :4], bad)
    # Cheap checks stay on: they cost no device sync.
    with losskit.set_checks(False), pytest.raises(ValueError, match="reduction"):
        losskit.l1_loss(torch.zeros(1), torch.zeros(1), reduction="avg")


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown loss 'hubr'; did you mean 'huber'"):
        losskit.get("hubr")
    with pytest.raises(ValueError, match="a loss config needs a 'name' key"):
        losskit.get({"delta": 1.0})
    with pytest.raises(ValueError, match="unknown family 'segmentatoin'"):
        losskit.available("segmentatoin")
    with pytest.raises(TypeError, match="HuberLoss got an unexpected option 'detla'; did you mean 'delta'"):
        losskit.get("huber", detla=1.0)
    with pytest.raises(TypeError, match="spec must be a name, a config dict or a LossModule"):
        losskit.get(3)
