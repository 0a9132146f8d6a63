"""Float64 references for the dense-detection losses, written from the papers' formulas and from the
peers' conventions as described in ``/work/shared/reference/peers.md`` (sections 3.3-3.5, 4.1 step 7).

Deliberately naive: Python loops over elements, probabilities rather than log space, no code
shared with losskit (and none copied from a peer). Only evaluated on moderate logits.
"""

from __future__ import annotations

import math

import torch


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bce(x: float, q: float) -> float:
    p = _sigmoid(x)
    return -(q * math.log(p) + (1 - q) * math.log(1 - p))


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _elementwise(fn, *tensors: torch.Tensor) -> torch.Tensor:
    flat = [t.reshape(-1).tolist() for t in tensors]
    return torch.tensor([fn(*args) for args in zip(*flat, strict=True)], dtype=torch.float64).reshape(tensors[0].shape)


# --- varifocal (Zhang et al. 2021, Eq. 2) -----------------------------------------------------


def varifocal(logits, q, *, alpha, gamma, label=None):
    """Elementwise VFL. Without ``label``: positive iff q > 0 (weight q), else alpha p^gamma (paper,
    mmdetection). With ``label``: weight alpha p^gamma (1 - l) + q l (Ultralytics)."""

    def by_target(x, t):
        return (t if t > 0 else alpha * _sigmoid(x) ** gamma) * _bce(x, t)

    def by_label(x, t, l):
        return (alpha * _sigmoid(x) ** gamma * (1 - l) + t * l) * _bce(x, t)

    return _elementwise(by_target, logits, q) if label is None else _elementwise(by_label, logits, q, label)


def varifocal_ultralytics(pred, gt_score, label, *, alpha=0.75, gamma=2.0):
    """Ultralytics VarifocalLoss on (B, A, C): elementwise weight * BCE, then .mean(1).sum()."""
    b, a, c = pred.shape
    loss = varifocal(pred, gt_score, alpha=alpha, gamma=gamma, label=label)
    total = 0.0
    for i in range(b):
        for k in range(c):
            total += sum(loss[i, j, k].item() for j in range(a)) / a
    return total


def varifocal_mmdet(pred, target, *, alpha=0.75, gamma=2.0, avg_factor):
    """mmdetection varifocal_loss (iou_weighted): weight t where t > 0, alpha |p - t|^gamma where t <= 0;
    summed and divided by avg_factor (mmdetection adds a float32 eps to avg_factor; ignored here)."""

    def one(x, t):
        p = _sigmoid(x)
        w = t if t > 0 else alpha * abs(p - t) ** gamma
        return w * _bce(x, t)

    return _elementwise(one, pred, target).sum().item() / avg_factor


# --- quality focal (Li et al. 2020, Eq. 5) ----------------------------------------------------


def quality_focal(logits, q, *, beta):
    return _elementwise(lambda x, t: _bce(x, t) * abs(t - _sigmoid(x)) ** beta, logits, q)


def quality_focal_mmdet(pred, label, score, *, beta=2.0):
    """mmdetection's per-anchor QFL: (N, C) logits, (N,) labels with background index C, (N,) scores.
    Every class is a negative (BCE(x, 0) p^beta) except the label's, which is BCE(x, s) |s - p|^beta;
    summed over classes: shape (N,)."""
    n, c = pred.shape
    out = []
    for i in range(n):
        total = 0.0
        for k in range(c):
            x = pred[i, k].item()
            p = _sigmoid(x)
            if k == label[i].item():
                s = score[i].item()
                total += _bce(x, s) * abs(s - p) ** beta
            else:
                total += _bce(x, 0.0) * p**beta
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


# --- distribution focal (Li et al. 2020, Eq. 6) -----------------------------------------------


def distribution_focal(logits, target, *, clamp_max=None):
    """One value per distribution: -(y_r - y) log S_{y_l} - (y - y_l) log S_{y_r}, target first
    clamped to clamp_max when given. logits (..., n), target (...)."""
    n = logits.shape[-1]
    rows = logits.reshape(-1, n).tolist()
    out = []
    for row, y in zip(rows, target.reshape(-1).tolist(), strict=True):
        if clamp_max is not None:
            y = min(y, clamp_max)
        s = _softmax(row)
        left = int(math.floor(y))
        right = left + 1
        value = -(right - y) * math.log(s[left])
        if right < n:  # y exactly at the last bin: the right term has weight 0
            value -= (y - left) * math.log(s[right])
        out.append(value)
    return torch.tensor(out, dtype=torch.float64).reshape(target.shape)


def dfl_ultralytics(pred, target, anchor_weight, target_scores_sum, *, reg_max=16):
    """Ultralytics BboxLoss DFL term: pred (N, 4, reg_max), target ltrb (N, 4) clamped to
    [0, reg_max - 1 - 0.01], two-bin CE, mean over the 4 sides, times the anchor weight
    sum_c target_scores, summed and divided by target_scores_sum."""
    per_side = distribution_focal(pred, target.clamp(0, reg_max - 1 - 0.01))
    total = 0.0
    for i in range(pred.shape[0]):
        total += sum(per_side[i].tolist()) / 4 * anchor_weight[i].item()
    return total / target_scores_sum


def dfl_mmdet(pred, target, anchor_weight, *, reg_max=16):
    """mmdetection GFLHead DFL: targets come from bbox2distance(max_dis=reg_max, eps=0.1), i.e.
    clamped to reg_max - 0.1; logits over reg_max + 1 bins. The loss has no clamp of its own;
    weight = anchor weight expanded x4, avg_factor 4, then the head divides by sum(anchor weights)."""
    head_target = target.clamp(0, reg_max - 0.1)
    per_side = distribution_focal(pred, head_target)  # no clamp inside the loss
    total = 0.0
    for i in range(pred.shape[0]):
        total += sum(per_side[i].tolist()) * anchor_weight[i].item()
    return total / 4.0 / anchor_weight.sum().item()


# --- Gaussian focal (CornerNet Eq. 1, CenterNet Eq. 1) ----------------------------------------


def gaussian_focal(logits, target, *, alpha, gamma):
    def one(x, t):
        p = _sigmoid(x)
        if t == 1.0:
            return -((1 - p) ** alpha) * math.log(p)
        return -((1 - t) ** gamma) * p**alpha * math.log(1 - p)

    return _elementwise(one, logits, target)


def centernet_focal(logits, target, *, alpha=2.0, gamma=4.0):
    """CenterNet's _neg_loss: the summed loss over the number of peaks (just the negatives' sum if none)."""
    total = gaussian_focal(logits, target, alpha=alpha, gamma=gamma).sum().item()
    num_pos = int((target == 1).sum())
    return total if num_pos == 0 else total / num_pos
