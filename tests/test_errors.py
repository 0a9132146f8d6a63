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


# --- the NaN policy, option values and the output dtype -------------------------------------------

SOFTMAX_WITH_IGNORE = {
    "cross_entropy": lambda x, t, **kw: losskit.cross_entropy(x, t, label_smoothing=0.1, z_loss=1e-3,
                                                              softcap=5.0, **kw),
    "softmax_focal": lambda x, t, **kw: losskit.softmax_focal_loss(x, t, gamma=2.0, **kw),
    "poly1_cross_entropy": lambda x, t, **kw: losskit.poly1_cross_entropy(x, t, **kw),
    "multi_margin": lambda x, t, **kw: losskit.multi_margin_loss(x, t, p=2, **kw),
    "ldam": lambda x, t, **kw: losskit.ldam_loss(x, t, class_counts=[5, 3, 1], **kw),
    "balanced_softmax": lambda x, t, **kw: losskit.balanced_softmax_loss(x, t, class_counts=[5, 3, 1], **kw),
    "logit_adjusted": lambda x, t, **kw: losskit.logit_adjusted_cross_entropy(x, t, class_prior=[5, 3, 1], **kw),
}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", sorted(SOFTMAX_WITH_IGNORE))
def test_an_ignored_sample_may_hold_nan_or_inf(name, value):
    # Row 1 is ignored and holds a non-finite logit; the loss and gradient equal those of the same
    # batch with a finite row there, and the ignored row's gradient is exactly 0 (torch's own
    # cross-entropy gives a NaN gradient row here, behind a finite loss).
    fn = SOFTMAX_WITH_IGNORE[name]
    finite = torch.tensor([[1.0, -0.5, 0.2], [0.3, 0.1, -2.0], [-1.0, 2.0, 0.5]], dtype=torch.float64)
    target = torch.tensor([0, -100, 2])
    poisoned = finite.clone()
    poisoned[1, 1] = value
    losses, grads = [], []
    for logits in (finite, poisoned):
        x = logits.clone().requires_grad_()
        loss = fn(x, target)
        (grad,) = torch.autograd.grad(loss, x)
        losses.append(loss)
        grads.append(grad)
    torch.testing.assert_close(losses[1], losses[0])
    assert (grads[1][1] == 0).all()
    torch.testing.assert_close(grads[1], grads[0] * torch.tensor([[1.0], [0.0], [1.0]], dtype=torch.float64))


def test_a_bool_ignore_index_is_rejected_with_one_message_everywhere():
    logits, target = torch.randn(3, 4), torch.tensor([0, 1, 2])
    calls = [
        lambda: losskit.cross_entropy(logits, target, ignore_index=True),
        lambda: losskit.softmax_focal_loss(logits, target, ignore_index=True),  # read True as class 1 before
        lambda: losskit.multi_margin_loss(logits, target, ignore_index=False),  # read False as class 0 before
        lambda: losskit.ldam_loss(logits, target, class_counts=[1, 2, 3, 4], ignore_index=True),
        lambda: losskit.dice_loss(torch.randn(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), ignore_index=True),
        lambda: losskit.lovasz_hinge_loss(torch.randn(1, 1, 4), torch.ones(1, 1, 4, dtype=torch.long),
                                          ignore_index=True),
        lambda: losskit.fused_linear_cross_entropy(torch.randn(3, 2), torch.randn(4, 2), target, ignore_index=True),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="ignore_index must be an int class index, got the bool"):
            call()


@pytest.mark.parametrize("value", [-2.0, 0.0, float("nan")])
def test_a_tensor_normalizer_must_be_positive(value):
    # A negative count flipped the loss's sign (mse gave -1.5 here); 0 (no positives) gave an
    # infinite loss blamed on overflow. Numbers were already checked; tensors are a value check.
    x, t = torch.ones(3), torch.zeros(3)
    with pytest.raises(ValueError, match="normalizer must be > 0"):
        losskit.mse_loss(x, t, normalizer=torch.tensor(value))
    with pytest.raises(ValueError, match="normalizer must be > 0"):
        losskit.fused_linear_cross_entropy(torch.randn(3, 2), torch.randn(4, 2), torch.tensor([0, 1, 2]),
                                           normalizer=torch.tensor(value))
    with losskit.set_checks(False):  # unchecked, the arithmetic runs as asked
        assert losskit.mse_loss(x, t, normalizer=torch.tensor(-2.0)).item() == -1.5


def test_a_nan_weight_is_named_as_the_cause():
    with pytest.raises(ValueError, match=r"weight contains non-finite values \(1 NaN\)"):
        losskit.mse_loss(torch.ones(3), torch.zeros(3), weight=torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="weight contains non-finite values"):
        losskit.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), weight=torch.tensor([float("nan"), 1, 1]))


def test_a_float16_result_that_overflows_names_the_dtype_and_the_way_out():
    # (300 - 0)^2 = 90000 > 65504, float16's largest finite number: computed in float32 and then
    # cast, the result was inf without an error.
    x, t = torch.tensor([300.0], dtype=torch.float16), torch.tensor([0.0], dtype=torch.float16)
    with pytest.raises(ValueError, match=r"overflows torch.float16.*reaches 90000.*input.float\(\)"):
        losskit.mse_loss(x, t)
    assert losskit.mse_loss(x.float(), t.float()).item() == 90000.0
    with losskit.set_checks(False):
        assert losskit.mse_loss(x, t).isinf()


@pytest.mark.parametrize(
    ("call", "option"),
    [
        (lambda x, t: losskit.multi_margin_loss(x, t.argmax(1), p=True), "p"),
        (lambda x, t: losskit.wiou_loss(x.abs().cumsum(1), x.abs().cumsum(1), version=True), "version"),
        (lambda x, t: losskit.poisson_nll_loss(x, t.abs(), full=1), "full"),
        (lambda x, t: losskit.gaussian_nll_loss(x, t, var=torch.ones(2, 4), full=1), "full"),
        (lambda x, t: losskit.softmax_focal_loss(x, t.argmax(1), alpha=[float("nan"), 1, 1, 1]), "alpha"),
    ],
)
def test_bools_for_numbers_and_nan_options_are_rejected(call, option):
    # True == 1 in Python: version=True ran Wise-IoU v1, p=True the hinge with p=1; full=1 and a NaN
    # alpha passed silently (the NaN was blamed on overflow).
    x, t = torch.randn(2, 4), torch.rand(2, 4)
    with pytest.raises((TypeError, ValueError), match=rf"\b{option}\b"):
        call(x, t)


SOFT_TARGET_LOSSES = ["cross_entropy", "softmax_focal_loss", "poly1_cross_entropy", "balanced_softmax_loss"]


@pytest.mark.parametrize("name", SOFT_TARGET_LOSSES)
def test_probability_targets_of_a_softmax_must_sum_to_one(name):
    fn = getattr(losskit, name)
    logits = torch.randn(4, 3)
    kwargs = {"class_counts": torch.tensor([5.0, 3.0, 1.0])} if name == "balanced_softmax_loss" else {}
    multi_hot = torch.tensor([[1.0, 1.0, 0.0]] * 4)  # two classes present: a sigmoid loss's labels
    with pytest.raises(ValueError, match=r"target .* must sum to 1; the row at \(0,\) sums to 2.*sigmoid"):
        fn(logits, multi_hot, **kwargs)
    with pytest.raises(ValueError, match="sums to 0.5"):
        fn(logits, torch.tensor([[0.25, 0.25, 0.0]] * 4), **kwargs)
    # A distribution rounded to bfloat16 (1/3 three times sums to 1.0039) passes; so does any
    # row with the check off (torch's own rule then: the loss of the unnormalised row).
    fn(logits.bfloat16(), torch.full((4, 3), 1 / 3).bfloat16(), **kwargs)
    with losskit.set_checks(False):
        assert torch.isfinite(fn(logits, multi_hot, **kwargs))
