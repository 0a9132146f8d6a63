"""bounded_iou_loss against a float64 transcription of mmdetection's formula.

Provenance: mmdetection ``mmdet/models/losses/iou_loss.py``, ``bounded_iou_loss(pred, target,
beta=0.2, eps=1e-3)``: centres and sizes from ``xyxy`` corners (the target's without gradient),
``loss_dx = 1 - max((w_t - 2|dx|) / (w_t + 2|dx| + eps), 0)``, ``loss_dw = 1 - min(w_t / (w_p + eps),
w_p / (w_t + eps))`` (y and h alike), then smooth L1 at ``beta`` on the (N, 4) costs, averaged over
every element by ``BoundedIoULoss`` with ``reduction="mean"``.
"""

from __future__ import annotations

import pytest
import torch

import losskit


def _mmdet_bounded_iou(pred, target, beta=0.2, eps=1e-3):
    pred_ctr = (pred[:, :2] + pred[:, 2:]) * 0.5
    pred_wh = pred[:, 2:] - pred[:, :2]
    target_ctr = (target[:, :2] + target[:, 2:]) * 0.5
    target_wh = target[:, 2:] - target[:, :2]
    d = target_ctr - pred_ctr
    loss_d = 1 - torch.clamp_min((target_wh - 2 * d.abs()) / (target_wh + 2 * d.abs() + eps), 0)
    loss_wh = 1 - torch.minimum(target_wh / (pred_wh + eps), pred_wh / (target_wh + eps))
    comb = torch.cat([loss_d, loss_wh], 1)
    return torch.where(comb < beta, 0.5 * comb * comb / beta, comb - 0.5 * beta)


def _pairs(n, gen):
    corner = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 100
    size = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 50 + 1
    target = torch.cat([corner, corner + size], 1)
    pred = target + torch.randn(n, 4, generator=gen, dtype=torch.float64) * size.repeat(1, 2) * 0.3
    pred = torch.cat([torch.minimum(pred[:, :2], pred[:, 2:] - 0.5), pred[:, 2:]], 1)
    return pred, target


@pytest.mark.parametrize(("beta", "eps"), [(0.2, 1e-3), (0.05, 1e-2), (1.0, 1e-6)])
def test_bounded_iou_matches_mmdetection(beta, eps):
    pred, target = _pairs(200, torch.Generator().manual_seed(0))
    expected = _mmdet_bounded_iou(pred, target, beta, eps)
    ours = losskit.bounded_iou_loss(pred, target, beta=beta, eps=eps, reduction="none")
    torch.testing.assert_close(ours, expected.mean(1), rtol=1e-12, atol=1e-15)
    assert losskit.bounded_iou_loss(pred, target, beta=beta, eps=eps).item() == pytest.approx(
        expected.mean().item(), rel=1e-12)


def test_bounded_iou_gradient_matches_mmdetection_and_leaves_the_target_alone():
    pred, target = _pairs(50, torch.Generator().manual_seed(1))
    ours_pred, ref_pred = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    target_leaf = target.clone().requires_grad_()
    losskit.bounded_iou_loss(ours_pred, target_leaf, reduction="sum").backward()
    (_mmdet_bounded_iou(ref_pred, target).mean(1).sum()).backward()
    torch.testing.assert_close(ours_pred.grad, ref_pred.grad, rtol=1e-10, atol=1e-14)
    assert target_leaf.grad is None or (target_leaf.grad == 0).all()


def test_bounded_iou_near_converged_keeps_its_digits_in_float32():
    # moved by d = 1e-3 in x on a 10-pixel box: c_x = (4d + eps) / (10 + 2d + eps); c_y, c_w and c_h
    # are eps / (10 + eps) (no offset, equal sizes); all below beta = 0.2, so each costs c^2 / 0.4
    target = torch.tensor([[100.0, 100.0, 110.0, 110.0]])
    pred = target + torch.tensor([[1e-3, 0.0, 1e-3, 0.0]])
    d = float(pred[0, 0]) - float(target[0, 0])  # the shift float32 holds
    c_x = (4 * d + 1e-3) / (10 + 2 * d + 1e-3)
    c_other = 1e-3 / (10 + 1e-3)
    expected = (c_x**2 + 3 * c_other**2) / 0.4 / 4
    assert losskit.bounded_iou_loss(pred, target).item() == pytest.approx(expected, rel=1e-5)
