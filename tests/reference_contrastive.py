"""Float64 references for the contrastive losses, written from the papers' formulas with loops.

Independent of losskit's vectorised code: every sum is an explicit loop over anchors and
candidates, distances are computed from differences (not from a Gram matrix), and softmax
denominators are plain sums of exponentials (fine in float64 at the test's temperatures).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def info_nce(u: Tensor, v: Tensor, tau: float, *, symmetric: bool = True, same_view: bool = False,
             normalize: bool = True) -> Tensor:
    """Per-pair loss (N,): van den Oord (InfoNCE), CLIP (symmetric), SimCLR NT-Xent (same_view)."""
    if normalize:
        u, v = _unit(u), _unit(v)
    n = u.shape[0]

    def one(a: Tensor, b: Tensor, i: int) -> float:
        numerator = math.exp(float(a[i] @ b[i]) / tau)
        denominator = sum(math.exp(float(a[i] @ b[j]) / tau) for j in range(n))
        if same_view:
            denominator += sum(math.exp(float(a[i] @ a[j]) / tau) for j in range(n) if j != i)
        return -math.log(numerator / denominator)

    out = []
    for i in range(n):
        value = one(u, v, i)
        if symmetric:
            value = (value + one(v, u, i)) / 2
        out.append(value)
    return torch.tensor(out, dtype=torch.float64)


def supcon(z: Tensor, labels: Tensor, tau: float, *, variant: str = "out") -> Tensor:
    """Per-anchor Khosla et al. eq. 2 (out) / eq. 3 (in) on (N, V, D) views; 0 where no positive."""
    views = z.shape[1]
    flat = _unit(z.reshape(-1, z.shape[-1]))
    lab = [int(labels[k // views]) for k in range(flat.shape[0])]
    m = flat.shape[0]
    out = []
    for i in range(m):
        others = [a for a in range(m) if a != i]
        positives = [p for p in others if lab[p] == lab[i]]
        if not positives:
            out.append(0.0)
            continue
        denominator = sum(math.exp(float(flat[i] @ flat[a]) / tau) for a in others)
        probs = [math.exp(float(flat[i] @ flat[p]) / tau) / denominator for p in positives]
        if variant == "out":
            out.append(-sum(math.log(q) for q in probs) / len(positives))
        else:
            out.append(-math.log(sum(probs) / len(positives)))
    return torch.tensor(out, dtype=torch.float64).reshape(z.shape[:2])


def _dist(a: Tensor, b: Tensor, distance: str) -> float:
    if distance == "euclidean":
        return float(((a - b) ** 2).sum().sqrt())
    if distance == "squared_euclidean":
        return float(((a - b) ** 2).sum())
    return 1.0 - float(a @ b / (a.norm() * b.norm()))


def triplet(x: Tensor, labels: Tensor, margin: float, *, mining: str = "batch_hard", distance: str = "euclidean",
            soft: bool = False) -> tuple[Tensor, Tensor]:
    """Hermans et al.: per-anchor batch-hard (N,) or per-triplet batch-all (N, N, N), and the valid mask."""
    n = x.shape[0]
    lab = [int(t) for t in labels]

    def hinge(value: float) -> float:
        return math.log1p(math.exp(value)) if soft else max(margin + value, 0.0)

    if mining == "batch_hard":
        loss, valid = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.bool)
        for a in range(n):
            pos = [_dist(x[a], x[p], distance) for p in range(n) if p != a and lab[p] == lab[a]]
            neg = [_dist(x[a], x[q], distance) for q in range(n) if lab[q] != lab[a]]
            if pos and neg:
                loss[a], valid[a] = hinge(max(pos) - min(neg)), True
        return loss, valid
    loss, valid = torch.zeros(n, n, n, dtype=torch.float64), torch.zeros(n, n, n, dtype=torch.bool)
    for a in range(n):
        for p in range(n):
            if p == a or lab[p] != lab[a]:
                continue
            for q in range(n):
                if lab[q] != lab[a]:
                    loss[a, p, q] = hinge(_dist(x[a], x[p], distance) - _dist(x[a], x[q], distance))
                    valid[a, p, q] = True
    return loss, valid
