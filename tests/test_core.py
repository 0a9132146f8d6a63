"""The contract's own pieces: the reduction helper, the registry, and the module base."""

from __future__ import annotations

import pytest
import torch

import losskit
from losskit import reduce_loss


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-7, atol=1e-9)


# --- reduce_loss ------------------------------------------------------------------------------


def test_reduce_loss_hand_worked():
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    weight = torch.tensor([1.0, 0.0, 2.0, 1.0], dtype=torch.float64)
    mask = torch.tensor([True, True, True, False])
    close(reduce_loss(loss, "sum"), torch.tensor(10.0, dtype=torch.float64))
    close(reduce_loss(loss, "mean"), torch.tensor(2.5, dtype=torch.float64))
    # weighted: (1*1 + 0*2 + 2*3 + 1*4) / (1 + 0 + 2 + 1) = 11 / 4
    close(reduce_loss(loss, "mean", weight=weight), torch.tensor(11 / 4, dtype=torch.float64))
    # masked: the 4th unit is gone from both sums: (1 + 2 + 3) / 3
    close(reduce_loss(loss, "mean", mask=mask), torch.tensor(2.0, dtype=torch.float64))
    # both: (1 + 0 + 6) / (1 + 0 + 2)
    close(reduce_loss(loss, "mean", weight=weight, mask=mask), torch.tensor(7 / 3, dtype=torch.float64))
    close(reduce_loss(loss, "none", mask=mask), torch.tensor([1.0, 2.0, 3.0, 0.0], dtype=torch.float64))
    close(reduce_loss(loss, "mean", normalizer=8), torch.tensor(10 / 8, dtype=torch.float64))


def test_masked_units_may_hold_nan_or_inf():
    loss = torch.tensor([1.0, float("nan"), float("inf")], requires_grad=True)
    out = reduce_loss(loss, "mean", mask=torch.tensor([True, False, False]))
    assert out.item() == 1.0
    out.backward()
    assert torch.equal(loss.grad, torch.tensor([1.0, 0.0, 0.0]))


def test_everything_ignored_or_zero_weight_gives_zero_with_a_gradient():
    loss = torch.tensor([1.0, 2.0], requires_grad=True)
    for out in (
        reduce_loss(loss, "mean", mask=torch.zeros(2, dtype=torch.bool)),
        reduce_loss(loss, "mean", weight=torch.zeros(2)),
        reduce_loss(loss[:0], "mean"),
    ):
        assert out.item() == 0.0 and out.requires_grad
        out.backward()


def test_weight_must_not_grow_the_loss():
    with pytest.raises(ValueError, match=r"weight must be broadcastable to the loss's natural unit, shape \(3,\)"):
        reduce_loss(torch.ones(3), "mean", weight=torch.ones(2, 3))


def test_out_dtype_is_applied_after_reducing_in_float32():
    loss = torch.full((70000,), 1.0)  # a float16 sum would overflow at 65504
    assert reduce_loss(loss, "sum", out_dtype=torch.float32).item() == 70000
    assert reduce_loss(loss, "mean", out_dtype=torch.float16).dtype == torch.float16


# --- registry ---------------------------------------------------------------------------------


def test_aliases_and_case_insensitive_names_resolve_to_the_same_loss():
    assert type(losskit.get("ce")) is losskit.CrossEntropyLoss
    assert type(losskit.get("CE")) is losskit.CrossEntropyLoss
    assert type(losskit.get("bce")) is losskit.BinaryCrossEntropyLoss
    assert type(losskit.get("mse")) is losskit.MSELoss
    assert type(losskit.get("mae")) is losskit.L1Loss
    assert type(losskit.get("focal")) is losskit.SigmoidFocalLoss
    assert type(losskit.get("huber_loss")) is losskit.HuberLoss
    assert type(losskit.get("smooth-l1")) is losskit.SmoothL1Loss


def test_available_by_family():
    families = losskit.families()
    assert {"regression", "classification", "divergence"} <= set(families)
    everything = losskit.available()
    assert sorted(sum((losskit.available(f) for f in families), [])) == everything
    assert "cross_entropy" in losskit.available("classification")


def test_get_with_overrides_and_passing_a_module():
    module = losskit.get({"name": "focal", "gamma": 1.0}, gamma=3.0)
    assert module.get_config() == {"name": "sigmoid_focal", "gamma": 3.0}
    assert losskit.get(module) is module
    assert losskit.get(module, alpha=0.5).get_config() == {"name": "sigmoid_focal", "gamma": 3.0, "alpha": 0.5}


# --- LossModule -------------------------------------------------------------------------------


def test_tensor_options_are_buffers_and_lists_become_tensors():
    module = losskit.CrossEntropyLoss(weight=[1.0, 2.0, 3.0], label_smoothing=0.1)
    assert dict(module.named_buffers())["weight"].tolist() == [1.0, 2.0, 3.0]
    assert module.get_config() == {"name": "cross_entropy", "label_smoothing": 0.1, "weight": [1.0, 2.0, 3.0]}
    assert "weight" in module.state_dict()
    assert module.to(torch.float64).weight.dtype == torch.float64


def test_forward_does_not_change_state():
    module = losskit.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0]))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    module(torch.randn(4, 2), torch.tensor([0, 1, 1, 0]))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_module_docstring_is_the_function_docstring():
    assert "Softmax cross-entropy on logits" in losskit.CrossEntropyLoss.__doc__
    assert losskit.CrossEntropyLoss.__doc__.startswith("Module form of :func:`losskit.cross_entropy`")


def test_per_call_options_win_over_stored_ones():
    module = losskit.L1Loss(reduction="sum")
    x, y = torch.tensor([1.0, 3.0]), torch.zeros(2)
    assert module(x, y).item() == 4.0
    assert module(x, y, reduction="mean").item() == 2.0
