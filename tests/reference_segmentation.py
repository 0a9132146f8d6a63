"""Float64 references for the region losses, written from the papers' formulas with explicit
one-hot targets and plain loops (no shared code with losskit).

Every function takes probabilities ``p`` (N, C, *spatial), a one-hot / soft target ``t`` of the
same shape and a validity mask ``m`` (N, *spatial) (1 = counts), and returns the per-(sample,
class) loss (N, C) (per sample (N,) for generalized Dice), before any channel selection.
"""

from __future__ import annotations

import math

import torch


def sums(p, t, m):
    """TP, FP, FN, TN per (sample, class) by loops over samples and classes."""
    n, c = p.shape[:2]
    tp, fp, fn, tn = (torch.zeros(n, c, dtype=torch.float64) for _ in range(4))
    for i in range(n):
        mi = m[i].double()
        for k in range(c):
            pk, tk = p[i, k].double() * mi, t[i, k].double() * mi
            tp[i, k] = (pk * tk).sum()
            fp[i, k] = (pk * (1 - tk)).sum()
            fn[i, k] = ((1 - pk) * tk * mi).sum()
            tn[i, k] = ((1 - pk) * (1 - tk) * mi).sum()
    return tp, fp, fn, tn


def pooled(stats):
    return tuple(s.sum(0, keepdim=True) for s in stats)


def dice(stats, snr=1e-5, sdr=1e-5):
    tp, fp, fn, _ = stats
    return 1 - (2 * tp + snr) / (2 * tp + fp + fn + sdr)


def jaccard(stats, snr=1e-5, sdr=1e-5):
    tp, fp, fn, _ = stats
    return 1 - (tp + snr) / (tp + fp + fn + sdr)


def tversky(stats, alpha, beta, snr=1e-5, sdr=1e-5):
    tp, fp, fn, _ = stats
    return 1 - (tp + snr) / (tp + alpha * fp + beta * fn + sdr)


def focal_tversky(stats, alpha, beta, gamma, snr=1e-5, sdr=1e-5):
    """Abraham & Khan 2019 Eq. 4, per class: (1 - TI)^(1/gamma)."""
    return tversky(stats, alpha, beta, snr, sdr) ** (1 / gamma)


def mcc(stats, snr=0.0, sdr=1e-5):
    tp, fp, fn, tn = stats
    out = torch.zeros_like(tp)
    for i in range(tp.shape[0]):
        for k in range(tp.shape[1]):
            a, b, c, d = tp[i, k].item(), fp[i, k].item(), fn[i, k].item(), tn[i, k].item()
            out[i, k] = 1 - (a * d - b * c + snr) / math.sqrt((a + b) * (a + c) * (d + b) * (d + c) + sdr)
    return out


def generalized_dice(stats, weight_type="square", snr=1e-5, sdr=1e-5):
    """Sudre 2017 with MONAI's max-weight replacement for absent classes."""
    tp, fp, fn, _ = stats
    out = torch.zeros(tp.shape[0], dtype=torch.float64)
    for i in range(tp.shape[0]):
        t_sum = (tp[i] + fn[i]).tolist()
        weights = []
        for v in t_sum:
            if weight_type == "uniform":
                weights.append(1.0)
            else:
                weights.append(math.inf if v == 0 else (1 / v**2 if weight_type == "square" else 1 / v))
        finite = [w for w in weights if w != math.inf]
        biggest = max(finite) if finite else 0.0
        weights = [biggest if w == math.inf else w for w in weights]
        num = sum(2 * w * tp[i, k].item() for k, w in enumerate(weights))
        den = sum(w * (2 * tp[i, k] + fp[i, k] + fn[i, k]).item() for k, w in enumerate(weights))
        out[i] = 1 - (num + snr) / (den + sdr)
    return out


def one_hot(labels, num_classes, ignore_index=None):
    """Explicit one-hot (N, C, *spatial) and the validity mask (N, *spatial)."""
    mask = torch.ones(labels.shape, dtype=torch.float64)
    if ignore_index is not None:
        mask = (labels != ignore_index).double()
    safe = torch.where(labels == ignore_index, torch.zeros_like(labels), labels) if ignore_index is not None \
        else labels
    t = torch.zeros((labels.shape[0], num_classes, *labels.shape[1:]), dtype=torch.float64)
    for k in range(num_classes):
        t[:, k] = (safe == k).double() * mask
    return t, mask


def cross_entropy_per_sample(logits, labels, mask, class_weight=None):
    """Mean over each sample's valid voxels of -log softmax(logits)[label], weighted by class_weight[label]."""
    logp = torch.log_softmax(logits.double(), 1)
    out = torch.zeros(logits.shape[0], dtype=torch.float64)
    for i in range(logits.shape[0]):
        flat_l = labels[i].reshape(-1)
        flat_m = mask[i].reshape(-1)
        flat_p = logp[i].reshape(logits.shape[1], -1)
        total, count = 0.0, 0.0
        for j in range(flat_l.numel()):
            if flat_m[j] > 0:
                w = 1.0 if class_weight is None else float(class_weight[int(flat_l[j])])
                total = total - w * flat_p[int(flat_l[j]), j]
                count += w
        out[i] = total / count if count > 0 else total * 0.0
    return out
