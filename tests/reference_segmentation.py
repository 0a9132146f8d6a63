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


def wasserstein_dice(probs, labels, dist, weighting_mode="default", valid=None, snr=1e-5, sdr=1e-5):
    """Fidon et al. 2017, per sample, by loops over voxels: the voxel's Wasserstein distance to its
    one-hot label moves all the mass off the label, ``W = sum_c p_c M[c, y]`` (Eq. 6, ``M`` scaled
    to a largest entry of 1); ``TP = sum_x alpha_y (1 - W)``; ``default``: alpha 0 for the
    background and 1 elsewhere, denominator ``2 TP + sum_x W``; ``GDL`` (Tilborghs et al. 2020,
    appendix): ``alpha_c = 1 / (V_c + 1)``, denominator ``sum_x alpha_y (2 - W)``."""
    n, c = probs.shape[:2]
    m = dist.double() / dist.double().max()
    p = probs.double().reshape(n, c, -1)
    y = labels.reshape(n, -1)
    keep = torch.ones(y.shape, dtype=torch.bool) if valid is None else valid.reshape(n, -1)
    out = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        voxels = [j for j in range(y.shape[1]) if keep[i, j]]
        if weighting_mode == "GDL":
            counts = [sum(1 for j in voxels if int(y[i, j]) == k) for k in range(c)]
            alpha = [1.0 / (v + 1.0) for v in counts]
        else:
            alpha = [0.0] + [1.0] * (c - 1)
        tp = denominator = 0.0
        for j in voxels:
            label = int(y[i, j])
            w = sum(p[i, k, j] * m[k, label] for k in range(c))
            tp = tp + alpha[label] * (1 - w)
            denominator = denominator + (alpha[label] * (2 - w) if weighting_mode == "GDL" else w)
        if weighting_mode != "GDL":
            denominator = denominator + 2 * tp
        out[i] = 1 - (2 * tp + snr) / (denominator + sdr)
    return out


def asymmetric_unified_focal(logits, t, mask, lam=0.5, delta=0.6, gamma=0.5, focal_class_mean=False, snr=1e-7,
                             sdr=1e-7):
    """Yeung et al. 2022, per sample, on softmax probabilities with an explicit one-hot ``t``:
    ``lam * mean_x [(1-delta)(1-p0)^gamma (-log p0) t0 + delta sum_{c>=1} t_c (-log p_c)]
    + (1 - lam) * mean_c [1 - TI_0, (1 - TI_c)^(1 - gamma) for c >= 1]`` with
    ``TI = (TP + e) / (TP + delta FN + (1 - delta) FP + e)``; ``focal_class_mean`` also divides the
    focal half by the number of classes (MONAI)."""
    p = torch.softmax(logits.double(), 1)
    n, c = p.shape[:2]
    stats = sums(p, t, mask)
    tp, fp, fn, _ = stats
    out = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        focal, voxels = 0.0, mask[i].sum()
        pi, ti, mi = p[i].reshape(c, -1), t[i].reshape(c, -1), mask[i].reshape(-1)
        for j in range(pi.shape[1]):
            if mi[j] == 0:
                continue
            focal = focal + (1 - delta) * (1 - pi[0, j]) ** gamma * -math.log(pi[0, j]) * ti[0, j]
            for k in range(1, c):
                focal = focal + delta * -math.log(pi[k, j]) * ti[k, j]
        focal = focal / (voxels * (c if focal_class_mean else 1))
        terms = []
        for k in range(c):
            index = (tp[i, k] + snr) / (tp[i, k] + delta * fn[i, k] + (1 - delta) * fp[i, k] + sdr)
            terms.append(1 - index if k == 0 else (1 - index) ** (1 - gamma))
        out[i] = lam * focal + (1 - lam) * sum(terms) / c
    return out
