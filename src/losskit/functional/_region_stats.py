r"""Region statistics: the per-(sample, class) sums every region loss is a function of.

:func:`region_stats` (in :mod:`losskit.functional._region_sums`, re-exported here) computes
:math:`TP, FP, FN, T` (and :math:`\sum p^2, \sum t^2, \sum (p - t)^2`) from probabilities with
plain autograd. The fused kernels here compute the same sums from logits, one cache-sized chunk
of voxels at a time and without an autograd graph over the volume: the activation (softmax or
sigmoid) is written once, into the buffer that backward turns into the gradient in place, and
index labels are read in their own integer dtype chunk by chunk. The region losses in
:mod:`losskit.functional.segmentation` choose between them.

**Accuracy.** Near convergence a region loss is a small difference of large sums
(:math:`1 - 2TP/(P + T)`), so every path computes the terms that decide it directly rather than
by subtraction:

* :math:`FP = \sum p (1 - t)` and :math:`FN = \sum (1 - p) t` are summed as such, never as
  :math:`P - TP` and :math:`T - TP`; the losses are then written as ratios of these
  (Dice: :math:`(FP + FN) / (P + T)`).
* :math:`1 - p` comes from the logits: for a softmax, the sum of the other classes'
  probabilities (:math:`1 - p_y = \sum_{k \ne y} p_k`); for a sigmoid, :math:`\sigma(-z)`. A
  float32 :math:`p` near 1 keeps only about 7 digits of :math:`1 - p`.
* Sums over the voxels accumulate exactly enough: a chunk's reduction over its voxels is a
  pairwise (cascade) sum, and chunk partials and the per-class scatters of index labels (a
  running sum per class) are accumulated in float64. A float32 running sum of 65k values near
  0.88 rounds each addition the same way and drifts by about 1%.
* A softmax gradient sums to 0 over the classes. The entry of a class whose probability is near
  1 is the difference of two nearly equal numbers; it is taken as minus the sum of the others:
  the label's entry for index targets (:class:`_SoftmaxIndexGradient`; exact wherever the
  prediction is right, which is where a small loss is decided), the entry of a class with
  :math:`p > 1/2` otherwise (:func:`_sum_to_zero`). A sigmoid's slope is
  :math:`\sigma(z) \sigma(-z)`, never :math:`p - p^2`.
* A ratio loss :math:`1 - n/F` is computed as :math:`c/F` with :math:`c = F - n` summed as such,
  and differentiated as :math:`-c/F^2` and :math:`n/F^2`
  (:class:`losskit.functional.segmentation._OneMinusRatio`), exact near 0 and near 1.

Ignored voxels (``ignore_index``) may hold anything, NaN and infinity included: their logits are
replaced by 0 before the activation or their activation by 0 after it, they count in no sum,
and their gradient is 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from losskit._core.dense import DenseTarget
from losskit._core.numerics import compute_dtype, upcast
from losskit.functional._region_sums import RegionStats as RegionStats
from losskit.functional._region_sums import (
    _accumulator_dtype,
    _sum_to_zero,
    probabilities_with_complement,
    region_stats,
)
from losskit.functional._region_sums import _all_reduce_fields as _all_reduce_fields
from losskit.functional._region_sums import _flat as _flat

# Elements (N * C * voxels) per chunk on a CPU: a 2 MB float32 block stays in cache and keeps the
# temporaries small (peak = the gradient + less than one block). Dice on (2, 8, 96^3) index labels,
# temporaries beyond the gradient by the tensor tracker / resident-set growth of a step after a
# warm-up call (benchmarks.harness.rss_profile): 0.5 MB blocks 0.44 / 0.1 MB, 1 MB 0.88 / 0.3-1.1 MB,
# 2 MB 1.75 / 1.3-2.5 MB; one thread: 104, 100 and 105 ms a step (CPU time, machine shared with other
# work). Smaller blocks mean more ops: on 2 threads of the shared machine 0.5 MB blocks took 362 ms
# against 251 ms for 2 MB. An earlier kernel, idle 2 cores: 1 MB 63 ms, 2 MB 47 ms, 8 MB 43 ms.
# Caveat: on an oversubscribed machine (another process holding a core) every parallel op waits
# for its threads, and the ~30 ops per chunk then cost far more than on an idle one; torch with
# one thread does not suffer from that.
_CPU_CHUNK = 1 << 19
# Dense labels (one-hot or soft, the binary sigmoid case among them) take 0.5 MB blocks: their
# kernels make about ten full passes over each block and few small ops, and a block with its
# temporaries then stays in a 2 MB L2 cache. One thread, interleaved with MONAI on a shared machine
# (load average 14 to 18): Dice on (2, 8, 96^3) one-hot targets took 264 / 266 / 306 ms a step with
# 0.5 / 1 / 2 MB blocks, binary Dice on (2, 1, 128^3) 38 / 40 / 45 ms; index labels, whose kernel
# has more small ops per block, took 178 / 167 / 157 ms.
_CPU_DENSE_CHUNK = 1 << 17
# On a GPU the limit is kernel launches, not cache: 64 MB float32 blocks take a (2, 8, 128^3) volume
# in one chunk, and still bound the temporaries (about one block) of larger ones. Not measured here
# (no GPU was at hand); the multi-chunk code is the one the CPU tests run.
_ACCELERATOR_CHUNK = 1 << 24


# --- the fused kernels --------------------------------------------------------------------------


@dataclass
class _Coefficients:
    r"""The gradient of the statistics as
    :math:`\partial L / \partial p_c = G^P_c + t_c G^T_c + 2 g^{P^2}_c p_c + 2 g^E_c (p_c - t_c)`.

    With :math:`FP = \sum p (1 - t)` and :math:`FN = \sum (1 - p) t`: :math:`G^P = g^{FP}` and
    :math:`G^T = g^{TP} - g^{FP} - g^{FN}`; ``psq`` and ``sqerr`` are :math:`2 g^{P^2}` and
    :math:`2 g^E = 2 g^{(p-t)^2}` (N, C, 1), ``None`` when not wanted. The squared error's term
    stays a multiple of :math:`p - t`, which is small and known to full precision near a perfect
    prediction (:math:`-(1 - p_y)` at the label); split into :math:`p` and :math:`t` parts it
    would be the difference of two large ones.
    """

    g_p: Tensor  # (N, C)
    g_t: Tensor  # (N, C)
    psq: Tensor | None
    sqerr: Tensor | None

    @staticmethod
    def of(grads: tuple[Tensor | None, ...], squared: bool, zeros: Tensor) -> _Coefficients:
        """From the incoming gradients of ``TP, FP, FN, sum p^2, sum (p - t)^2``; ``zeros`` (N, C)."""
        g_tp, g_fp, g_fn, g_psq, g_sqerr = grads

        def value(g: Tensor | None) -> Tensor:
            return zeros if g is None else g

        def twice(g: Tensor | None) -> Tensor | None:
            return None if g is None or not squared else 2 * g.unsqueeze(-1)

        g_p = value(g_fp)
        return _Coefficients(g_p, value(g_tp) - g_p - value(g_fn), twice(g_psq), twice(g_sqerr))

    @property
    def squares(self) -> Tensor | None:
        """The coefficient of :math:`p_c` off the label, :math:`2 g^{P^2} + 2 g^E` (N, C, 1)."""
        if self.psq is None:
            return self.sqerr
        return self.psq if self.sqerr is None else self.psq + self.sqerr

    def dense(self, p: Tensor | None, t: Tensor, error: Callable[[], Tensor], *, out: Tensor) -> Tensor:
        r""":math:`\partial L / \partial p` for dense labels ``t`` (N, C, s) into ``out``; ``p`` (asked
        only with ``psq``) and ``error()``, :math:`p - t` (asked only with ``sqerr``)."""
        # a product and an add: on a CPU ``addcmul`` with a broadcast (N, C, 1) first operand runs
        # element by element, several times slower
        d = torch.mul(t, self.g_t.unsqueeze(-1), out=out).add_(self.g_p.unsqueeze(-1))
        if self.psq is not None:
            d.addcmul_(p, self.psq)
        if self.sqerr is not None:
            d.addcmul_(error(), self.sqerr)
        return d


class _Sums:
    """The kernels' sums over voxels, accumulated chunk by chunk in float64 (:func:`_accumulator_dtype`).

    ``tp, fp, fn`` (N, C) and, with ``squared``, ``psq`` and ``sqerr``; with ``index``, also ``T``
    (N, C) and the valid voxel count (N, 1). Index labels go through one flat index ``n * C + y``:
    on a CPU a 1-D ``scatter_add_`` runs about 2.5x faster than one along dim 1 of (N, s) (150 vs
    60 us for a (2, 32768) chunk), and the label counts done here, where the chunk is in cache,
    cost a third of one pass over the whole label map afterwards.
    """

    def __init__(self, n: int, c: int, like: Tensor, squared: bool) -> None:
        self.acc = _accumulator_dtype(like.device)
        self.dtype, self.squared = like.dtype, squared
        self.tp, self.fp, self.fn, self.tsum, self.psq, self.sqerr = (
            torch.zeros(n, c, dtype=self.acc, device=like.device) for _ in range(6))
        self.count = torch.zeros(n, 1, dtype=self.acc, device=like.device)
        self.voxels = 0  # chunks without ignored voxels, counted here rather than in ``count``
        self.offsets = torch.arange(0, n * c, c, device=like.device).view(n, 1, 1)
        self.one = torch.ones((), dtype=self.acc, device=like.device)
        self.zero = torch.zeros((), dtype=like.dtype, device=like.device)
        self.scratch = _Scratch()

    def zeros(self, *shape: int) -> Tensor:
        return torch.zeros(*shape, dtype=self.acc, device=self.tp.device)

    def add_dense(self, p: Tensor, t: Tensor, q: Tensor, *, slope: bool = False) -> None:
        """One chunk of dense labels ``t`` (N, C, s): activation ``p``, its complement ``q`` (a
        temporary block, overwritten); with ``slope``, ``p`` becomes :math:`p (1 - p)`."""
        w = self.scratch.like(p)
        self.tsum += t.sum(-1)  # while the chunk is in cache: no second pass over the labels
        self.tp += torch.mul(p, t, out=w).sum(-1)
        self.fp += torch.lerp(p, self.zero, t, out=w).sum(-1)  # p (1 - t), with 1 - t exact where t > 1/2
        if self.squared:
            self.psq += torch.mul(p, p, out=w).sum(-1)
            # p - t = p (1 - t) - t (1 - p), exact near t = 1
            self.sqerr += torch.lerp(p, self.zero, t, out=w).addcmul_(t, q, value=-1.0).square_().sum(-1)
        if slope:
            p.mul_(q)
        self.fn += q.mul_(t).sum(-1)

    def add_index(self, off: Tensor, idx: Tensor, picked: Tensor, missed: Tensor, valid: Tensor | None) -> None:
        """One chunk of index labels ``idx`` (N, 1, s): ``off`` (N, C, s) is the activation with 0
        at each voxel's label (:func:`_zero_label`) and at ignored voxels; ``picked`` and
        ``missed`` (N, 1, s) are :math:`p_y` and :math:`1 - p_y` (0 at ignored voxels); ``valid``
        (N, 1, s) or ``None``."""
        self.fp += off.sum(-1)
        if self.squared:
            off_sq = torch.mul(off, off, out=self.scratch.like(off)).sum(-1)  # (p - t)^2 = p^2 off the label
            self.psq += off_sq
            self.sqerr += off_sq
        flat = (idx + self.offsets).view(-1)
        self.tp.view(-1).scatter_add_(0, flat, picked.view(-1).to(self.acc))
        self.fn.view(-1).scatter_add_(0, flat, missed.view(-1).to(self.acc))
        if self.squared:
            self.psq.view(-1).scatter_add_(0, flat, picked.square().view(-1).to(self.acc))
            self.sqerr.view(-1).scatter_add_(0, flat, missed.square().view(-1).to(self.acc))
        if valid is None:
            self.tsum.view(-1).scatter_add_(0, flat, self.one.expand(flat.shape))
            self.voxels += idx.shape[-1]
        else:
            self.tsum.view(-1).scatter_add_(0, flat, valid.view(-1).to(self.acc))
            self.count += valid.sum(-1)

    def outputs(self) -> tuple[Tensor, ...]:
        """``tp, fp, fn, psq, sqerr`` (zeros unless ``squared``), ``T``, the count, in the compute dtype."""
        return tuple(x.to(self.dtype) for x in (self.tp, self.fp, self.fn, self.psq, self.sqerr, self.tsum,
                                                 self.count + self.voxels))


class _SoftmaxIndexStats(torch.autograd.Function):
    r"""Softmax + :func:`region_stats` (+ the cross-entropy sum) for index targets, without a graph.

    Returns ``TP, FP, FN`` and :math:`\sum p^2, \sum (p - t)^2` (zeros unless ``squared``), each
    (N, C); ``T`` (N, C) and the valid voxel count (N, 1) (no gradient); the per-sample
    cross-entropy sum (N,) (zeros unless ``with_ce``) and its weight sum (N,)
    (:math:`\sum_x u_x`, no gradient), one cache-sized chunk of voxels at a time: the shifted
    logits go straight into the output buffer, are exponentiated and normalised there, and the
    statistics are read while the chunk is in cache. The buffer keeps 0 at each voxel's label
    (:func:`_softmax_label_chunk`): it holds :math:`p (1 - t)`, whose sums are :math:`FP` and
    :math:`1 - p_y`. The cross-entropy comes free from the same pass:
    :math:`-\log p_y = \log \sum_k e^{z_k - m} - (z_y - m)`, weighted per voxel by
    :math:`u_x = w_{y_x}` (``ce_weight``, else 1) times the valid mask.

    With ``keep_probs`` (a gradient will be wanted) the probabilities are kept and backward turns
    them into the gradient in place, chunk by chunk, with :math:`G_x = g^{CE} u_x` and the
    derivatives :math:`d_c = \partial L / \partial p_c` of :class:`_Coefficients`:
    :math:`\partial L / \partial z_c = p_c (d_c + G - \sum_k p_k d_k) - [c = y] G`
    (0 at ignored voxels), the label's entry as minus the sum of the others (see
    :func:`_sum_to_zero`; a confidently wrong voxel keeps the formula's rounding). The buffer
    that holds the softmax *is* the gradient, so the peak memory of a pass is the gradient plus
    chunk-sized temporaries, where autograd through the formula keeps the softmax, a one-hot
    target and products alive. A second backward (``retain_graph=True``) recomputes the softmax;
    second derivatives differentiate the plain expression.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor, ignore_index: int | None, with_ce: bool,  # noqa: ANN205
                ce_weight: Tensor | None, squared: bool, keep_probs: bool):
        probs, like = _begin(ctx, logits, (index, ce_weight), keep_probs, ignore_index=ignore_index,
                             squared=squared)
        n, c, _ = logits.shape
        sums = _Sums(n, c, like, squared)
        ce, ce_den = sums.zeros(n), sums.zeros(n)
        for part in _chunks(logits):  # each chunk stays in cache through every step (a function: its
            _softmax_index_chunk(logits, index, part, probs, sums, ignore_index,  # temporaries go with it)
                                 ce_weight, (ce, ce_den) if with_ce else None)
        outputs = sums.outputs()
        ctx.mark_non_differentiable(*outputs[5:], ce_den)
        return *outputs, ce.to(like.dtype), ce_den.to(like.dtype)

    @staticmethod
    def backward(ctx, g_tp: Tensor | None, g_fp: Tensor | None, g_fn: Tensor | None,  # noqa: ANN205
                 g_psq: Tensor | None, g_sqerr: Tensor | None, _g_t: None, _g_n: None, g_ce: Tensor | None,
                 _g_den: None):
        logits, index, ce_weight = ctx.saved_tensors
        ignore_index, nothing = ctx.ignore_index, (None,) * 6
        if torch.is_grad_enabled():  # create_graph=True
            outs = _softmax_plain(logits, _index_target(index, ignore_index), ctx.squared, ce_weight)
            return _plain_gradient(outs, (g_tp, g_fp, g_fn, g_psq, g_sqerr, g_ce), logits), *nothing
        n, c, _ = logits.shape
        zeros = _zeros_like_stats(logits).new_zeros(n, c)
        step = _SoftmaxIndexGradient(_Coefficients.of((g_tp, g_fp, g_fn, g_psq, g_sqerr), ctx.squared, zeros),
                                     g_ce, ce_weight)
        labels = lambda part: _chunk_labels(index, ignore_index, part, zeros.dtype)  # noqa: E731
        blocks = _GradientBlocks(ctx, logits, labels, lambda part, out, chunk_labels: _softmax_label_chunk(
            logits[:, :, part], chunk_labels[0], out=out, drop=chunk_labels[1]))
        for (idx, _, _), p in blocks:  # the softmax (0 at the label) becomes the gradient in place
            step(p, idx)
        return blocks.gradient, *nothing


def _softmax_index_chunk(logits: Tensor, index: Tensor, part: slice, probs: Tensor | None, sums: _Sums,
                         ignore_index: int | None, ce_weight: Tensor | None,
                         ce: tuple[Tensor, Tensor] | None) -> None:
    """:class:`_SoftmaxIndexStats` forward on the voxels ``part``: the softmax (0 at the label) into
    its buffer, the sums into ``sums``, and with ``ce`` the cross-entropy and its weights into it."""
    idx, drop, v = _chunk_labels(index, ignore_index, part, sums.dtype)  # (N, 1, s) each
    p = _chunk_buffer(logits, part, probs)
    picked, missed, at_y, total = _softmax_label_chunk(logits[:, :, part], idx, out=p, drop=drop,
                                                       shifted=ce is not None)
    if ce is not None:
        u = _voxel_ce_weight(ce_weight, idx, v)
        # -log p_y: log1p((1 - p_y) / p_y) where p_y >= 1/2 (the log of a total near 1 keeps few digits)
        nll = torch.where(picked >= 0.5, torch.log1p(missed / picked), total.log_().sub_(at_y))
        ce[0].add_((nll if u is None else nll.mul_(u)).sum((1, 2)))
        ce[1].add_(idx.shape[-1] if u is None else u.sum((1, 2)))
    sums.add_index(p, idx, picked, missed, v)


class _SoftmaxIndexGradient:
    r"""One chunk of :class:`_SoftmaxIndexStats` backward: the softmax ``p`` (N, C, s), 0 at each
    voxel's label ``idx`` (N, 1, s), becomes the gradient in place.

    With :math:`d_c = \partial L / \partial p_c` (:class:`_Coefficients`; off the label
    :math:`G^P_c + (2 g^{P^2}_c + 2 g^E_c) p_c`), :math:`S = \sum_k p_k d_k` and the
    cross-entropy's :math:`G`, entry :math:`c \ne y` is :math:`p_c (d_c + G - S)`. The label's entry
    is minus the sum of the others, :math:`(1 - p_y)(S - G) - \sum_{k \ne y} p_k d_k`, from sums over
    the classes: exact where :math:`p_y` is near 1, where the formula's own entry is a difference
    of two nearly equal numbers. :math:`p_y = 1 - \sum_{k \ne y} p_k` enters :math:`S` only, whose
    rounding it shares. One matrix product gives :math:`\sum_{k \ne y} p_k G^P_k` and
    :math:`\sum_{k \ne y} p_k` together.
    """

    def __init__(self, coefficients: _Coefficients, g_ce: Tensor | None, ce_weight: Tensor | None) -> None:
        g_p = coefficients.g_p
        self.g_p, self.g_t, self.ce_weight = g_p, coefficients.g_t, ce_weight
        self.psq, self.sqerr = coefficients.psq, coefficients.sqerr
        self.rows = torch.stack([g_p, torch.ones_like(g_p)], 1)  # (N, 2, C)
        self.twice = coefficients.squares  # (N, C, 1)
        self.row = g_p.unsqueeze(-1)  # (N, C, 1)
        self.folded = None  # G where it is one number per sample (no class weights): in the row
        self.voxel_ce = None if g_ce is None else g_ce.view(-1, 1, 1)
        if g_ce is not None and ce_weight is None:
            self.folded = self.voxel_ce
            self.row = self.row + self.folded
        self.scratch = _Scratch()

    def __call__(self, p: Tensor, idx: Tensor) -> None:
        y = idx.squeeze(1)
        off, missed = torch.bmm(self.rows, p).split(1, dim=1)  # sum over k != y of p_k G^P_k, of p_k
        d_y = self.g_p.gather(1, y).add_(self.g_t.gather(1, y)).unsqueeze(1)  # G^P_y + G^T_y
        if self.twice is not None:
            off.add_(torch.bmm(self.twice.transpose(1, 2), torch.mul(p, p, out=self.scratch.like(p))))
            if self.psq is not None:  # + 2 g^{P^2}_y p_y
                psq_y = self.psq.squeeze(-1).gather(1, y).unsqueeze(1)
                d_y.add_(psq_y).addcmul_(missed, psq_y, value=-1.0)
            if self.sqerr is not None:  # + 2 g^E_y (p_y - 1) = -2 g^E_y (1 - p_y)
                d_y.addcmul_(missed, self.sqerr.squeeze(-1).gather(1, y).unsqueeze(1), value=-1.0)
        inner = torch.add(off, d_y).addcmul_(missed, d_y, value=-1.0)  # S = off + p_y d_y
        if self.voxel_ce is not None and self.ce_weight is not None:
            inner.sub_(self.ce_weight[idx] * self.voxel_ce)
        at_label = off.neg_().addcmul_(missed, inner)
        if self.folded is not None:
            at_label.addcmul_(missed, self.folded, value=-1.0)
        # p_c (d_c + G - S), one class at a time: an (N, 1, s) temporary instead of an (N, C, s) one
        for c in range(p.shape[1]):
            p_c = p[:, c:c + 1]
            factor = torch.sub(self.row[:, c:c + 1], inner)
            if self.twice is not None:
                factor.addcmul_(p_c, self.twice[:, c:c + 1])
            p_c.mul_(factor)
        p.scatter_add_(1, idx, at_label)  # ignored voxels: p = 0, every entry stays 0


class _SoftmaxDenseStats(torch.autograd.Function):
    r""":class:`_SoftmaxIndexStats` for one-hot / soft targets ``labels`` (N, C, S) without a gradient.

    Returns ``TP, FP, FN``, :math:`\sum p^2` and :math:`\sum (p - t)^2` (zeros unless ``squared``),
    ``T`` (no gradient), each (N, C), and the per-sample cross-entropy sum (N,) (zeros unless ``with_ce``):
    :math:`\sum_c t_c (-\log p_c) = T_x \log \sum_k e^{z_k - m} - \sum_c t_c (z_c - m)` with
    :math:`T_x = \sum_c t_c`. :math:`1 - p_c` is taken as the sum of the other classes'
    probabilities at each voxel's most probable class (:func:`_softmax_complement`). Backward,
    with :math:`d_c = \partial L / \partial p_c` (:class:`_Coefficients`):
    :math:`\partial L / \partial z_c = p_c (d_c + g^{CE} T_x - \sum_k p_k d_k) - g^{CE} t_c`,
    in place in the softmax buffer, the most probable class's entry by :func:`_sum_to_zero`.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, with_ce: bool, squared: bool, keep_probs: bool):  # noqa: ANN205
        probs, like = _begin(ctx, logits, (labels,), keep_probs, squared=squared)
        n, c, _ = logits.shape
        sums = _Sums(n, c, like, squared)
        ce, complement = sums.zeros(n), _Scratch()
        for part in _chunks(logits, dense=True):
            t = labels[:, :, part]
            p = _chunk_buffer(logits, part, probs)
            read = (lambda z, t=t: torch.mul(z, t, out=complement.like(z)).sum(1, keepdim=True)) if with_ce else None
            tz, total = _softmax_chunk(logits[:, :, part], out=p, read=read)
            dominant = torch.gt(p, 0.5, out=sums.scratch.like(p))  # 0/1 floats, spent by the cross-entropy
            q, others = _softmax_complement(p, dominant, out=complement.like(p))
            if with_ce:
                ce += _dense_cross_entropy(t, tz, total, dominant, others, out=dominant).sum((1, 2))
            sums.add_dense(p, t, q)
        tp, fp, fn, psq, sqerr, tsum, _ = sums.outputs()
        ctx.mark_non_differentiable(tsum)
        return tp, fp, fn, psq, sqerr, tsum, ce.to(like.dtype)

    @staticmethod
    def backward(ctx, g_tp: Tensor | None, g_fp: Tensor | None, g_fn: Tensor | None,  # noqa: ANN205
                 g_psq: Tensor | None, g_sqerr: Tensor | None, _g_t: None, g_ce: Tensor | None):
        logits, labels = ctx.saved_tensors
        nothing = (None,) * 4
        if torch.is_grad_enabled():  # create_graph=True
            outs = _softmax_plain(logits, DenseTarget(None, labels, None), ctx.squared, None)
            return _plain_gradient(outs, (g_tp, g_fp, g_fn, g_psq, g_sqerr, g_ce), logits), *nothing
        n, c, _ = logits.shape
        zeros = _zeros_like_stats(logits).new_zeros(n, c)
        coefficients = _Coefficients.of((g_tp, g_fp, g_fn, g_psq, g_sqerr), ctx.squared, zeros)
        g_ce = None if g_ce is None else g_ce.view(-1, 1, 1)
        fill = lambda part, out, _: _softmax_chunk(logits[:, :, part], out=out)  # noqa: E731
        blocks = _GradientBlocks(ctx, logits, lambda part: (None, None, None), fill, dense=True)
        blocks_d, blocks_dominant, blocks_error = _Scratch(), _Scratch(), _Scratch()
        zero = zeros.new_zeros(())
        for part, p in blocks.with_parts():  # the softmax becomes the gradient in place
            t = labels[:, :, part]
            dominant = torch.gt(p, 0.5, out=blocks_dominant.like(p))

            def error(p: Tensor = p, t: Tensor = t, dominant: Tensor = dominant) -> Tensor:  # p (1 - t) - t (1 - p)
                q = _softmax_complement(p, dominant, out=blocks_error.like(p))[0]
                return q.mul_(t).neg_().add_(torch.lerp(p, zero, t))

            d = coefficients.dense(p, t, error, out=blocks_d.like(p))
            inner = p[:, :1] * d[:, :1]  # sum_k p_k d_k, one class at a time: no (N, C, s) temporary
            for k in range(1, p.shape[1]):
                inner.addcmul_(p[:, k:k + 1], d[:, k:k + 1])
            if g_ce is not None:
                d.addcmul_(t.sum(1, keepdim=True), g_ce)
            p.mul_(d.sub_(inner))
            if g_ce is not None:
                p.addcmul_(t, g_ce, value=-1.0)
            _sum_to_zero(p, dominant)
        return blocks.gradient, *nothing


class _SigmoidStats(torch.autograd.Function):
    r"""Sigmoid + :func:`region_stats` for index or dense (no-gradient) targets, without a graph.

    Returns ``TP, FP, FN``, :math:`\sum p^2` and :math:`\sum (p - t)^2` (zeros unless
    ``squared``), each (N, C), then ``T`` (N, C) and the valid voxel count (N, 1) of index
    targets (for dense ones ``T`` and a zero count; no gradient), one cache-sized chunk at a time;
    ``labels`` is the dense target (N, C, S) or ``None`` for index targets. :math:`1 - p = \sigma(-z)`. As in
    :class:`_SoftmaxIndexStats`, the buffer that backward turns into the gradient in place is
    kept (with ``keep_probs``): here it holds the sigmoid's slope :math:`\sigma(z) \sigma(-z)`, and
    :math:`\partial L / \partial z_c = \sigma(z_c) \sigma(-z_c)\, \partial L / \partial p_c`
    (:class:`_Coefficients`; 0 at ignored voxels) is one product with it (``squared`` recomputes
    :math:`p`).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor | None, ignore_index: int | None,  # noqa: ANN205
                labels: Tensor | None, squared: bool, keep_probs: bool):
        probs, like = _begin(ctx, logits, (index, labels), keep_probs, ignore_index=ignore_index,
                             squared=squared)
        n, c, _ = logits.shape
        sums, complement = _Sums(n, c, like, squared), _Scratch()
        for part in _chunks(logits, dense=labels is not None):
            _sigmoid_stats_chunk(logits[:, :, part], _chunk_buffer(logits, part, probs), sums, complement,
                                 labels=None if labels is None else labels[:, :, part],
                                 index_labels=None if index is None else _chunk_labels(index, ignore_index, part,
                                                                                      like.dtype))
        outputs = sums.outputs()
        ctx.mark_non_differentiable(*outputs[5:])
        return outputs

    @staticmethod
    def backward(ctx, g_tp: Tensor | None, g_fp: Tensor | None, g_fn: Tensor | None,  # noqa: ANN205
                 g_psq: Tensor | None, g_sqerr: Tensor | None, _g_t: None, _g_n: None):
        logits, index, labels = ctx.saved_tensors
        ignore_index, nothing = ctx.ignore_index, (None,) * 5
        if torch.is_grad_enabled():  # create_graph=True
            target = DenseTarget(None, labels, None) if index is None else _index_target(index, ignore_index)
            x = upcast(logits) if target.valid is None else torch.where(target.valid.unsqueeze(1), upcast(logits), 0.0)
            p, q = probabilities_with_complement(x, "sigmoid")
            stats = region_stats(p, target, squared=ctx.squared, complement=q)
            outs = (stats.tp, stats.fp, stats.fn, stats.psq, stats.sqerr)
            return _plain_gradient(outs, (g_tp, g_fp, g_fn, g_psq, g_sqerr), logits), *nothing
        n, c, _ = logits.shape
        zeros = _zeros_like_stats(logits).new_zeros(n, c)
        coefficients = _Coefficients.of((g_tp, g_fp, g_fn, g_psq, g_sqerr), ctx.squared, zeros)
        labels_of = (lambda part: (None, None, None)) if index is None else (
            lambda part: _chunk_labels(index, ignore_index, part, zeros.dtype))
        scratch, activation = _Scratch(), _Scratch()
        fill = lambda part, out, chunk_labels: _sigmoid_slope_chunk(  # noqa: E731
            logits[:, :, part], out=out, drop=chunk_labels[1], scratch=scratch)
        blocks = _GradientBlocks(ctx, logits, labels_of, fill, dense=index is None)
        zero = zeros.new_zeros(())
        for part, (idx, drop, _), slope in blocks.with_parts(labels=True):  # the slope becomes the gradient
            x = logits[:, :, part]
            p = None if coefficients.squares is None else _sigmoid_chunk(x, out=activation.like(slope), drop=drop)
            if index is None:
                t = labels[:, :, part]

                def error(p: Tensor = p, t: Tensor = t, x: Tensor = x) -> Tensor:  # p (1 - t) - t sigma(-z)
                    q = _sigmoid_chunk(x, out=torch.empty_like(p), negate=True)
                    return q.mul_(t).neg_().add_(torch.lerp(p, zero, t))

                dp = coefficients.dense(p, t, error, out=scratch.like(slope))
            else:
                dp = _sigmoid_index_derivative(coefficients, p, x, idx, drop, out=scratch.like(slope))
            slope.mul_(dp)  # 0 at ignored voxels, where the slope is 0
        return blocks.gradient, *nothing


def _sigmoid_index_derivative(coefficients: _Coefficients, p: Tensor | None, x: Tensor, idx: Tensor,
                              drop: Tensor | None, *, out: Tensor) -> Tensor:
    r""":math:`\partial L / \partial p` (N, C, s) into ``out`` for index labels ``idx`` (N, 1, s):
    :math:`G^P_c + (2 g^{P^2}_c + 2 g^E_c) p_c` off the label, and at it
    :math:`G^P_y + G^T_y + 2 g^{P^2}_y p_y - 2 g^E_y \sigma(-z_y)`; ``p`` is the sigmoid of the
    logits ``x`` (``None`` without squares).
    """
    y = idx.squeeze(1)
    dp = out.copy_(coefficients.g_p.unsqueeze(-1).expand(out.shape))
    if coefficients.squares is not None:
        dp.addcmul_(p, coefficients.squares)
    at_label = (coefficients.g_p.gather(1, y) + coefficients.g_t.gather(1, y)).unsqueeze(1)
    if coefficients.psq is not None:
        at_label.addcmul_(p.gather(1, idx), coefficients.psq.squeeze(-1).gather(1, y).unsqueeze(1))
    if coefficients.sqerr is not None:
        missed = torch.sigmoid(x.gather(1, idx).to(out.dtype).neg_())
        if drop is not None:
            missed.masked_fill_(drop, 0.0)
        at_label.addcmul_(missed, coefficients.sqerr.squeeze(-1).gather(1, y).unsqueeze(1), value=-1.0)
    return dp.scatter_(1, idx, at_label)


def _sigmoid_stats_chunk(x: Tensor, out: Tensor, sums: _Sums, complement: _Scratch, *, labels: Tensor | None,
                         index_labels: tuple | None) -> None:
    """:class:`_SigmoidStats` forward on one chunk of logits ``x`` (N, C, s): the sums into
    ``sums`` and the slope :math:`\\sigma(z) \\sigma(-z)` into ``out``; dense ``labels`` (N, C, s) or
    ``index_labels`` (:func:`_chunk_labels`)."""
    if labels is not None:
        p = _sigmoid_chunk(x, out=out)
        sums.add_dense(p, labels, _sigmoid_chunk(x, out=complement.like(p), negate=True), slope=True)
        return
    idx, drop, v = index_labels
    p = _sigmoid_chunk(x, out=out, drop=drop)
    missed = torch.sigmoid(x.gather(1, idx).to(out.dtype).neg_())  # 1 - p_y, (N, 1, s)
    if drop is not None:
        missed.masked_fill_(drop, 0.0)
    picked = _zero_label(p, idx)
    sums.add_index(p, idx, picked, missed, v)
    # 1 - p into the block the sums are done with
    p.scatter_(1, idx, picked).mul_(_sigmoid_chunk(x, out=sums.scratch.like(p), drop=drop, negate=True))


def _sigmoid_slope_chunk(x: Tensor, *, out: Tensor, drop: Tensor | None, scratch: _Scratch) -> Tensor:
    """:math:`\\sigma(z) \\sigma(-z)` of ``x`` into ``out``, 0 at the voxels in ``drop``, with
    :func:`_sigmoid_stats_chunk`'s arithmetic."""
    p = _sigmoid_chunk(x, out=out, drop=drop)
    return p.mul_(_sigmoid_chunk(x, out=scratch.like(p), drop=drop, negate=True))


def _chunk_labels(index: Tensor, ignore_index: int | None, part: slice,
                  dtype: torch.dtype) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One chunk of class indices ``index`` (N, S) (any integer dtype) as int64 ``(N, 1, s)`` with
    ignored voxels set to class 0, the ignored voxels (bool) and the valid mask in ``dtype``, both
    ``(N, 1, s)`` (``None`` without ``ignore_index``): converted here, so no int64 copy of the whole
    map is ever held."""
    labels = index[:, part].unsqueeze(1)
    if ignore_index is None:
        return labels.long(), None, None
    drop = labels == ignore_index
    return labels.masked_fill(drop, 0).long(), drop, (~drop).to(dtype)


def _index_target(index: Tensor, ignore_index: int | None) -> DenseTarget:
    """The whole ``index`` map as a :class:`DenseTarget` (for the plain expression only)."""
    labels, drop, _ = _chunk_labels(index, ignore_index, slice(None), torch.bool)
    return DenseTarget(labels.squeeze(1), None, None if drop is None else ~drop.squeeze(1))


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
    gradient is wanted and the logits are in their compute dtype (a float32 buffer for half logits
    would outweigh the half gradient; backward recomputes those chunk by chunk)."""
    if not keep or logits.dtype != compute_dtype(logits.dtype):
        return None
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _chunk_buffer(logits: Tensor, part: slice, probs: Tensor | None) -> Tensor:
    """Where a chunk's activation goes: the kept buffer's slice, or a chunk-sized compute-dtype block."""
    if probs is not None:
        return probs[:, :, part]
    return torch.empty(logits[:, :, part].shape, dtype=compute_dtype(logits.dtype), device=logits.device)


class _GradientBlocks:
    """Backward's chunks: the chunk's labels ``labels(part)`` (``(idx, drop, valid)``) and ``p``, the
    chunk's activation in the compute dtype, which the loop turns into the gradient in place.

    With forward's buffer (handed over once), ``p`` is a view of it and the buffer is the
    gradient. Otherwise (a second backward, or half / bfloat16 logits) ``p`` is recomputed by
    ``fill(part, out, labels)`` with forward's arithmetic, so every backward gives the same
    gradient, and copied, rounded once, into a new gradient in the logits' dtype. ``dense``: the
    chunks of dense labels (:func:`_chunks`).
    """

    def __init__(self, ctx: object, logits: Tensor, labels: Callable[[slice], tuple],
                 fill: Callable[[slice, Tensor, tuple], object], dense: bool = False) -> None:
        self.buffer, ctx.probs = ctx.probs, None
        self.dense = dense
        self.logits, self.labels, self.fill = logits, labels, fill
        self.gradient = self.buffer if self.buffer is not None else torch.empty_like(
            logits, memory_format=torch.contiguous_format)

    def __iter__(self) -> Iterator[tuple[tuple, Tensor]]:
        for _, labels, p in self.with_parts(labels=True):
            yield labels, p

    def with_parts(self, labels: bool = False) -> Iterator[tuple]:
        """``(part, p)``, or ``(part, labels, p)`` with ``labels=True``."""
        for part in _chunks(self.logits, self.dense):
            chunk_labels = self.labels(part)
            if self.buffer is not None:
                p = self.buffer[:, :, part]
            else:
                p = _chunk_buffer(self.logits, part, None)
                self.fill(part, p, chunk_labels)
            yield (part, chunk_labels, p) if labels else (part, p)
            if self.buffer is None:
                self.gradient[:, :, part] = p


def _plain_gradient(outputs: tuple[Tensor | None, ...], grads: tuple[Tensor | None, ...], logits: Tensor) -> Tensor:
    """The gradient through the plain autograd expression (``create_graph=True``: second derivatives)."""
    with torch.enable_grad():
        pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if o is not None and g is not None]
        if not pairs:
            return torch.zeros_like(logits)
        (grad,) = torch.autograd.grad([o for o, _ in pairs], logits, [g for _, g in pairs],
                                      create_graph=True, allow_unused=True)
    return torch.zeros_like(logits) if grad is None else grad


def _softmax_chunk(x: Tensor, *, out: Tensor, drop: Tensor | None = None,
                   read: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor | None, Tensor]:
    """Softmax of ``x`` (N, C, s) over dim 1 into ``out`` (the compute dtype); returns ``read(z - m)``
    (what a loss needs from the shifted logits, taken before they are exponentiated in place) and
    ``sum_k exp(z_k - m)``. Voxels in ``drop`` (N, 1, s) (ignored ones, which may hold NaN or
    infinity) read shifted logits 0 and get probabilities 0."""
    x = x.to(out.dtype)  # half logits: every step in float32
    shift = x.amax(1, keepdim=True)
    torch.sub(x, shift, out=out)
    if drop is not None:
        out.masked_fill_(drop, 0.0)
    shifted = None if read is None else read(out)
    total = out.exp_().sum(1, keepdim=True)
    out.div_(total if drop is None else total.masked_fill(drop, float("inf")))
    return shifted, total


def _softmax_label_chunk(x: Tensor, idx: Tensor, *, out: Tensor, drop: Tensor | None = None,
                         shifted: bool = False) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Softmax of ``x`` (N, C, s) over dim 1 into ``out`` with each voxel's label ``idx`` (N, 1, s)
    left at 0, as :func:`_softmax_chunk` (``drop``: ignored voxels).

    Returns :math:`p_y`, :math:`1 - p_y` (the other classes' exponentials over the total: the
    sum that normalises the softmax is taken with the label's term set aside, so it costs no
    extra pass), :math:`z_y - m` (with ``shifted``, else ``None``) and :math:`\\sum_k e^{z_k - m}`,
    each (N, 1, s); :math:`p_y` and :math:`1 - p_y` are 0 at ignored voxels.
    """
    x = x.to(out.dtype)  # half logits: every step in float32
    torch.sub(x, x.amax(1, keepdim=True), out=out)
    if drop is not None:
        out.masked_fill_(drop, 0.0)
    at_y = out.gather(1, idx) if shifted else None
    own = _zero_label(out.exp_(), idx)
    rest = out.sum(1, keepdim=True)
    total = rest + own
    scale = total if drop is None else total.masked_fill(drop, float("inf"))
    out.div_(scale)
    return own.div_(scale), rest.div_(scale), at_y, total


def _zero_label(p: Tensor, idx: Tensor) -> Tensor:
    """Set ``p`` (N, C, s) to 0 at each voxel's label ``idx`` (N, 1, s), in place; returns the values taken."""
    picked = p.gather(1, idx)
    p.scatter_(1, idx, picked.new_zeros(()).expand(picked.shape))  # a tensor source: faster than a number
    return picked


class _Scratch:
    """One chunk-sized block that every chunk of a pass reuses for its temporary, instead of a
    fresh allocation per chunk."""

    def __init__(self) -> None:
        self.block: Tensor | None = None

    def like(self, x: Tensor) -> Tensor:
        """A contiguous uninitialised tensor of ``x``'s shape, dtype and device."""
        if self.block is None or self.block.numel() < x.numel() or self.block.dtype != x.dtype:
            self.block = torch.empty(x.numel(), dtype=x.dtype, device=x.device)
        return self.block[:x.numel()].view(x.shape)


def _softmax_complement(p: Tensor, dominant: Tensor, *, out: Tensor) -> tuple[Tensor, Tensor]:
    """``1 - p`` of a softmax chunk ``p`` (N, C, s) into ``out``, the entry of a class with
    :math:`p > 1/2` (``dominant``: ``p > 0.5`` as 0/1 floats) taken as the sum of the other
    classes' probabilities (``1 - p`` keeps few digits there); also that sum (N, 1, s) (1 where no
    class has :math:`p > 1/2`).

    The selects are ``torch.lerp`` with the 0/1 weight, which returns either end exactly: on a
    CPU a float mask and ``lerp`` run vectorized, where a bool mask and ``torch.where`` (and
    products of bool and float tensors) run element by element, about 3x slower for this step."""
    zero, one = p.new_zeros(()), p.new_ones(())
    others = torch.lerp(p, zero, dominant, out=out).sum(1, keepdim=True)
    complement = torch.sub(one, p, out=out)  # exact for p > 1/2
    return torch.lerp(complement, others, dominant, out=out), others


def _dense_cross_entropy(t: Tensor, tz: Tensor, total: Tensor, dominant: Tensor, others: Tensor, *,
                         out: Tensor) -> Tensor:
    r"""Per voxel :math:`-\sum_c t_c \log p_c` (N, 1, s) of dense labels ``t`` (N, C, s), from
    :math:`\sum_c t_c (z_c - m)` ``tz``, :math:`\sum_k e^{z_k - m}` ``total`` and the class with
    :math:`p > 1/2` (``dominant``, 0/1 floats, and ``others``: :func:`_softmax_complement`); ``out``
    (N, C, s) is a temporary block, which may be ``dominant``.

    :math:`T_x \log \sum_k e^{z_k - m} - \sum_c t_c (z_c - m)`, except for the dominant class
    :math:`a` (:math:`z_a = m`), whose :math:`-\log p_a` is :math:`-\log(1 - \sum_{k \ne a} p_k)`
    (``log1p``): near a perfect prediction :math:`\log` of a total near 1 keeps few digits.
    """
    t_a = torch.mul(t, dominant, out=out).sum(1, keepdim=True)
    ce = torch.sum(t, 1, keepdim=True).sub_(t_a).mul_(total.log()).sub_(tz)
    return ce.sub_(t_a.mul_(others.clamp_max(0.5).neg_().log1p_()))


def _sigmoid_chunk(x: Tensor, *, out: Tensor, drop: Tensor | None = None, negate: bool = False) -> Tensor:
    """Sigmoid of ``x`` (of ``-x`` with ``negate``: ``1 - p``) into ``out``, computed in ``out``'s
    dtype (float32 for half logits); 0 at the voxels in ``drop`` (N, 1, s)."""
    x = x.to(out.dtype)
    if negate:
        torch.neg(x, out=out).sigmoid_()
    else:
        torch.sigmoid(x, out=out)
    return out if drop is None else out.masked_fill_(drop, 0.0)


def _voxel_ce_weight(ce_weight: Tensor | None, idx: Tensor, valid: Tensor | None) -> Tensor | None:
    """The cross-entropy weight of each voxel, ``w[y] * valid`` (``None`` when it is 1 everywhere)."""
    if ce_weight is None:
        return valid
    u = ce_weight[idx]
    return u if valid is None else u * valid


def _chunks(logits: Tensor, dense: bool = False) -> list[slice]:
    """Slices of the voxel dimension of ``logits`` (N, C, S); ``dense``: for dense labels."""
    n, c, size = logits.shape
    if size == 0:
        return [slice(0, 0)]
    budget = (_CPU_DENSE_CHUNK if dense else _CPU_CHUNK) if logits.device.type == "cpu" else _ACCELERATOR_CHUNK
    step = max(budget // max(n * c, 1), 256)
    return [slice(start, min(start + step, size)) for start in range(0, size, step)]


def _softmax_plain(logits: Tensor, target: DenseTarget, squared: bool,
                   ce_weight: Tensor | None) -> tuple[Tensor | None, ...]:
    """``TP, FP, FN, sum p^2, sum (p - t)^2`` (``None`` unless ``squared``) and the cross-entropy
    sum of the fused softmax kernels, through plain autograd (their second derivatives)."""
    x = upcast(logits)
    if target.valid is not None:
        x = torch.where(target.valid.unsqueeze(1), x, 0.0)
    p, q = probabilities_with_complement(x, "softmax")
    stats = region_stats(p, target, squared=squared, complement=q)
    logp = torch.log_softmax(x, dim=1)
    if target.index is None:
        ce = -(target.dense * logp).sum((1, 2))
    else:
        nll = -logp.gather(1, target.index.unsqueeze(1)).squeeze(1)
        valid = None if target.valid is None else target.valid.to(nll.dtype)
        u = _voxel_ce_weight(ce_weight, target.index, valid)
        ce = (nll if u is None else nll * u).sum(-1)
    return stats.tp, stats.fp, stats.fn, stats.psq, stats.sqerr, ce
