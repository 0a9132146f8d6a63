"""Dice + focal and generalized Dice + focal: live parity with MONAI 1.6, the fused focal kernel
against its plain autograd form, and the options MONAI lacks (ignore_index, soft labels)."""

from __future__ import annotations

import pytest
import torch

import losskit
from losskit.functional.segmentation import _focal

monai_losses = pytest.importorskip("monai.losses")


def _case(seed: int = 0, classes: int = 4, spatial: tuple[int, ...] = (5, 6, 3)):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((2, classes, *spatial), generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(classes, (2, 1, *spatial), generator=gen)
    return logits, labels


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [False, True])
def test_dice_focal_matches_monai(activation, include_background, batch):
    logits, labels = _case()
    for alpha, gamma in [(None, 2.0), (0.25, 1.5)]:
        monai = monai_losses.DiceFocalLoss(softmax=activation == "softmax", sigmoid=activation == "sigmoid",
                                           to_onehot_y=True, include_background=include_background, batch=batch,
                                           alpha=alpha, gamma=gamma)
        ours = losskit.dice_focal_loss(logits, labels, activation=activation, include_background=include_background,
                                       aggregate="batch" if batch else "per_sample", alpha=alpha, gamma=gamma)
        # MONAI computes its focal half in float32 (FocalLoss casts the logits)
        assert ours.item() == pytest.approx(monai(logits, labels).item(), rel=1e-6)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("batch", [False, True])
def test_generalized_dice_focal_matches_monai(activation, batch):
    logits, labels = _case(1)
    for w_type in ["square", "simple", "uniform"]:
        monai = monai_losses.GeneralizedDiceFocalLoss(softmax=activation == "softmax",
                                                      sigmoid=activation == "sigmoid", to_onehot_y=True,
                                                      batch=batch, w_type=w_type, gamma=2.0)
        ours = losskit.generalized_dice_focal_loss(logits, labels, activation=activation, weight_type=w_type,
                                                   aggregate="batch" if batch else "per_sample")
        assert ours.item() == pytest.approx(monai(logits, labels).item(), rel=1e-6)


def test_squared_and_one_hot_targets_match_monai():
    logits, labels = _case(2)
    one_hot = torch.nn.functional.one_hot(labels.squeeze(1), 4).movedim(-1, 1).double()
    monai = monai_losses.DiceFocalLoss(softmax=True, squared_pred=True)
    ours = losskit.dice_focal_loss(logits, one_hot, squared=True)
    assert ours.item() == pytest.approx(monai(logits, one_hot).item(), rel=1e-6)


def _reference_focal(logits, labels, gamma, alpha, first, valid=None):
    """Float64 per-(sample, channel) focal sums from the paper's formula on probabilities:
    -alpha_t (1 - p_t)^gamma log p_t."""
    p = torch.sigmoid(logits.double())
    t = torch.nn.functional.one_hot(labels, logits.shape[1]).movedim(-1, 1).double()
    pt = t * p + (1 - t) * (1 - p)
    loss = -(1 - pt) ** gamma * torch.log(pt)
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    if valid is not None:
        loss = loss * valid.unsqueeze(1)
    return loss[:, first:].flatten(2).sum(-1)


@pytest.mark.parametrize(("gamma", "alpha", "first"), [(2.0, None, 0), (0.5, 0.3, 1), (0.0, None, 0)])
def test_fused_focal_sums_match_the_formula_and_the_plain_form(gamma, alpha, first, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn((2, 3, 700), generator=gen, dtype=torch.float64) * 3).requires_grad_()
    labels = torch.randint(3, (2, 700), generator=gen).to(torch.uint8)
    monkeypatch.setattr(_focal, "_CPU_CHUNK", 3 * 2 * 64)  # several chunks, the last one short
    fused = _focal.focal_sums(logits, labels, first=first, ignore_index=None, gamma=gamma, alpha=alpha)
    plain = _focal.plain_focal_sums(logits, labels, first, None, gamma, alpha)
    reference = _reference_focal(logits, labels.long(), gamma, alpha, first)
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=0)
    torch.testing.assert_close(plain, reference, rtol=1e-12, atol=0)
    upstream = torch.rand(fused.shape, generator=gen, dtype=torch.float64)
    (g_fused,) = torch.autograd.grad(fused, logits, upstream)
    (g_reference,) = torch.autograd.grad(reference, logits, upstream)
    torch.testing.assert_close(g_fused, g_reference, rtol=1e-10, atol=1e-14)


def test_ignored_voxels_count_nowhere_even_when_nan():
    logits, labels = _case(4)
    labels = labels.squeeze(1)
    ignored = torch.zeros_like(labels, dtype=torch.bool)
    ignored[:, :2] = True
    poisoned = torch.where(ignored.unsqueeze(1), torch.nan, logits).requires_grad_()
    masked = torch.where(ignored, 255, labels)
    ours = losskit.dice_focal_loss(poisoned, masked, ignore_index=255, reduction="none")
    # the same loss on the kept voxels only: the first two rows dropped
    kept = losskit.dice_focal_loss(logits[:, :, 2:], labels[:, 2:], reduction="none")
    torch.testing.assert_close(ours, kept, rtol=1e-12, atol=0)
    ours.sum().backward()
    assert torch.isfinite(poisoned.grad).all() and (poisoned.grad[:, :, :2] == 0).all()


def test_soft_labels_interpolate_and_hard_soft_labels_equal_index_labels():
    logits, labels = _case(5)
    one_hot = torch.nn.functional.one_hot(labels.squeeze(1), 4).movedim(-1, 1).double()
    torch.testing.assert_close(losskit.dice_focal_loss(logits, one_hot, alpha=0.3),
                               losskit.dice_focal_loss(logits, labels, alpha=0.3), rtol=1e-12, atol=0)
    soft = 0.8 * one_hot + 0.05
    x = logits[:, :, :1, :1, :1]
    t = soft[:, :, :1, :1, :1]
    # one voxel: mean over channels of |t - p|^gamma-style factor times BCE, by hand from the definition
    p = torch.sigmoid(x)
    focal = ((t * (1 - p) + (1 - t) * p) ** 2 * torch.nn.functional.binary_cross_entropy(p, t, reduction="none"))
    dice = losskit.dice_loss(x, t, reduction="none").mean(1)
    expected = dice + focal.mean((1, 2, 3, 4))
    torch.testing.assert_close(losskit.dice_focal_loss(x, t, reduction="none"), expected, rtol=1e-10, atol=0)


def test_second_derivatives_and_half_precision_gradient():
    logits, labels = _case(6, spatial=(3, 4))
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda v: losskit.dice_focal_loss(v, labels, alpha=0.3), (x,))
    half = logits.to(torch.bfloat16).requires_grad_()
    losskit.dice_focal_loss(half, labels).backward()
    reference = logits.to(torch.bfloat16).double().requires_grad_()
    losskit.dice_focal_loss(reference, labels).backward()
    assert half.grad.dtype == torch.bfloat16
    torch.testing.assert_close(half.grad.double(), reference.grad, rtol=2**-7, atol=1e-6)
