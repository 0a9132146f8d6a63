"""Region losses on hostile input: NaN and infinity, counted and ignored, and logits given as probabilities.

The contract (DESIGN.md, NaN policy): a NaN or infinity in a counted position raises with value
checks on and propagates with them off, never a silent 0; ignored positions may hold anything,
and the loss and the other positions' gradient stay what they are without them, their own
gradient 0.
"""

from __future__ import annotations

import pytest
import torch

import losskit
from losskit.functional.segmentation import _front as seg_module

LOSSES = ["dice_loss", "jaccard_loss", "tversky_loss", "focal_tversky_loss", "generalized_dice_loss", "mcc_loss",
          "dice_ce_loss"]
IGNORE = 255


def _data(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 7, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randint(3, (2, 6, 7), generator=gen)
    y[0, :2] = IGNORE  # 14 ignored voxels in sample 0, 3 in sample 1
    y[1, 3, 2:5] = IGNORE
    return x, y


def _poison(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x`` with NaN, +inf and -inf at the ignored voxels, a different one per channel."""
    bad = x.clone()
    ignored = (y == IGNORE).unsqueeze(1).expand_as(x)
    values = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=x.dtype).view(1, 3, 1, 1).expand_as(x)
    bad[ignored] = values[ignored]
    return bad


def _value_and_grad(name, x, y, *, plain, monkeypatch, retain=False, **options):
    x = x.detach().clone().requires_grad_(True)
    with monkeypatch.context() as patch:
        if plain:  # the path torch.compile takes
            patch.setattr(seg_module, "_fused_kernel", lambda *args: None)
        value = getattr(losskit, name)(x, y, ignore_index=IGNORE, reduction="none", **options)
        (grad,) = torch.autograd.grad(value.sum(), x, retain_graph=retain)
        if retain:  # a second backward recomputes the activation chunk by chunk
            (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


@pytest.mark.parametrize("case", ["softmax", "sigmoid", "softmax_plain", "sigmoid_plain", "bfloat16",
                                  "second_backward"])
@pytest.mark.parametrize("name", LOSSES)
def test_nan_and_inf_at_ignored_voxels_change_nothing(name, case, monkeypatch):
    dtype = torch.bfloat16 if case == "bfloat16" else torch.float64
    x, y = _data(dtype)
    options = dict(plain=case.endswith("plain"), monkeypatch=monkeypatch, retain=case == "second_backward",
                   activation="sigmoid" if case.startswith("sigmoid") else "softmax")
    clean_value, clean_grad = _value_and_grad(name, x, y, **options)
    value, grad = _value_and_grad(name, _poison(x, y), y, **options)  # value checks on: no error
    assert torch.isfinite(value).all()
    torch.testing.assert_close(value, clean_value, rtol=0, atol=0)
    torch.testing.assert_close(grad, clean_grad, rtol=0, atol=0)
    assert (grad.movedim(1, -1)[y == IGNORE] == 0).all()
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("name", LOSSES)
def test_nan_in_a_counted_voxel_raises_or_propagates_never_zero(name, activation):
    x, y = _data()
    x[0, 1, 4, 4] = float("nan")  # sample 0, a voxel that counts
    fn = getattr(losskit, name)
    with pytest.raises(ValueError, match="input contains non-finite values"):
        fn(x, y, activation=activation, ignore_index=IGNORE)
    with losskit.set_checks(False):
        out = fn(x, y, activation=activation, ignore_index=IGNORE, reduction="none")
    first = out[0]
    assert torch.isnan(first).any(), first  # the NaN sample's value is NaN, not 0
    assert torch.isfinite(out[1]).all()


def test_focal_tversky_of_a_nan_statistic_is_nan_and_of_a_perfect_match_zero():
    # The exponent 1/gamma < 1 needs a floor at a perfect match; the floor's branch must not swallow NaN.
    x, y = _data()
    x[1, 0, 0, 0] = float("nan")
    with losskit.set_checks(False):
        out = losskit.focal_tversky_loss(x, y, ignore_index=IGNORE, reduction="none")
    assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all()
    hard = torch.nn.functional.one_hot(y.clamp_max(2), 3).movedim(-1, 1).double()  # a perfect prediction
    exact = losskit.focal_tversky_loss(hard, y.clamp_max(2), activation=None, smooth_nr=0.0, smooth_dr=0.0,
                                       reduction="none")
    assert (exact == 0).all()


@pytest.mark.parametrize("name", [n for n in LOSSES if n != "dice_ce_loss"])
def test_activation_none_takes_probabilities_only(name):
    x, y = _data()
    fn = getattr(losskit, name)
    with pytest.raises(ValueError, match=r"input must hold probabilities in \[0, 1\].*activation='softmax'"):
        fn(x, y, activation=None, ignore_index=IGNORE)  # logits as probabilities: Dice 1.22, MCC -14523 before
    with losskit.set_checks(False):
        fn(x, y, activation=None, ignore_index=IGNORE)  # a value check: switched off with the others
    p = torch.softmax(x, 1)
    p[(y == IGNORE).unsqueeze(1).expand_as(p)] = 7.0  # ignored voxels may hold anything
    value = fn(p, y, activation=None, ignore_index=IGNORE)
    assert torch.isfinite(value) and 0 <= value <= 2
