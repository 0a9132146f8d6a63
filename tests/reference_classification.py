"""Float64 references written from the papers' formulas, one element at a time.

Deliberately naive (Python loops over samples, probabilities rather than log space): they share
no code with losskit and are only ever evaluated on moderate logits.
"""

from __future__ import annotations

import math

import torch


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _rows(logits: torch.Tensor, target: torch.Tensor):
    """Iterate (logit row over classes, class index) for (N, C, *d) logits and (N, *d) targets."""
    c = logits.shape[1]
    flat = logits.movedim(1, -1).reshape(-1, c)
    yield from zip(flat.tolist(), target.reshape(-1).tolist(), strict=True)


def _shaped(values: list[float], target: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(target.shape)


def ldam(logits, target, counts, *, max_margin, scale):
    """Cao et al. 2019, Eq. 10 with margins C / n_j^{1/4}, C chosen so the largest margin is max_margin."""
    raw = [n ** -0.25 for n in counts]
    margins = [max_margin * m / max(raw) for m in raw]
    out = []
    for row, y in _rows(logits, target):
        z = [scale * (v - (margins[y] if k == y else 0.0)) for k, v in enumerate(row)]
        out.append(-math.log(_softmax(z)[y]))
    return _shaped(out, target)


def poly1(logits, target, *, epsilon, smoothing):
    """Leng et al. 2022, Eq. 3, with smoothed targets t' = (1 - s) onehot + s / C."""
    out = []
    for row, y in _rows(logits, target):
        q = _softmax(row)
        c = len(row)
        t = [(1 - smoothing) * (k == y) + smoothing / c for k in range(c)]
        ce = -sum(tk * math.log(qk) for tk, qk in zip(t, q, strict=True))
        pt = sum(tk * qk for tk, qk in zip(t, q, strict=True))
        out.append(ce + epsilon * (1 - pt))
    return _shaped(out, target)


def softmax_focal(logits, target, *, alpha, gamma):
    """Lin et al. 2017 for C classes: -alpha_y (1 - q_y)^gamma log q_y."""
    out = []
    for row, y in _rows(logits, target):
        q = _softmax(row)[y]
        out.append(-float(alpha[y]) * (1 - q) ** gamma * math.log(q))
    return _shaped(out, target)


def sigmoid_focal(x, t, *, alpha, gamma):
    """Lin et al. 2017, Eq. 5, with p_t = p t + (1 - p)(1 - t) (torchvision's soft-target form).

    Kept as a differentiable torch expression (no log-space tricks) so the test can compare gradients.
    """
    p = torch.sigmoid(x)
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    loss = bce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


def asymmetric(x, t, *, gamma_pos, gamma_neg, clip):
    """Ridnik et al. 2021, Eq. 6: p_m = max(p - m, 0); elementwise, in plain probabilities."""
    out = []
    for xi, ti in zip(x.reshape(-1).tolist(), t.reshape(-1).tolist(), strict=True):
        p = 1 / (1 + math.exp(-xi))
        pm = max(p - clip, 0.0)
        positive = (1 - p) ** gamma_pos * math.log(p)
        negative = pm**gamma_neg * math.log(1 - pm)
        out.append(-(ti * positive + (1 - ti) * negative))
    return torch.tensor(out, dtype=torch.float64).reshape(x.shape)


def cross_entropy(logits, target, *, weight, ignore_index, smoothing):
    """Per-sample CE: (1 - e) w_y (-log q_y) + e / C sum_k w_k (-log q_k); 0 where ignored."""
    out = []
    for row, y in _rows(logits, target):
        if y == ignore_index:
            out.append(0.0)
            continue
        q = _softmax(row)
        w = [1.0] * len(row) if weight is None else [float(v) for v in weight]
        nll = -w[y] * math.log(q[y])
        uniform = sum(-wk * math.log(qk) for wk, qk in zip(w, q, strict=True)) / len(row)
        out.append((1 - smoothing) * nll + smoothing * uniform)
    return _shaped(out, target)
