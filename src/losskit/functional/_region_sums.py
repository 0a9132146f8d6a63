r"""Region statistics from probabilities, with plain autograd: the per-(sample, class) sums every
region loss is a function of, and the activations with their exact complement.

:func:`region_stats` computes :math:`TP, FP, FN, T` (and :math:`\sum p^2, \sum t^2,
\sum (p - t)^2`) from probabilities; :func:`probabilities_with_complement` gives the
probabilities and :math:`1 - p` from the logits, both to float rounding. The fused kernels of
:mod:`losskit.functional._region_stats` compute the same sums without a graph over the volume
(and fall back to this module for second derivatives); the accuracy rules there hold here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from losskit._core.dense import DenseTarget, drop_background
from losskit._core.numerics import upcast
from losskit.distributed import all_reduce_with_grad, is_distributed

# --- the statistics -----------------------------------------------------------------------------


@dataclass
class RegionStats:
    """Per-(sample, class) sums over the valid voxels, shape ``(N, C)`` (``(1, C)`` when pooled)."""

    tp: Tensor  # sum p t
    fp: Tensor  # sum p (1 - t)
    fn: Tensor  # sum (1 - p) t, with 1 - p from the logits
    tsum: Tensor  # sum t
    count: Tensor  # (N, 1) number of valid voxels
    psq: Tensor | None = None  # sum p^2 (squared=True)
    tsq: Tensor | None = None  # sum t^2 (squared=True)
    sqerr: Tensor | None = None  # sum (p - t)^2 (squared=True)
    ce: Tensor | None = None  # (N,) weighted sum of softmax cross-entropy over valid voxels (fused kernel only)
    ce_den: Tensor | None = None  # (N,) sum of those cross-entropy weights (fused kernel only)

    @property
    def psum(self) -> Tensor:
        """:math:`P = \\sum p = TP + FP`."""
        return self.tp + self.fp

    @property
    def tn(self) -> Tensor:
        """:math:`TN = \\sum (1 - p)(1 - t) = (V - T) - FP`."""
        return self.count - self.tsum - self.fp

    def _map(self, per_class: Callable[[Tensor], Tensor], per_sample: Callable[[Tensor], Tensor]) -> RegionStats:
        def each(x: Tensor | None, f: Callable[[Tensor], Tensor]) -> Tensor | None:
            return None if x is None else f(x)

        return RegionStats(*(each(x, per_class) for x in (self.tp, self.fp, self.fn, self.tsum)),
                           each(self.count, per_sample),
                           *(each(x, per_class) for x in (self.psq, self.tsq, self.sqerr)),
                           each(self.ce, per_sample), each(self.ce_den, per_sample))

    def select(self, include_background: bool) -> RegionStats:
        return self._map(lambda x: drop_background(x, include_background), lambda x: x)

    def pooled(self, sync: bool = False) -> RegionStats:
        """Sums over the batch: ``(1, C)``, or ``(0, C)`` for an empty batch (nothing to pool).

        ``sync=True`` also sums over the ranks of ``torch.distributed`` (one all-reduce, with
        gradient; see :mod:`losskit.distributed`): ``(1, C)`` on every rank, an empty shard included."""
        if self.tp.shape[0] == 0 and not sync:
            return self
        stats = self._map(lambda x: x.sum(0, keepdim=True), lambda x: x.sum(0, keepdim=True))
        if not sync:
            return stats
        fields = [stats.tp, stats.fp, stats.fn, stats.tsum, stats.count, stats.psq, stats.tsq, stats.sqerr, stats.ce,
                  stats.ce_den]
        return RegionStats(*_all_reduce_fields(fields))


def _all_reduce_fields(fields: list[Tensor | None]) -> list[Tensor | None]:
    """Sum tensors over the ranks in one collective (``None`` entries pass through)."""
    present = [x for x in fields if x is not None]
    if not is_distributed() or not present:
        return fields
    dtype = torch.promote_types(present[0].dtype, torch.float32)
    flat = all_reduce_with_grad(torch.cat([x.reshape(-1).to(dtype) for x in present]))
    out, start = [], 0
    for x in fields:
        if x is None:
            out.append(None)
            continue
        out.append(flat[start:start + x.numel()].reshape(x.shape).to(x.dtype))
        start += x.numel()
    return out


def _flat(x: Tensor, keep: int) -> Tensor:
    return x.flatten(keep)


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    """The dtype sums over voxels accumulate in: float64 (MPS has none: float32 there)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _class_sums(index: Tensor, values: Tensor, c: int) -> Tensor:
    """``out[n, k] = sum of values[n, x] over the voxels x with index[n, x] = k``, accumulated in float64.

    A scatter adds each class's voxels into one running sum; in float32 a sum of many similar
    values rounds the same way at every step and drifts (1.6% for 65k values of 0.88)."""
    n, acc = values.shape[0], _accumulator_dtype(values.device)
    flat = (index + torch.arange(0, n * c, c, device=index.device).view(n, 1)).reshape(-1)
    # index_add over the flat (N * C) bins, not scatter_add along dim 1: torch.compile (2.13, CPU)
    # turns some float64 scatter_add of a computed source into zeros.
    out = torch.zeros(n * c, dtype=acc, device=values.device)
    return out.index_add(0, flat, values.reshape(-1).to(acc)).view(n, c).to(values.dtype)


def region_stats(probs: Tensor, target: DenseTarget, *, squared: bool = False, soft_label: bool = False,
                 complement: Tensor | None = None) -> RegionStats:
    r"""Per-(sample, class) :math:`TP, FP, FN, T` (and squares) of probabilities ``(N, C, *spatial)``.

    ``complement`` is :math:`1 - p` computed where it keeps its digits (from the logits: see
    :func:`probabilities_with_complement`); without it, ``1 - probs``. Index targets are never
    expanded to one-hot: :math:`TP` and :math:`FN` scatter each voxel's :math:`p_y` and
    :math:`1 - p_y` into its class (in float64), :math:`FP` sums the probabilities with each
    voxel's own class set to 0. Ignored voxels count in no sum (their probabilities must be
    finite: the callers replace their logits).

    ``soft_label=True`` (soft targets) uses :math:`FP = \sum (p - t)^+`, :math:`FN = \sum (t - p)^+`
    and :math:`TP = (P + T - \lVert p - t\rVert_1) / 2`, which equal the plain sums for hard
    labels and make a soft target equal to the prediction a perfect match.
    """
    n, c = probs.shape[:2]
    p = _flat(probs, 2)
    q = 1 - p if complement is None else _flat(complement, 2)
    if target.index is not None:
        index = _flat(target.index, 1)
        valid = None if target.valid is None else _flat(target.valid, 1).to(p.dtype)
        picked = p.gather(1, index.unsqueeze(1)).squeeze(1)  # (N, S): p_y
        missed = q.gather(1, index.unsqueeze(1)).squeeze(1)  # (N, S): 1 - p_y
        off = p.scatter(1, index.unsqueeze(1), 0.0)  # the probabilities of the other classes
        ones = p.new_ones(()).expand(index.shape) if valid is None else valid
        if valid is not None:
            picked, missed, off = picked * valid, missed * valid, off * valid.unsqueeze(1)
        stats = RegionStats(tp=_class_sums(index, picked, c), fp=off.sum(-1), fn=_class_sums(index, missed, c),
                            tsum=_class_sums(index, ones, c), count=ones.sum(-1, keepdim=True))
        if squared:
            off_sq = off.square().sum(-1)
            stats.psq = off_sq + _class_sums(index, picked.square(), c)
            stats.tsq = stats.tsum
            stats.sqerr = off_sq + _class_sums(index, missed.square(), c)
        return stats
    t = _flat(target.dense, 2)
    error = p * (1 - t) - t * q if soft_label or squared else None  # p - t, exact where p is near t = 1
    tsum = t.sum(-1)
    if soft_label:
        fp, fn = error.clamp_min(0).sum(-1), (-error).clamp_min(0).sum(-1)
        tp = (p.sum(-1) + tsum - fp - fn) / 2
    else:
        tp, fp, fn = (p * t).sum(-1), (p * (1 - t)).sum(-1), (q * t).sum(-1)
    stats = RegionStats(tp=tp, fp=fp, fn=fn, tsum=tsum, count=p.new_full((n, 1), float(p.shape[-1])))
    if squared:
        stats.psq, stats.tsq, stats.sqerr = p.square().sum(-1), t.square().sum(-1), error.square().sum(-1)
    return stats


# --- activations with their complement, for the plain path ----------------------------------------


def probabilities_with_complement(input: Tensor, activation: str | None) -> tuple[Tensor, Tensor]:
    """Probabilities ``p`` and ``1 - p`` of ``input`` (N, C, ...), both accurate to float rounding.

    ``"softmax"``: ``1 - p`` is ``1 - p`` except for a class with :math:`p > 1/2`, where it is the
    sum of the other classes' probabilities; the softmax's gradient is exact there too
    (:class:`_Softmax`). ``"sigmoid"``: :math:`\\sigma(-z)`, and :math:`p (1 - p)` in the gradient
    from both. ``None``: ``input`` holds the probabilities, ``1 - input``.
    """
    x = upcast(input)
    if activation == "softmax":
        p = _Softmax.apply(x)
        dominant = p.detach() > 0.5
        others = torch.where(dominant, 0.0, p).sum(1, keepdim=True)
        return p, torch.where(dominant, others, 1 - p)
    if activation == "sigmoid":
        return _Sigmoid.apply(x), _Sigmoid.apply(-x)
    return x, 1 - x


def _sum_to_zero(grad: Tensor, dominant: Tensor, *, inplace: bool = True) -> Tensor:
    """A softmax input gradient ``grad`` (N, C, ...) with the entries where ``dominant`` is 1 (a
    class with :math:`p > 1/2`, at most one per voxel) replaced by minus the sum of the others:
    ``grad - dominant * grad.sum(1)``. The entries sum to 0 exactly, and where :math:`p` is near
    1 the others are small products while the formula's own entry is a difference of two nearly
    equal numbers. In place (``dominant`` is a float mask) unless ``inplace=False``
    (differentiable, for second derivatives)."""
    if not inplace:
        return grad - dominant * grad.sum(1, keepdim=True)
    return grad.addcmul_(dominant, grad.sum(1, keepdim=True), value=-1.0)


class _Softmax(torch.autograd.Function):
    """``torch.softmax(x, 1)`` whose gradient keeps its digits at the most probable class (:func:`_sum_to_zero`)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN205
        p = torch.softmax(x, 1)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # noqa: ANN205
        (p,) = ctx.saved_tensors
        grad = p * (g - (p * g).sum(1, keepdim=True))
        dominant = (p.detach() > 0.5).to(p.dtype)
        return _sum_to_zero(grad, dominant, inplace=not torch.is_grad_enabled())


class _Sigmoid(torch.autograd.Function):
    """``torch.sigmoid(x)`` whose gradient is :math:`\\sigma(x)\\sigma(-x)`, not :math:`p - p^2`."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN205
        ctx.save_for_backward(x)
        return torch.sigmoid(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # noqa: ANN205
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x) * torch.sigmoid(-x)
