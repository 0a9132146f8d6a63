r"""Region statistics: the per-(sample, class) sums every region loss is a function of.

:func:`region_stats` computes :math:`TP, P, T` (and :math:`\sum p^2, \sum t^2`) from
probabilities with plain autograd. The fused kernels below compute the same sums from logits,
one cache-sized chunk of voxels at a time and without an autograd graph over the volume: the
activation (softmax or sigmoid) is written once, into the buffer that backward turns into the
gradient in place, and index labels are read in their own integer dtype chunk by chunk. The
region losses in :mod:`losskit.functional.segmentation` choose between them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from losskit._core.dense import DenseTarget, drop_background
from losskit._core.numerics import compute_dtype, upcast

# Elements (N * C * voxels) per chunk on a CPU: a 2 MB float32 block stays in cache and keeps the
# temporaries small (peak = the gradient + about one block). Measured with
# benchmarks/bench_segmentation.py on (2, 8, 96^3) logits (2 cores, idle), Dice time / peak memory:
# 1 MB blocks 63 ms / 55.3 MB, 2 MB 47 ms / 56.5 MB, 4 MB 46 ms / 59.0 MB, 8 MB 43 ms / 64.0 MB.
# Caveat: on an oversubscribed machine (another process holding a core) every parallel op waits
# for its threads, and the ~20 ops per chunk then cost far more than on an idle one; torch with
# one thread does not suffer from that.
_CPU_CHUNK = 1 << 19
# On a GPU the limit is kernel launches, not cache: 64 MB float32 blocks take a (2, 8, 128^3) volume
# in one chunk, and still bound the temporaries (about one block) of larger ones. Not measured here
# (no GPU was at hand); the multi-chunk code is the one the CPU tests run.
_ACCELERATOR_CHUNK = 1 << 24


# --- the statistics kernel ----------------------------------------------------------------------


@dataclass
class RegionStats:
    """Per-(sample, class) sums over space, shape ``(N, C)`` (``(1, C)`` when pooled)."""

    tp: Tensor  # sum p t
    psum: Tensor  # sum p           (valid voxels only)
    tsum: Tensor  # sum t
    count: Tensor  # (N, 1) number of valid voxels
    psq: Tensor | None = None  # sum p^2 (squared=True)
    tsq: Tensor | None = None  # sum t^2 (squared=True)
    ce: Tensor | None = None  # (N,) weighted sum of softmax cross-entropy over valid voxels (fused kernel only)
    ce_den: Tensor | None = None  # (N,) sum of those cross-entropy weights (fused kernel only)

    @property
    def fp(self) -> Tensor:
        return self.psum - self.tp

    @property
    def fn(self) -> Tensor:
        return self.tsum - self.tp

    @property
    def tn(self) -> Tensor:
        return self.count - self.psum - self.tsum + self.tp

    def select(self, include_background: bool) -> RegionStats:
        def drop(x: Tensor | None) -> Tensor | None:
            return None if x is None else drop_background(x, include_background)

        return RegionStats(drop(self.tp), drop(self.psum), drop(self.tsum), self.count, drop(self.psq),
                           drop(self.tsq), self.ce, self.ce_den)

    def pooled(self, sync: bool = False) -> RegionStats:
        """Sums over the batch: ``(1, C)``, or ``(0, C)`` for an empty batch (nothing to pool).

        ``sync=True`` also sums over the ranks of ``torch.distributed`` (one all-reduce, with
        gradient; see :mod:`losskit.distributed`): ``(1, C)`` on every rank, an empty shard included."""
        if self.tp.shape[0] == 0 and not sync:
            return self

        def pool(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.sum(0, keepdim=True)

        fields = [pool(x) for x in (self.tp, self.psum, self.tsum, self.count, self.psq, self.tsq, self.ce,
                                    self.ce_den)]
        if sync:
            fields = _all_reduce_fields(fields)
        return RegionStats(*fields)


def _all_reduce_fields(fields: list[Tensor | None]) -> list[Tensor | None]:
    """Sum tensors over the ranks in one collective (``None`` entries pass through)."""
    from losskit.distributed import all_reduce_with_grad, is_distributed

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


def region_stats(probs: Tensor, target: DenseTarget, *, squared: bool = False, soft_label: bool = False) -> RegionStats:
    r"""Per-(sample, class) :math:`TP, P, T` (and :math:`\sum p^2, \sum t^2`) of probabilities ``(N, C, *spatial)``.

    Index targets are never expanded to one-hot: :math:`TP` scatters the gathered probability of
    each voxel's class into its class, :math:`T` counts labels the same way, and :math:`P` is one
    batched matrix product with the valid mask, so the memory beyond ``probs`` is :math:`O(NC)`
    plus one gathered ``(N, *spatial)`` tensor. Ignored voxels count in no sum.

    ``soft_label=True`` (soft targets) uses :math:`TP = (P + T - \lVert p - t\rVert_1) / 2`, which
    equals :math:`\sum p t` for hard labels and makes a soft target equal to the prediction a
    perfect match.
    """
    n, c = probs.shape[:2]
    p = _flat(probs, 2)
    dtype = p.dtype
    if target.index is not None:
        index = _flat(target.index, 1)
        valid = None if target.valid is None else _flat(target.valid, 1).to(dtype)
        picked = p.gather(1, index.unsqueeze(1)).squeeze(1)  # (N, S): the one gathered tensor
        ones = p.new_ones(()).expand(index.shape) if valid is None else valid
        if valid is not None:
            picked = picked * valid
        tp = p.new_zeros(n, c).scatter_add(1, index, picked)
        tsum = p.new_zeros(n, c).scatter_add_(1, index, ones)
        psum = p.sum(-1) if valid is None else torch.bmm(p, valid.unsqueeze(-1)).squeeze(-1)
        count = ones.sum(-1, keepdim=True)
        psq = tsq = None
        if squared:
            sq = p.square()
            psq = sq.sum(-1) if valid is None else torch.einsum("ncs,ns->nc", sq, valid)
            tsq = tsum
        return RegionStats(tp, psum, tsum, count, psq, tsq)
    t = _flat(target.dense, 2)
    psum, tsum = p.sum(-1), t.sum(-1)
    tp = (psum + tsum - (p - t).abs().sum(-1)) / 2 if soft_label else (p * t).sum(-1)
    count = p.new_full((n, 1), float(p.shape[-1]))
    psq = p.square().sum(-1) if squared else None
    tsq = t.square().sum(-1) if squared else None
    return RegionStats(tp, psum, tsum, count, psq, tsq)


class _SoftmaxIndexStats(torch.autograd.Function):
    r"""Softmax + :func:`region_stats` (+ the cross-entropy sum) for index targets, without a graph.

    Returns ``TP, P`` (N, C), ``T`` (N, C) and the valid voxel count (N, 1) (no gradient), the
    per-sample cross-entropy sum (N,) (zeros unless ``with_ce``) and its weight sum (N,)
    (:math:`\sum_x u_x`, no gradient), one cache-sized chunk of voxels
    at a time: the shifted logits go straight into the output buffer, are exponentiated and
    normalised there, and the statistics are read while the chunk is in cache. The
    cross-entropy comes free from the same pass:
    :math:`-\log p_y = \log \sum_k e^{z_k - m} - (z_y - m)`, weighted per voxel by
    :math:`u_x = w_{y_x}` (``ce_weight``, else 1) times the valid mask.

    With ``keep_probs`` (a gradient will be wanted) the probabilities are kept and backward turns
    them into the gradient in place, chunk by chunk, with :math:`G_x = g^{CE} u_x`:
    :math:`\partial L / \partial z_c = p_c (g^P_c + G - \sum_k p_k g^P_k - p_y g^{TP}_y)
    + [c = y] (p_y g^{TP}_y - G)` (0 at ignored voxels). The buffer that holds the softmax
    *is* the gradient, so the peak memory of a pass is the gradient plus chunk-sized temporaries,
    where autograd through the formula keeps the softmax, a one-hot target and products alive. A
    second backward (``retain_graph=True``) recomputes the softmax; second derivatives
    differentiate the plain expression.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor, ignore_index: int | None, with_ce: bool,  # noqa: ANN205
                ce_weight: Tensor | None, squared: bool, keep_probs: bool):
        probs, like = _begin(ctx, logits, (index, ce_weight), keep_probs, ignore_index=ignore_index,
                             squared=squared)
        n, c, _ = logits.shape
        sums = _IndexSums(n, c, like)
        psum, psq = like.new_zeros(n, c), like.new_zeros(n, c)
        ce = like.new_zeros(n)
        ce_den = like.new_zeros(n)
        for part in _chunks(logits):  # each chunk stays in cache through every step below
            idx, v = _chunk_labels(index, ignore_index, part, like.dtype)  # (N, 1, s) each
            p = _chunk_buffer(logits, part, probs)
            at_y, total = _softmax_chunk(logits[:, :, part], out=p, read=lambda z, i=idx: z.gather(1, i))  # z_y - m
            picked = at_y.exp().div_(total)  # p_y, from the small tensors rather than a second gather
            if with_ce:
                u = _voxel_ce_weight(ce_weight, idx, v)
                nll = total.log_().sub_(at_y)
                ce += (nll if u is None else nll.mul_(u)).sum((1, 2))
                ce_den += idx.shape[-1] if u is None else u.sum((1, 2))
            psum += _masked_sum(p, v)
            if squared:
                psq += _masked_sum(p.square(), v)
            sums.add(idx, picked, v)
        ctx.mark_non_differentiable(sums.tsum, sums.count, ce_den)
        return sums.tp, psum, psq, sums.tsum, sums.count, ce, ce_den

    @staticmethod
    def backward(ctx, g_tp: Tensor | None, g_p: Tensor | None, g_psq: Tensor | None,  # noqa: ANN205
                 _g_t: None, _g_n: None, g_ce: Tensor | None, _g_den: None):
        logits, index, ce_weight = ctx.saved_tensors
        ignore_index, nothing = ctx.ignore_index, (None,) * 6
        if torch.is_grad_enabled():  # create_graph=True
            outs = _softmax_plain(logits, _index_target(index, ignore_index), ctx.squared, ce_weight)
            return _plain_gradient(outs, (g_tp, g_p, g_psq, g_ce), logits), *nothing
        blocks = _GradientBlocks(ctx, logits, lambda part, out: _softmax_chunk(logits[:, :, part], out=out))
        n, c, s = logits.shape
        like = _zeros_like_stats(logits)
        g_p = like.new_zeros(n, c) if g_p is None else g_p
        g_tp = like.new_zeros(n, c) if g_tp is None else g_tp
        row = g_p.unsqueeze(-1)  # (N, C, 1)
        if g_ce is not None and ce_weight is None:  # G is one number per sample: fold it into the row
            row = row + g_ce.view(-1, 1, 1)
        g_p_row = g_p.unsqueeze(1)  # (N, 1, C)
        g_psq = g_psq if ctx.squared else None  # (sum p^2 is only an output with squared=True)
        for part, p in blocks:  # the softmax becomes the gradient in place
            idx, v = _chunk_labels(index, ignore_index, part, p.dtype)  # (N, 1, s) each
            at_y = p.gather(1, idx).mul_(g_tp.gather(1, idx.squeeze(1)).unsqueeze(1))  # p_y g_y, (N, 1, s)
            inner = torch.bmm(g_p_row, p).add_(at_y)  # sum_k p_k g_k, (N, 1, s)
            if g_ce is not None:
                voxel_g = g_ce.view(-1, 1, 1) if ce_weight is None else ce_weight[idx] * g_ce.view(-1, 1, 1)
                at_y.sub_(voxel_g)
                if ce_weight is not None:
                    inner.sub_(voxel_g)
            if g_psq is None:
                p.mul_(row - inner)
            else:  # dL/dp_c also holds 2 g_c p_c
                twice = 2 * g_psq.unsqueeze(-1)
                inner.add_(torch.bmm(twice.transpose(1, 2), p.square()))
                p.mul_(torch.addcmul(row - inner, p, twice))
            p.scatter_add_(1, idx, at_y)
            if v is not None:
                p.mul_(v)
        return blocks.gradient, *nothing


class _SoftmaxDenseStats(torch.autograd.Function):
    r""":class:`_SoftmaxIndexStats` for one-hot / soft targets ``labels`` (N, C, S) without a gradient.

    Returns ``TP, P`` and :math:`\sum p^2` (zeros unless ``squared``), each (N, C), and the
    per-sample cross-entropy sum (N,) (zeros unless ``with_ce``):
    :math:`\sum_c t_c (-\log p_c) = T_x \log \sum_k e^{z_k - m} - \sum_c t_c (z_c - m)` with
    :math:`T_x = \sum_c t_c`. Backward, with :math:`d_c = g^P_c + g^{TP}_c t_c + 2 g^{P^2}_c p_c`:
    :math:`\partial L / \partial z_c = p_c (d_c + g^{CE} T_x - \sum_k p_k d_k) - g^{CE} t_c`,
    in place in the softmax buffer.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, with_ce: bool, squared: bool, keep_probs: bool):  # noqa: ANN205
        probs, like = _begin(ctx, logits, (labels,), keep_probs, squared=squared)
        n, c, _ = logits.shape
        tp, psum, psq = (like.new_zeros(n, c) for _ in range(3))
        ce = like.new_zeros(n)
        for part in _chunks(logits):
            t = labels[:, :, part]
            p = _chunk_buffer(logits, part, probs)
            tz, total = _softmax_chunk(logits[:, :, part], out=p,
                                       read=(lambda z, t=t: (z * t).sum(1, keepdim=True)) if with_ce else None)
            if with_ce:
                ce += (t.sum(1, keepdim=True) * total.log_() - tz).sum((1, 2))
            tp += (p * t).sum(-1)
            psum += p.sum(-1)
            if squared:
                psq += p.square().sum(-1)
        return tp, psum, psq, ce

    @staticmethod
    def backward(ctx, g_tp: Tensor | None, g_p: Tensor | None, g_psq: Tensor | None,  # noqa: ANN205
                 g_ce: Tensor | None):
        logits, labels = ctx.saved_tensors
        nothing = (None,) * 4
        if torch.is_grad_enabled():  # create_graph=True
            outs = _softmax_plain(logits, DenseTarget(None, labels, None), ctx.squared, None)
            return _plain_gradient(outs, (g_tp, g_p, g_psq, g_ce), logits), *nothing
        blocks = _GradientBlocks(ctx, logits, lambda part, out: _softmax_chunk(logits[:, :, part], out=out))
        n, c, _ = logits.shape
        like = _zeros_like_stats(logits)
        g_p = (like.new_zeros(n, c) if g_p is None else g_p).unsqueeze(-1)  # (N, C, 1)
        g_tp = (like.new_zeros(n, c) if g_tp is None else g_tp).unsqueeze(-1)
        g_ce = None if g_ce is None else g_ce.view(-1, 1, 1)
        for part, p in blocks:  # the softmax becomes the gradient in place
            t = labels[:, :, part]
            d = torch.addcmul(g_p, t, g_tp)
            if ctx.squared and g_psq is not None:
                d.addcmul_(p, g_psq.unsqueeze(-1), value=2.0)
            inner = (p * d).sum(1, keepdim=True)
            if g_ce is not None:
                d.addcmul_(t.sum(1, keepdim=True), g_ce)
            p.mul_(d.sub_(inner))
            if g_ce is not None:
                p.addcmul_(t, g_ce, value=-1.0)
        return blocks.gradient, *nothing


class _SigmoidStats(torch.autograd.Function):
    r"""Sigmoid + :func:`region_stats` for index or dense (no-gradient) targets, without a graph.

    Returns ``TP, P`` and :math:`\sum p^2` (zeros unless ``squared``), each (N, C), then ``T``
    (N, C) and the valid voxel count (N, 1) of index targets (zeros for dense ones; no gradient),
    one cache-sized chunk at a time; ``labels`` is the dense target (N, C, S) or ``None`` for
    index targets. As in :class:`_SoftmaxIndexStats`, the sigmoid is kept (with ``keep_probs``) in the
    buffer that backward turns into the gradient in place:
    :math:`\partial L / \partial z_c = p_c (1 - p_c) (g^P_c + g^{TP}_c t_c + 2 g^{P^2}_c p_c)`
    (0 at ignored voxels).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor | None, ignore_index: int | None,  # noqa: ANN205
                labels: Tensor | None, squared: bool, keep_probs: bool):
        probs, like = _begin(ctx, logits, (index, labels), keep_probs, ignore_index=ignore_index,
                             squared=squared)
        n, c, _ = logits.shape
        sums = _IndexSums(n, c, like)  # TP for index targets, T and the voxel count
        psum, psq = like.new_zeros(n, c), like.new_zeros(n, c)
        for part in _chunks(logits):
            p = _sigmoid_chunk(logits[:, :, part], out=_chunk_buffer(logits, part, probs))
            v = None
            if index is None:
                sums.tp += (p * labels[:, :, part]).sum(-1)
            else:
                idx, v = _chunk_labels(index, ignore_index, part, like.dtype)
                sums.add(idx, p.gather(1, idx), v)
            psum += _masked_sum(p, v)
            if squared:
                psq += _masked_sum(p.square(), v)
        ctx.mark_non_differentiable(sums.tsum, sums.count)
        return sums.tp, psum, psq, sums.tsum, sums.count

    @staticmethod
    def backward(ctx, g_tp: Tensor | None, g_p: Tensor | None, g_psq: Tensor | None,  # noqa: ANN205
                 _g_t: None, _g_n: None):
        logits, index, labels = ctx.saved_tensors
        ignore_index, nothing = ctx.ignore_index, (None,) * 5
        if torch.is_grad_enabled():  # create_graph=True
            target = DenseTarget(None, labels, None) if index is None else _index_target(index, ignore_index)
            stats = region_stats(torch.sigmoid(upcast(logits)), target, squared=ctx.squared)
            outs = (stats.tp, stats.psum, stats.psq)
            return _plain_gradient(outs, (g_tp, g_p, g_psq), logits), *nothing
        blocks = _GradientBlocks(ctx, logits, lambda part, out: _sigmoid_chunk(logits[:, :, part], out=out))
        n, c, _ = logits.shape
        like = _zeros_like_stats(logits)
        g_p = (like.new_zeros(n, c) if g_p is None else g_p).unsqueeze(-1)  # (N, C, 1)
        g_tp = like.new_zeros(n, c) if g_tp is None else g_tp
        for part, p in blocks:  # the sigmoid becomes the gradient in place
            v = None
            if index is None:  # dL/dp = g_P + g_TP t
                dp = torch.addcmul(g_p, labels[:, :, part], g_tp.unsqueeze(-1))
            else:
                idx, v = _chunk_labels(index, ignore_index, part, p.dtype)
                dp = g_p.expand(p.shape).contiguous()
                dp.scatter_add_(1, idx, g_tp.gather(1, idx.squeeze(1)).unsqueeze(1))
            if ctx.squared and g_psq is not None:
                dp.addcmul_(p, g_psq.unsqueeze(-1), value=2.0)
            p.addcmul_(p, p, value=-1.0).mul_(dp)  # p (1 - p) dL/dp
            if v is not None:
                p.mul_(v)
        return blocks.gradient, *nothing


def _chunk_labels(index: Tensor, ignore_index: int | None, part: slice,
                  dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """One chunk of class indices ``index`` (N, S) (any integer dtype) as int64 ``(N, 1, s)`` with
    ignored voxels set to class 0, and their valid mask ``(N, 1, s)`` in ``dtype`` (``None``
    without ``ignore_index``): converted here, so no int64 copy of the whole map is ever held."""
    labels = index[:, part].unsqueeze(1)
    if ignore_index is None:
        return labels.long(), None
    keep = labels != ignore_index
    return torch.where(keep, labels, 0).long(), keep.to(dtype)


def _index_target(index: Tensor, ignore_index: int | None) -> DenseTarget:
    """The whole ``index`` map as a :class:`DenseTarget` (for the plain expression only)."""
    labels, valid = _chunk_labels(index, ignore_index, slice(None), torch.bool)
    return DenseTarget(labels.squeeze(1), None, None if valid is None else valid.squeeze(1))


class _IndexSums:
    """TP, T (N, C) and the valid voxel count (N, 1) of index targets, accumulated chunk by chunk.

    Both scatters go through one flat index ``n * C + y``: on a CPU a 1-D ``scatter_add_`` runs
    about 2.5x faster than one along dim 1 of (N, s) (150 vs 60 us for a (2, 32768) chunk), and
    the label counts done here, where the chunk is in cache, cost a third of one pass over the
    whole label map afterwards.
    """

    def __init__(self, n: int, c: int, like: Tensor) -> None:
        self.tp, self.tsum = like.new_zeros(n, c), like.new_zeros(n, c)
        self.count = like.new_zeros(n, 1)
        self.offsets = torch.arange(0, n * c, c, device=like.device).view(n, 1, 1)

    def add(self, idx: Tensor, picked: Tensor, valid: Tensor | None) -> None:
        """One chunk: labels ``idx`` (N, 1, s), ``p_y`` ``picked`` (N, 1, s), ``valid`` (N, 1, s) or None."""
        flat = (idx + self.offsets).view(-1)
        if valid is None:
            self.tsum.view(-1).scatter_add_(0, flat, picked.new_ones(()).expand(flat.shape))
            self.count += idx.shape[-1]
        else:
            picked = picked * valid
            self.tsum.view(-1).scatter_add_(0, flat, valid.reshape(-1))
            self.count += valid.sum(-1)
        self.tp.view(-1).scatter_add_(0, flat, picked.reshape(-1))


def _begin(ctx: object, logits: Tensor, saved: tuple[Tensor | None, ...], keep_probs: bool,
           **options: object) -> tuple[Tensor | None, Tensor]:
    """A fused kernel's forward preamble: save ``logits`` and ``saved``, store ``options`` on ``ctx``,
    and return the kept activation buffer (or ``None``) and a 0-d tensor of the compute dtype."""
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(logits, *saved)
    for name, value in options.items():
        setattr(ctx, name, value)
    ctx.probs = _kept_buffer(logits, keep_probs)
    return ctx.probs, _zeros_like_stats(logits)


def _zeros_like_stats(logits: Tensor) -> Tensor:
    """A 0-d tensor in the compute dtype of ``logits`` (float32 for half and bfloat16), for ``new_zeros``."""
    return logits.new_zeros((), dtype=compute_dtype(logits.dtype))


def _kept_buffer(logits: Tensor, keep: bool) -> Tensor | None:
    """The activation buffer forward keeps for backward to turn into the gradient: only when a
    gradient is wanted and the logits are in their compute dtype (a float32 buffer for half
    logits would outweigh the half gradient; backward recomputes those chunk by chunk)."""
    if not keep or logits.dtype != compute_dtype(logits.dtype):
        return None
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _chunk_buffer(logits: Tensor, part: slice, probs: Tensor | None) -> Tensor:
    """Where a chunk's activation goes: the kept buffer's slice, or a chunk-sized compute-dtype block."""
    if probs is not None:
        return probs[:, :, part]
    return torch.empty(logits[:, :, part].shape, dtype=compute_dtype(logits.dtype), device=logits.device)


class _GradientBlocks:
    """Backward's chunks ``(part, p)``: ``p`` holds the chunk's activation in the compute dtype, and
    the loop turns it into the gradient in place.

    With forward's buffer (handed over once), ``p`` is a view of it and the buffer is the
    gradient. Otherwise (a second backward, or half / bfloat16 logits) ``p`` is recomputed by
    ``fill(part, out)`` with forward's arithmetic, so every backward gives the same gradient, and
    copied, rounded once, into a new gradient in the logits' dtype.
    """

    def __init__(self, ctx: object, logits: Tensor, fill: Callable[[slice, Tensor], object]) -> None:
        self.buffer, ctx.probs = ctx.probs, None
        self.logits, self.fill = logits, fill
        self.gradient = self.buffer if self.buffer is not None else torch.empty_like(
            logits, memory_format=torch.contiguous_format)

    def __iter__(self) -> Iterator[tuple[slice, Tensor]]:
        for part in _chunks(self.logits):
            if self.buffer is not None:
                yield part, self.buffer[:, :, part]
                continue
            p = _chunk_buffer(self.logits, part, None)
            self.fill(part, p)
            yield part, p
            self.gradient[:, :, part] = p


def _plain_gradient(outputs: tuple[Tensor | None, ...], grads: tuple[Tensor | None, ...], logits: Tensor) -> Tensor:
    """The gradient through the plain autograd expression (``create_graph=True``: second derivatives)."""
    with torch.enable_grad():
        pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if o is not None and g is not None]
        (grad,) = torch.autograd.grad([o for o, _ in pairs], logits, [g for _, g in pairs],
                                      create_graph=True, allow_unused=True)
    return torch.zeros_like(logits) if grad is None else grad


def _masked_sum(x: Tensor, valid: Tensor | None) -> Tensor:
    """Sum of ``x`` (N, C, s) over the voxels, those where ``valid`` (N, 1, s) is 0 left out."""
    return x.sum(-1) if valid is None else torch.bmm(x, valid.transpose(1, 2)).squeeze(-1)


def _softmax_chunk(x: Tensor, *, out: Tensor,
                   read: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor | None, Tensor]:
    """Softmax of ``x`` (N, C, s) over dim 1 into ``out`` (the compute dtype); returns ``read(z - m)``
    (what a loss needs from the shifted logits, taken before they are exponentiated in place) and
    ``sum_k exp(z_k - m)``."""
    x = x.to(out.dtype)  # half logits: every step in float32
    shift = x.amax(1, keepdim=True)
    torch.sub(x, shift, out=out)
    shifted = None if read is None else read(out)
    total = out.exp_().sum(1, keepdim=True)
    out.div_(total)
    return shifted, total


def _sigmoid_chunk(x: Tensor, *, out: Tensor) -> Tensor:
    """Sigmoid of ``x`` into ``out``, computed in ``out``'s dtype (float32 for half logits)."""
    return torch.sigmoid(x.to(out.dtype), out=out)


def _voxel_ce_weight(ce_weight: Tensor | None, idx: Tensor, valid: Tensor | None) -> Tensor | None:
    """The cross-entropy weight of each voxel, ``w[y] * valid`` (``None`` when it is 1 everywhere)."""
    if ce_weight is None:
        return valid
    u = ce_weight[idx]
    return u if valid is None else u * valid


def _chunks(logits: Tensor) -> list[slice]:
    """Slices of the voxel dimension of ``logits`` (N, C, S)."""
    n, c, size = logits.shape
    if size == 0:
        return [slice(0, 0)]
    budget = _CPU_CHUNK if logits.device.type == "cpu" else _ACCELERATOR_CHUNK
    step = max(budget // max(n * c, 1), 256)
    return [slice(start, min(start + step, size)) for start in range(0, size, step)]


def _softmax_plain(logits: Tensor, target: DenseTarget, squared: bool,
                   ce_weight: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """``TP, P, sum p^2`` (``None`` unless ``squared``) and the cross-entropy sum of the fused
    softmax kernels, through plain autograd (their second derivatives)."""
    logp = torch.log_softmax(upcast(logits), dim=1)
    stats = region_stats(logp.exp(), target, squared=squared)
    if target.index is None:
        return stats.tp, stats.psum, stats.psq, -(target.dense * logp).sum((1, 2))
    nll = -logp.gather(1, target.index.unsqueeze(1)).squeeze(1)
    valid = None if target.valid is None else target.valid.to(nll.dtype)
    u = _voxel_ce_weight(ce_weight, target.index, valid)
    return stats.tp, stats.psum, stats.psq, (nll if u is None else nll * u).sum(-1)
