r"""Region (overlap) segmentation losses: Dice, Jaccard, Tversky, focal Tversky, generalized Dice, MCC, Dice+CE.

Every loss here is a function of a few per-(sample, class) sums over space, computed once by
:func:`region_stats`:

.. math::
    TP_{nc} = \sum_x p_{ncx} t_{ncx}, \quad P_{nc} = \sum_x p_{ncx}, \quad T_{nc} = \sum_x t_{ncx},
    \quad FP = P - TP, \quad FN = T - TP

Conventions shared by all of them (see each docstring for the formula):

* ``input`` holds logits ``(N, C, *spatial)`` (2-D or 3-D or any number of spatial dims);
  ``activation="softmax" | "sigmoid" | None`` is applied to all channels **before** the
  background channel is dropped (``include_background=False``) and before masking.
* ``target`` holds integer class indices ``(N, *spatial)`` or ``(N, 1, *spatial)`` (never
  expanded to a one-hot tensor), or floating one-hot / soft labels with the input's shape.
* ``ignore_index`` (index targets) removes a voxel from every sum, :math:`P` included.
* **Natural unit** (``reduction="none"``): one value per (sample, class kept), shape
  ``(N, C')`` with ``C' = C`` or ``C - 1``. With ``aggregate="batch"`` the sums are pooled over
  the batch first (nnU-Net's "batch dice", SMP's default) and the unit is ``(1, C')``
  (``(0, C')`` for an empty batch). Generalized Dice sums over classes inside its formula, so
  its unit is per sample ``(N,)`` / ``(1,)``; Dice+CE is per sample too (see :func:`dice_ce_loss`).
* ``weight=`` broadcasts to the unit; ``class_weight=`` (shape ``(C,)``, over all classes,
  background included) multiplies it; ``"mean"`` is the weighted mean.
* **Smoothing** ``smooth_nr`` / ``smooth_dr`` (default ``1e-5`` both, as MONAI) are added to
  numerator and denominator, so an empty target predicted empty scores a perfect 0 rather than
  the maximum loss a denominator-only epsilon gives (AdelaiDet #610); their size sets how
  strongly an empty target pulls predictions toward empty (the trade-off analysed by
  Tilborghs et al., "Dice loss in the context of missing or empty labels", MICCAI 2022).
  Denominators are also floored at ``eps`` (default ``1e-7``, SMP's clamp), which changes
  nothing while ``smooth_dr >= eps``.
* **Memory.** The statistics come from fused kernels that never build a one-hot tensor or an
  autograd graph over the volume: the activation is written once, into the buffer that backward
  turns into the gradient in place, so a forward+backward pass needs the gradient plus
  cache-sized temporaries (autograd through the formula keeps the probabilities, a one-hot
  target and products: about three times as much). They serve ``activation="softmax"`` and
  ``"sigmoid"`` with index or one-hot / soft targets, ``squared`` too, and Dice+CE's
  cross-entropy. Index labels are read in their own integer dtype, chunk by chunk, so no int64
  copy of the label map is made either. ``soft_label=True``, targets that require a gradient,
  ``activation=None``, Dice+CE with ``class_weight`` and one-hot / soft targets, and code being
  traced by ``torch.compile`` (which fuses the plain form itself) use plain autograd: the same
  values and gradients, not the same memory.
* **Absent classes** (``T = 0`` for that unit): ``absent="keep"`` (default) uses the formula as
  is, so a false positive on an empty class costs nearly 1 and an empty prediction nearly 0;
  ``absent="zero"`` sets those units to 0 but keeps them in the mean (SMP);
  ``absent="exclude"`` drops them from the mean (kornia 0.9.0 ``average="macro"``).

To reproduce a peer (each row is proved by a test: MONAI and kornia live in
``tests/test_segmentation.py``, SMP 0.6.0 golden vectors in ``tests/test_golden_smp.py``):

* MONAI ``DiceLoss(softmax=True, to_onehot_y=True)``: the defaults (``include_background``,
  ``aggregate="batch"`` for ``batch=True``, ``squared=True`` for ``squared_pred=True``). MONAI's
  ``weight=w`` is ``class_weight=w, reduction="none"`` then ``.mean()`` (MONAI takes a plain mean
  of the weighted units; losskit's ``"mean"`` is the weighted mean). ``jaccard=True`` is
  :func:`jaccard_loss` with half the smoothing (``smooth_nr = smooth_dr = s / 2``).
* MONAI ``TverskyLoss``, ``GeneralizedDiceLoss`` (``absent="max"``), ``DiceCELoss``, ``MCCLoss``:
  the same options under the same names (``weight_type`` for ``w_type``).
* SMP ``DiceLoss`` / ``JaccardLoss`` / ``TverskyLoss`` (``from_logits=True``):
  ``aggregate="batch", smooth_nr=0, smooth_dr=0, eps=1e-7, absent="zero"``, with
  ``activation="softmax"`` (multiclass) or ``"sigmoid"`` (binary, multilabel). SMP's focal
  Tversky (``gamma=g`` on the class mean) is ``tversky_loss(...) ** g``, not
  :func:`focal_tversky_loss`.
* kornia 0.9.0 ``dice_loss(average="macro")`` / ``tversky_loss``: ``smooth_nr=0, smooth_dr=1e-8,
  absent="exclude", reduction="none"``, then each sample's mean over its present classes and the
  mean over samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from losskit._core.checks import check_broadcastable, check_class_vector, check_number, check_one_of, check_tensor
from losskit._core.dense import DenseTarget, dense_target, drop_background, index_labels, one_hot, probabilities
from losskit._core.docs import shared_docs
from losskit._core.numerics import compute_dtype, upcast
from losskit._core.reduction import Reduction, check_reduction, reduce_for, reduce_loss

AGGREGATES = ("per_sample", "batch")
ABSENT = ("keep", "zero", "exclude")

# Elements (N * C * voxels) per chunk on a CPU: a 2 MB float32 block stays in cache and keeps the
# temporaries small (peak = the gradient + about one block). Measured with
# benchmarks/bench_segmentation.py on (2, 8, 96^3) logits (2 cores, idle), time / peak memory:
# 1 MB blocks 60 ms / 55.3 MB, 2 MB 49 ms / 56.5 MB, 4 MB 46 ms / 59.0 MB, 8 MB 49 ms / 64.0 MB.
# Caveat: on an oversubscribed machine (another process holding a core) every parallel op waits
# for its threads, and the ~20 ops per chunk then cost far more than on an idle one; torch with
# one thread does not suffer from that. GPUs take everything in one chunk: their limit is
# launches, not cache.
_CPU_CHUNK = 1 << 19


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
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logits, index, ce_weight)
        ctx.ignore_index, ctx.squared = ignore_index, squared
        probs = ctx.probs = _new_buffer(logits) if keep_probs else None
        n, c, _ = logits.shape
        sums = _IndexSums(n, c, logits)
        psum, psq = logits.new_zeros(n, c), logits.new_zeros(n, c)
        ce = logits.new_zeros(n)
        ce_den = logits.new_zeros(n)
        for part in _chunks(logits):  # each chunk stays in cache through every step below
            idx, v = _chunk_labels(index, ignore_index, part, logits.dtype)  # (N, 1, s) each
            p = torch.empty_like(logits[:, :, part]) if probs is None else probs[:, :, part]
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
        grad = _gradient_buffer(ctx, logits, lambda part, out: _softmax_chunk(logits[:, :, part], out=out))
        n, c, s = logits.shape
        g_p = logits.new_zeros(n, c) if g_p is None else g_p
        g_tp = logits.new_zeros(n, c) if g_tp is None else g_tp
        row = g_p.unsqueeze(-1)  # (N, C, 1)
        if g_ce is not None and ce_weight is None:  # G is one number per sample: fold it into the row
            row = row + g_ce.view(-1, 1, 1)
        g_p_row = g_p.unsqueeze(1)  # (N, 1, C)
        g_psq = g_psq if ctx.squared else None  # (sum p^2 is only an output with squared=True)
        for part in _chunks(logits):  # the softmax becomes the gradient in place
            p = grad[:, :, part]
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
        return grad, *nothing


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
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logits, labels)
        ctx.squared = squared
        probs = ctx.probs = _new_buffer(logits) if keep_probs else None
        n, c, _ = logits.shape
        tp, psum, psq = (logits.new_zeros(n, c) for _ in range(3))
        ce = logits.new_zeros(n)
        for part in _chunks(logits):
            t = labels[:, :, part]
            p = torch.empty_like(logits[:, :, part]) if probs is None else probs[:, :, part]
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
        grad = _gradient_buffer(ctx, logits, lambda part, out: _softmax_chunk(logits[:, :, part], out=out))
        n, c, _ = logits.shape
        g_p = (logits.new_zeros(n, c) if g_p is None else g_p).unsqueeze(-1)  # (N, C, 1)
        g_tp = (logits.new_zeros(n, c) if g_tp is None else g_tp).unsqueeze(-1)
        g_ce = None if g_ce is None else g_ce.view(-1, 1, 1)
        for part in _chunks(logits):  # the softmax becomes the gradient in place
            p, t = grad[:, :, part], labels[:, :, part]
            d = torch.addcmul(g_p, t, g_tp)
            if ctx.squared and g_psq is not None:
                d.addcmul_(p, g_psq.unsqueeze(-1), value=2.0)
            inner = (p * d).sum(1, keepdim=True)
            if g_ce is not None:
                d.addcmul_(t.sum(1, keepdim=True), g_ce)
            p.mul_(d.sub_(inner))
            if g_ce is not None:
                p.addcmul_(t, g_ce, value=-1.0)
        return grad, *nothing


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
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logits, index, labels)
        ctx.squared, ctx.ignore_index = squared, ignore_index
        probs = ctx.probs = _new_buffer(logits) if keep_probs else None
        n, c, _ = logits.shape
        sums = _IndexSums(n, c, logits)  # TP for index targets, T and the voxel count
        psum, psq = logits.new_zeros(n, c), logits.new_zeros(n, c)
        for part in _chunks(logits):
            x = logits[:, :, part]
            p = torch.sigmoid(x, out=torch.empty_like(x) if probs is None else probs[:, :, part])
            v = None
            if index is None:
                sums.tp += (p * labels[:, :, part]).sum(-1)
            else:
                idx, v = _chunk_labels(index, ignore_index, part, logits.dtype)
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
            stats = region_stats(torch.sigmoid(logits), target, squared=ctx.squared)
            outs = (stats.tp, stats.psum, stats.psq)
            return _plain_gradient(outs, (g_tp, g_p, g_psq), logits), *nothing
        grad = _gradient_buffer(ctx, logits, lambda part, out: torch.sigmoid(logits[:, :, part], out=out))
        n, c, _ = logits.shape
        g_p = (logits.new_zeros(n, c) if g_p is None else g_p).unsqueeze(-1)  # (N, C, 1)
        g_tp = logits.new_zeros(n, c) if g_tp is None else g_tp
        for part in _chunks(logits):
            p = grad[:, :, part]
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
        return grad, *nothing


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


def _new_buffer(logits: Tensor) -> Tensor:
    """The activation buffer a fused kernel keeps for backward, which turns it into the gradient."""
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _gradient_buffer(ctx: object, logits: Tensor, fill: Callable[[slice, Tensor], object]) -> Tensor:
    """The buffer forward kept, handed over once; a later backward refills a new one chunk by chunk
    with ``fill(part, out)``, the same arithmetic as forward, so every backward gives the same gradient."""
    probs, ctx.probs = ctx.probs, None
    if probs is None:
        probs = _new_buffer(logits)
        for part in _chunks(logits):
            fill(part, probs[:, :, part])
    return probs


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
    """Softmax of ``x`` (N, C, s) over dim 1 into ``out``; returns ``read(z - m)`` (what a loss needs
    from the shifted logits, taken before they are exponentiated in place) and ``sum_k exp(z_k - m)``."""
    shift = x.amax(1, keepdim=True)
    torch.sub(x, shift, out=out)
    shifted = None if read is None else read(out)
    total = out.exp_().sum(1, keepdim=True)
    out.div_(total)
    return shifted, total


def _voxel_ce_weight(ce_weight: Tensor | None, idx: Tensor, valid: Tensor | None) -> Tensor | None:
    """The cross-entropy weight of each voxel, ``w[y] * valid`` (``None`` when it is 1 everywhere)."""
    if ce_weight is None:
        return valid
    u = ce_weight[idx]
    return u if valid is None else u * valid


def _chunks(logits: Tensor) -> list[slice]:
    """Slices of the voxel dimension of ``logits`` (N, C, S)."""
    n, c, size = logits.shape
    if logits.device.type != "cpu" or size == 0:
        return [slice(0, size)]
    step = max(_CPU_CHUNK // max(n * c, 1), 256)
    return [slice(start, min(start + step, size)) for start in range(0, size, step)]


def _softmax_plain(logits: Tensor, target: DenseTarget, squared: bool,
                   ce_weight: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """``TP, P, sum p^2`` (``None`` unless ``squared``) and the cross-entropy sum of the fused
    softmax kernels, through plain autograd (their second derivatives)."""
    logp = torch.log_softmax(logits, dim=1)
    stats = region_stats(logp.exp(), target, squared=squared)
    if target.index is None:
        return stats.tp, stats.psum, stats.psq, -(target.dense * logp).sum((1, 2))
    nll = -logp.gather(1, target.index.unsqueeze(1)).squeeze(1)
    valid = None if target.valid is None else target.valid.to(nll.dtype)
    u = _voxel_ce_weight(ce_weight, target.index, valid)
    return stats.tp, stats.psum, stats.psq, (nll if u is None else nll * u).sum(-1)


# --- shared front end ---------------------------------------------------------------------------


def _check_sync(sync_stats: object, aggregate: str) -> None:
    if not isinstance(sync_stats, bool):
        raise TypeError(f"sync_stats must be a bool, got {type(sync_stats).__name__}")
    if sync_stats and aggregate != "batch":
        raise ValueError("sync_stats=True pools the statistics over the ranks, so it needs aggregate='batch'; "
                         f"got aggregate={aggregate!r}")


def _stats(input: Tensor, target: Tensor, *, activation: str | None, include_background: bool, aggregate: str,
           ignore_index: int | None, squared: bool = False, soft_label: bool = False,
           fused_ce: bool = False, ce_weight: Tensor | None = None,
           sync_stats: bool = False) -> tuple[RegionStats, DenseTarget | None]:
    """The statistics (pooled with ``aggregate="batch"``) and the prepared target (``None`` when a
    fused kernel read index labels directly: callers that need it call :func:`dense_target`)."""
    check_one_of("aggregate", aggregate, AGGREGATES)
    _check_sync(sync_stats, aggregate)
    check_one_of("activation", activation, ("softmax", "sigmoid", None))
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
    indices = isinstance(target, Tensor) and not target.is_floating_point()
    if torch.compiler.is_compiling() or not isinstance(target, Tensor):  # (compiled: the compiler fuses the
        fused = None  # plain form; not a tensor: dense_target says what is wrong)
    elif activation == "softmax" and input.shape[1] > 1 and (indices or (
            not soft_label and not target.requires_grad and ce_weight is None)):
        fused = "softmax"
    elif activation == "sigmoid" and not soft_label and not target.requires_grad:
        fused = "sigmoid"
    else:
        fused = None
    if fused is not None and indices:  # validated, then read chunk by chunk in the kernel: no int64 copy
        index, dt = _flat(index_labels(input, target, ignore_index=ignore_index), 1), None
    else:
        index, dt = None, dense_target(input, target, ignore_index=ignore_index,
                                       compute_dtype=compute_dtype(input.dtype))
    if not include_background and input.shape[1] < 2:
        raise ValueError("include_background=False needs at least two channels (channel 0 is the background)")
    if fused is None:
        stats = region_stats(probabilities(input, activation), dt, squared=squared, soft_label=soft_label)
    else:
        logits = _flat(upcast(input), 2)
        keep = torch.is_grad_enabled() and logits.requires_grad
        if fused == "softmax" and index is not None:
            ce_weight = None if ce_weight is None else upcast(ce_weight.to(logits.device)).to(logits.dtype)
            tp, psum, psq, tsum, count, ce, ce_den = _SoftmaxIndexStats.apply(
                logits, index, ignore_index, fused_ce, ce_weight, squared, keep)
            stats = RegionStats(tp, psum, tsum, count, psq if squared else None, tsum if squared else None,
                                ce=ce if fused_ce else None, ce_den=ce_den if fused_ce else None)
        elif fused == "softmax":
            labels = _flat(dt.dense, 2)
            tp, psum, psq, ce = _SoftmaxDenseStats.apply(logits, labels, fused_ce, squared, keep)
            stats = _dense_stats(tp, psum, psq if squared else None, labels, squared)
            if fused_ce:
                stats.ce, stats.ce_den = ce, stats.count.squeeze(1)
        else:
            labels = None if dt is None else _flat(dt.dense, 2)
            tp, psum, psq, tsum, count = _SigmoidStats.apply(logits, index, ignore_index, labels, squared, keep)
            if labels is None:  # one-hot labels: t^2 = t
                stats = RegionStats(tp, psum, tsum, count, psq if squared else None, tsum if squared else None)
            else:
                stats = _dense_stats(tp, psum, psq if squared else None, labels, squared)
    stats = stats.select(include_background)
    return (stats.pooled(sync_stats) if aggregate == "batch" else stats), dt


def _dense_stats(tp: Tensor, psum: Tensor, psq: Tensor | None, labels: Tensor, squared: bool) -> RegionStats:
    """:class:`RegionStats` from a kernel's sums and dense labels (N, C, S), whose sums need no gradient."""
    count = tp.new_full((tp.shape[0], 1), float(labels.shape[-1]))
    return RegionStats(tp, psum, labels.sum(-1), count, psq, labels.square().sum(-1) if squared else None)


def _check_smoothing(smooth_nr: float, smooth_dr: float, eps: float) -> None:
    check_number("smooth_nr", smooth_nr, low=0.0)
    check_number("smooth_dr", smooth_dr, low=0.0)
    check_number("eps", eps, low=0.0)


def _ratio(numerator: Tensor, denominator: Tensor, smooth_nr: float, smooth_dr: float, eps: float) -> Tensor:
    return (numerator + smooth_nr) / (denominator + smooth_dr).clamp_min(eps)


def _class_weight(class_weight: Tensor | None, input: Tensor, include_background: bool) -> Tensor | None:
    if class_weight is None:
        return None
    check_class_vector("class_weight", class_weight, input.shape[1])
    w = upcast(class_weight.to(input.device))
    return drop_background(w.unsqueeze(0), include_background).squeeze(0)


def _finish(loss: Tensor, stats: RegionStats, *, input: Tensor, target: Tensor, absent: str,
            class_weight: Tensor | None, weight: Tensor | None, reduction: str,
            normalizer: float | Tensor | None) -> Tensor:
    mask = None
    if absent != "keep":
        present = stats.tsum > 0
        if absent == "zero":
            loss = torch.where(present, loss, loss.new_zeros(()))
        else:
            mask = present
    if weight is not None:
        check_tensor("weight", weight)
        check_broadcastable("weight", weight, loss.shape, "the loss's natural unit, shape")
        weight = upcast(weight)
    cw = None if class_weight is None else class_weight
    if cw is not None:
        weight = cw.expand(loss.shape) if weight is None else weight * cw
    return reduce_loss(loss, reduction, weight=weight, mask=mask, normalizer=normalizer, out_dtype=input.dtype,
                       inputs={"input": input, "target": target})


def _front(input, target, *, activation, include_background, aggregate, absent, ignore_index, smooth_nr,
           smooth_dr, eps, reduction, normalizer, class_weight, squared=False, soft_label=False, sync_stats=False):
    check_reduction(reduction, normalizer)
    check_one_of("absent", absent, ABSENT)
    _check_smoothing(smooth_nr, smooth_dr, eps)
    stats, _ = _stats(input, target, activation=activation, include_background=include_background,
                      aggregate=aggregate, ignore_index=ignore_index, squared=squared, soft_label=soft_label,
                      sync_stats=sync_stats)
    cw = _class_weight(class_weight, input, include_background)
    return stats, cw


_COMMON_ARGS = r"""
        input: Logits ``(N, C, *spatial)`` (probabilities with ``activation=None``).
        target: Class indices ``(N, *spatial)`` / ``(N, 1, *spatial)`` (integer), or one-hot / soft
            labels with the input's shape (floating).
        activation: ``"softmax"`` (over dim 1) | ``"sigmoid"`` | ``None``; applied before the
            background is dropped.
        include_background: Keep channel 0; ``False`` drops it after the activation.
        aggregate: ``"per_sample"`` (one value per sample and class) or ``"batch"`` (sums pooled
            over the batch first).
        sync_stats: With ``aggregate="batch"``, also pool over the ranks of ``torch.distributed``
            (one differentiable all-reduce): every rank gets the loss of the global batch (see
            :mod:`losskit.distributed`). A no-op without a process group.
        class_weight: Per-class weights, shape ``(C,)`` (background included); they weight the mean.
        smooth_nr: Added to the numerator.
        smooth_dr: Added to the denominator.
        eps: Floor of the denominator (after ``smooth_dr``).
        absent: ``"keep"`` | ``"zero"`` | ``"exclude"``: units whose target is empty (``T = 0``)
            keep the formula's value, are set to 0 but counted, or are left out of the mean.
        ignore_index: Index-target value whose voxels count in no sum.
        weight: Weights broadcastable to the natural unit.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead."""

_SHAPE = r"""
        - input: :math:`(N, C, d_1, \dots, d_k)`, :math:`k \ge 1`.
        - target: :math:`(N, d_1, \dots, d_k)` or :math:`(N, 1, d_1, \dots, d_k)` integer, or the
          input's shape floating.
        - output: scalar, or :math:`(N, C')` with ``reduction="none"`` (:math:`C' = C` or
          :math:`C - 1`); :math:`(1, C')` with ``aggregate="batch"`` (:math:`(0, C')` if N = 0)."""

_RETURNS_RAISES = r"""
    Returns:
        The loss in the input's dtype. Empty input gives 0 with a gradient; so does an image with
        every voxel ignored while ``smooth_nr = smooth_dr > 0`` (empty/empty is perfect) or
        ``absent != "keep"`` (unsmoothed, an empty unit scores 1 under ``"keep"``).

    Raises:
        ValueError: Shapes that do not match, a class index out of range, a bad option or
            reduction, softmax over one channel, a non-finite result (naming the input).
        TypeError: A non-floating input or a boolean target."""


_doc = shared_docs(ARGS=_COMMON_ARGS, SHAPE=_SHAPE, RETURNS_RAISES=_RETURNS_RAISES)


# --- the losses ---------------------------------------------------------------------------------


@_doc
def dice_loss(
    input: Tensor,
    target: Tensor,
    *,
    activation: str | None = "softmax",
    include_background: bool = True,
    aggregate: str = "per_sample",
    sync_stats: bool = False,
    squared: bool = False,
    soft_label: bool = False,
    class_weight: Tensor | None = None,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    eps: float = 1e-7,
    absent: str = "keep",
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Soft Dice loss, one value per (sample, class), on logits.

    One minus the soft Dice coefficient: a loss on overlap rather than on voxels, so a small
    structure weighs as much as a large one. ``squared=True`` uses the V-Net denominator
    :math:`\sum p^2 + \sum t^2`.

    .. math::
        \ell_{nc} = 1 - \frac{2\,TP_{nc} + s_{nr}}{\max(P_{nc} + T_{nc} + s_{dr}, \epsilon)}

    Args:
{ARGS}
        squared: V-Net denominator :math:`\sum p^2 + \sum t^2`.
        soft_label: Soft-label-correct :math:`TP = (P + T - \lVert p - t\rVert_1)/2` (floating targets).

    Shape:
{SHAPE}

{RETURNS_RAISES}

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])  # (1, 2, 1, 2)
        >>> losskit.dice_loss(logits, torch.tensor([[[0, 1]]]), reduction="none")
        tensor([[0.0003, 0.0003]])

    References:
        Milletari et al., "V-Net", 3DV 2016. Defaults follow MONAI ``DiceLoss`` (per sample,
        smoothing 1e-5 in both terms); see the module docstring for SMP and kornia.
    """
    stats, cw = _front(input, target, activation=activation, include_background=include_background,
                       aggregate=aggregate, sync_stats=sync_stats, absent=absent, ignore_index=ignore_index,
                       smooth_nr=smooth_nr,
                       smooth_dr=smooth_dr, eps=eps, reduction=reduction, normalizer=normalizer,
                       class_weight=class_weight, squared=squared, soft_label=soft_label)
    loss = _dice_from_stats(stats, squared, smooth_nr, smooth_dr, eps)
    return _finish(loss, stats, input=input, target=target, absent=absent, class_weight=cw, weight=weight,
                   reduction=reduction, normalizer=normalizer)


def _dice_from_stats(stats: RegionStats, squared: bool, smooth_nr: float, smooth_dr: float, eps: float) -> Tensor:
    denominator = stats.psq + stats.tsq if squared else stats.psum + stats.tsum
    return 1 - _ratio(2 * stats.tp, denominator, smooth_nr, smooth_dr, eps)


@_doc
def jaccard_loss(
    input: Tensor,
    target: Tensor,
    *,
    activation: str | None = "softmax",
    include_background: bool = True,
    aggregate: str = "per_sample",
    sync_stats: bool = False,
    soft_label: bool = False,
    class_weight: Tensor | None = None,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    eps: float = 1e-7,
    absent: str = "keep",
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Soft Jaccard (IoU) loss, one value per (sample, class), on logits.

    One minus the soft intersection over union; it penalises errors more than Dice
    (:math:`J = D / (2 - D)`).

    .. math::
        \ell_{nc} = 1 - \frac{TP + s_{nr}}{\max(P + T - TP + s_{dr}, \epsilon)}

    Args:
{ARGS}
        soft_label: Soft-label-correct :math:`TP` (floating targets).

    Shape:
{SHAPE}

{RETURNS_RAISES}

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])
        >>> losskit.jaccard_loss(logits, torch.tensor([[[0, 1]]]), reduction="none")
        tensor([[0.0007, 0.0007]])

    References:
        Rahman & Wang, "Optimizing Intersection-Over-Union in Deep Neural Networks", 2016.
        MONAI ``DiceLoss(jaccard=True)`` computes :math:`1 - (2TP + s)/(2(P + T - TP) + s)`: it
        matches with ``smooth_nr = smooth_dr = s / 2``.
    """
    stats, cw = _front(input, target, activation=activation, include_background=include_background,
                       aggregate=aggregate, sync_stats=sync_stats, absent=absent, ignore_index=ignore_index,
                       smooth_nr=smooth_nr,
                       smooth_dr=smooth_dr, eps=eps, reduction=reduction, normalizer=normalizer,
                       class_weight=class_weight, soft_label=soft_label)
    loss = 1 - _ratio(stats.tp, stats.psum + stats.tsum - stats.tp, smooth_nr, smooth_dr, eps)
    return _finish(loss, stats, input=input, target=target, absent=absent, class_weight=cw, weight=weight,
                   reduction=reduction, normalizer=normalizer)


def _tversky_index(stats: RegionStats, alpha: float, beta: float, smooth_nr: float, smooth_dr: float,
                   eps: float) -> Tensor:
    denominator = stats.tp + alpha * stats.fp + beta * stats.fn
    return _ratio(stats.tp, denominator, smooth_nr, smooth_dr, eps)


@_doc
def tversky_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    activation: str | None = "softmax",
    include_background: bool = True,
    aggregate: str = "per_sample",
    sync_stats: bool = False,
    soft_label: bool = False,
    class_weight: Tensor | None = None,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    eps: float = 1e-7,
    absent: str = "keep",
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Tversky loss: Dice with separate weights on false positives and false negatives.

    ``alpha`` weights false positives and ``beta`` false negatives (the convention of MONAI,
    SMP, optax, Keras and kornia); ``beta > alpha`` favours recall. ``alpha = beta = 0.5`` is Dice
    with twice the smoothing (:math:`(2TP + 2s)/(P + T + 2s)`), exactly Dice when unsmoothed.

    .. math::
        \ell_{nc} = 1 - \frac{TP + s_{nr}}{\max(TP + \alpha FP + \beta FN + s_{dr}, \epsilon)}

    Args:
        alpha: Weight of false positives, :math:`\alpha \ge 0`.
        beta: Weight of false negatives, :math:`\beta \ge 0`.
{ARGS}
        soft_label: Soft-label-correct :math:`TP` (floating targets).

    Shape:
{SHAPE}

{RETURNS_RAISES}

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])
        >>> # class 0: TP = 1, FP = 0, FN = 1 -> 1 - 1/1.7; class 1 is absent but predicted once: ~1
        >>> losskit.tversky_loss(logits, torch.tensor([[[0, 0]]]), alpha=0.3, beta=0.7, reduction="none")
        tensor([[0.4118, 1.0000]])

    References:
        Salehi et al., "Tversky loss function for image segmentation using 3D fully convolutional
        deep networks", MLMI 2017. Defaults follow MONAI ``TverskyLoss``.
    """
    check_number("alpha", alpha, low=0.0)
    check_number("beta", beta, low=0.0)
    stats, cw = _front(input, target, activation=activation, include_background=include_background,
                       aggregate=aggregate, sync_stats=sync_stats, absent=absent, ignore_index=ignore_index,
                       smooth_nr=smooth_nr,
                       smooth_dr=smooth_dr, eps=eps, reduction=reduction, normalizer=normalizer,
                       class_weight=class_weight, soft_label=soft_label)
    loss = 1 - _tversky_index(stats, alpha, beta, smooth_nr, smooth_dr, eps)
    return _finish(loss, stats, input=input, target=target, absent=absent, class_weight=cw, weight=weight,
                   reduction=reduction, normalizer=normalizer)


@_doc
def focal_tversky_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 4 / 3,
    activation: str | None = "softmax",
    include_background: bool = True,
    aggregate: str = "per_sample",
    sync_stats: bool = False,
    soft_label: bool = False,
    class_weight: Tensor | None = None,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    eps: float = 1e-7,
    absent: str = "keep",
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Focal Tversky loss (Abraham & Khan 2019), the focal exponent applied per class as in the paper.

    .. math::
        \ell_{nc} = (1 - TI_{nc})^{1/\gamma}, \qquad
        TI = \frac{TP + s_{nr}}{\max(TP + \alpha FP + \beta FN + s_{dr}, \epsilon)}

    **Exponent convention**: the paper's Eq. 4 raises to :math:`1/\gamma` with
    :math:`\gamma \in [1, 3]` and reports :math:`\gamma = 4/3` best; ``gamma`` here is that
    :math:`\gamma` (``gamma=1`` is Tversky). The paper's :math:`\alpha = 0.7` weights false
    negatives, which is ``beta=0.7`` in losskit's (MONAI/SMP) convention, hence the defaults
    ``alpha=0.3, beta=0.7``. SMP's ``TverskyLoss(gamma=g)`` raises the **class mean** to the
    power ``g`` instead (:math:`(\mathrm{mean}_c(1 - TI_c))^g`, SMP #734); that is not reproduced:
    its per-class limit here is ``gamma=1/g``. The base is floored at the dtype's tiny number so
    the gradient stays finite at a perfect match (:math:`1/\gamma < 1`); an exact match gives 0.

    Args:
        alpha: Weight of false positives.
        beta: Weight of false negatives.
        gamma: :math:`\gamma > 0`; the exponent is :math:`1/\gamma`.
{ARGS}
        soft_label: Soft-label-correct :math:`TP` (floating targets).

    Shape:
{SHAPE}

{RETURNS_RAISES}

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])
        >>> losskit.focal_tversky_loss(logits, torch.tensor([[[0, 0]]]), reduction="none")  # 0.4118 ** 0.75
        tensor([[0.5140, 1.0000]])

    References:
        Abraham & Khan, "A Novel Focal Tversky Loss Function with Improved Attention U-Net for
        Lesion Segmentation", ISBI 2019, Eq. 4.
    """
    check_number("alpha", alpha, low=0.0)
    check_number("beta", beta, low=0.0)
    check_number("gamma", gamma, low=0.0, low_open=True)
    stats, cw = _front(input, target, activation=activation, include_background=include_background,
                       aggregate=aggregate, sync_stats=sync_stats, absent=absent, ignore_index=ignore_index,
                       smooth_nr=smooth_nr,
                       smooth_dr=smooth_dr, eps=eps, reduction=reduction, normalizer=normalizer,
                       class_weight=class_weight, soft_label=soft_label)
    base = 1 - _tversky_index(stats, alpha, beta, smooth_nr, smooth_dr, eps)
    floor = torch.finfo(base.dtype).tiny
    loss = torch.where(base > floor, base.clamp_min(floor).pow(1.0 / gamma), base.new_zeros(()))
    return _finish(loss, stats, input=input, target=target, absent=absent, class_weight=cw, weight=weight,
                   reduction=reduction, normalizer=normalizer)


def generalized_dice_loss(
    input: Tensor,
    target: Tensor,
    *,
    activation: str | None = "softmax",
    include_background: bool = True,
    aggregate: str = "per_sample",
    sync_stats: bool = False,
    weight_type: str = "square",
    absent: str = "max",
    soft_label: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    eps: float = 1e-7,
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Generalized Dice loss (Sudre et al. 2017): classes weighted by the inverse of their volume.

    .. math::
        w_c = 1 / T_c^2 \ (\text{"square"}), \quad 1 / T_c \ (\text{"simple"}), \quad 1 \ (\text{"uniform"})

        \ell_n = 1 - \frac{2 \sum_c w_c TP_{nc} + s_{nr}}{\max(\sum_c w_c (P_{nc} + T_{nc}) + s_{dr}, \epsilon)}

    The weights depend on the target only (no gradient). A class absent from a sample's target
    has :math:`w_c = \infty`; ``absent="max"`` (default, MONAI) gives it the largest finite weight
    of that sample (of the batch with ``aggregate="batch"``), so false positives on an absent
    class are still penalised; ``absent="zero"`` gives it weight 0 (the class is ignored in that
    sample, false positives included). A sample with every class absent gives 0 (smoothing).

    Args:
        input: Logits ``(N, C, *spatial)`` (probabilities with ``activation=None``).
        target: Class indices or one-hot / soft labels (see :func:`dice_loss`).
        activation: ``"softmax"`` | ``"sigmoid"`` | ``None``.
        include_background: Keep channel 0 (dropped after the activation, before the weights).
        aggregate: ``"per_sample"`` or ``"batch"`` (sums and weights pooled over the batch).
        sync_stats: With ``aggregate="batch"``, also pool over the ranks of ``torch.distributed``
            (one differentiable all-reduce): every rank gets the loss of the global batch (see
            :mod:`losskit.distributed`). A no-op without a process group.
        weight_type: ``"square"`` | ``"simple"`` | ``"uniform"``.
        absent: ``"max"`` | ``"zero"``: the weight of a class with :math:`T_c = 0`.
        soft_label: Soft-label-correct :math:`TP` (floating targets).
        smooth_nr: Added to the numerator after the class sum (as MONAI).
        smooth_dr: Added to the denominator after the class sum.
        eps: Floor of the denominator.
        ignore_index: Index-target value whose voxels count in no sum.
        weight: Per-sample weights broadcastable to ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, C, d_1, \dots, d_k)`. - target: as :func:`dice_loss`.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (:math:`(1,)` with
          ``aggregate="batch"``, :math:`(0,)` if N = 0).

    Returns:
        The loss in the input's dtype; empty input or all voxels ignored gives 0 with a gradient.

    Raises:
        ValueError: Bad shapes, options or reduction; a non-finite result.
        TypeError: A non-floating input or a boolean target.

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])
        >>> losskit.generalized_dice_loss(logits, torch.tensor([[[0, 1]]]), reduction="none")
        tensor([0.0003])

    References:
        Sudre et al., "Generalised Dice overlap as a deep learning loss function for highly
        unbalanced segmentations", DLMIA 2017. Defaults follow MONAI ``GeneralizedDiceLoss``.
    """
    check_reduction(reduction, normalizer)
    check_one_of("weight_type", weight_type, ("square", "simple", "uniform"))
    check_one_of("absent", absent, ("max", "zero"))
    _check_smoothing(smooth_nr, smooth_dr, eps)
    stats, _ = _stats(input, target, activation=activation, include_background=include_background,
                      aggregate=aggregate, ignore_index=ignore_index, soft_label=soft_label, sync_stats=sync_stats)
    tsum = stats.tsum.detach()
    if weight_type == "uniform":
        w = torch.ones_like(tsum)
    else:
        present = tsum > 0
        safe = torch.where(present, tsum, torch.ones_like(tsum))
        w = torch.where(present, 1 / (safe * safe if weight_type == "square" else safe), torch.zeros_like(tsum))
        if absent == "max":
            w = torch.where(present, w, w.amax(1, keepdim=True) if w.shape[1] else w)
    numerator = 2 * (w * stats.tp).sum(1)
    denominator = (w * (stats.psum + stats.tsum)).sum(1)
    loss = 1 - _ratio(numerator, denominator, smooth_nr, smooth_dr, eps)
    if weight is not None:
        check_tensor("weight", weight)
        check_broadcastable("weight", weight, loss.shape, "the loss's natural unit, shape")
        weight = upcast(weight)
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


@_doc
def mcc_loss(
    input: Tensor,
    target: Tensor,
    *,
    activation: str | None = "softmax",
    include_background: bool = True,
    aggregate: str = "per_sample",
    sync_stats: bool = False,
    soft_label: bool = False,
    class_weight: Tensor | None = None,
    smooth_nr: float = 0.0,
    smooth_dr: float = 1e-5,
    eps: float = 1e-7,
    absent: str = "keep",
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Matthews correlation coefficient loss, :math:`1 - MCC`, per (sample, class), on logits.

    Unlike Dice, MCC also counts true negatives. :math:`TN = V - P - T + TP` with :math:`V` the
    valid voxels. The formula and defaults follow MONAI 1.6 ``MCCLoss`` (``smooth_dr`` inside the
    square root, ``smooth_nr = 0``, and 0 where :math:`FP = FN = 0`):

    .. math::
        \ell_{nc} = 1 - \frac{TP \cdot TN - FP \cdot FN + s_{nr}}
            {\sqrt{\max((TP+FP)(TP+FN)(TN+FP)(TN+FN) + s_{dr}, \epsilon)}}

    MCC is undefined (0/0) for a class absent from the target (:math:`T = 0`: the loss is 1
    with zero gradient; ``absent="zero"`` or ``"exclude"`` removes those units) and for a class
    that fills the whole image (:math:`T = V`: :math:`TN + FP = 0`, the loss grows like
    :math:`FP \cdot V / \sqrt{s_{dr}}`, unbounded); away from those it lies in :math:`[0, 2]`.

    Args:
{ARGS}
        soft_label: Soft-label-correct :math:`TP` (floating targets).

    Shape:
{SHAPE}

{RETURNS_RAISES}

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])
        >>> losskit.mcc_loss(logits, torch.tensor([[[0, 1]]]), reduction="none")
        tensor([[0.0007, 0.0007]])

    References:
        Abhishek & Hamarneh, "Matthews Correlation Coefficient Loss for Deep Convolutional
        Networks: Application to Skin Lesion Segmentation", ISBI 2021.
    """
    stats, cw = _front(input, target, activation=activation, include_background=include_background,
                       aggregate=aggregate, sync_stats=sync_stats, absent=absent, ignore_index=ignore_index,
                       smooth_nr=smooth_nr,
                       smooth_dr=smooth_dr, eps=eps, reduction=reduction, normalizer=normalizer,
                       class_weight=class_weight, soft_label=soft_label)
    tp, fp, fn, tn = stats.tp, stats.fp, stats.fn, stats.tn
    product = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    root = (product + smooth_dr).clamp_min(eps).sqrt()
    loss = 1 - (tp * tn - fp * fn + smooth_nr) / root
    loss = torch.where((fp == 0) & (fn == 0), loss.new_zeros(()), loss)  # a perfect hard prediction
    return _finish(loss, stats, input=input, target=target, absent=absent, class_weight=cw, weight=weight,
                   reduction=reduction, normalizer=normalizer)


def dice_ce_loss(
    input: Tensor,
    target: Tensor,
    *,
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
    activation: str = "softmax",
    include_background: bool = True,
    aggregate: str = "per_sample",
    sync_stats: bool = False,
    squared: bool = False,
    class_weight: Tensor | None = None,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    eps: float = 1e-7,
    absent: str = "keep",
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Dice plus cross-entropy (the nnU-Net / MONAI ``DiceCELoss`` compound), per sample.

    .. math::
        \ell_n = \lambda_{dice} \operatorname{mean}_c \ell^{dice}_{nc}
                 + \lambda_{ce} \frac{\sum_x w_{y_x} CE_{nx}}{\sum_x w_{y_x}}

    The Dice half is :func:`dice_loss` with the same options (its class mean honours
    ``class_weight`` and ``absent``). The CE half is :func:`losskit.cross_entropy` on the logits
    (``activation="softmax"``) or :func:`losskit.binary_cross_entropy` per channel against the
    one-hot target (``activation="sigmoid"``), over **all** channels (``include_background`` acts
    on the Dice half only, as in MONAI), averaged over each sample's valid voxels. Softmax over a
    single channel is refused (its CE would silently be 0); ``activation=None`` is refused
    because CE needs logits. With ``aggregate="batch"`` the unit is ``(1,)``: pooled Dice plus the
    CE mean over every valid voxel of the batch.

    Per-sample units make ``reduction="none"`` well defined (MONAI #3917). With equal voxel counts
    and no ignored voxels, ``reduction="mean"`` equals MONAI ``DiceCELoss(softmax=True,
    to_onehot_y=True)`` with the same ``include_background``, ``squared`` (``squared_pred``),
    smoothing and ``batch``.

    Args:
        input: Logits ``(N, C, *spatial)``.
        target: Class indices or one-hot / soft labels (see :func:`dice_loss`).
        lambda_dice: Weight of the Dice half, :math:`\ge 0`.
        lambda_ce: Weight of the CE half, :math:`\ge 0`.
        activation: ``"softmax"`` or ``"sigmoid"``.
        include_background: Keep channel 0 in the Dice half.
        aggregate: ``"per_sample"`` or ``"batch"``.
        sync_stats: With ``aggregate="batch"``, also pool over the ranks of ``torch.distributed``
            (one differentiable all-reduce): every rank gets the loss of the global batch (see
            :mod:`losskit.distributed`). A no-op without a process group.
        squared: V-Net Dice denominator.
        class_weight: Per-class weights ``(C,)`` for both halves (CE: ``w_y`` weighted mean).
        smooth_nr: Dice numerator smoothing.
        smooth_dr: Dice denominator smoothing.
        eps: Floor of the Dice denominator.
        absent: Dice absent-class policy (see :func:`dice_loss`).
        ignore_index: Index-target value excluded from both halves.
        weight: Per-sample weights broadcastable to ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, C, d_1, \dots, d_k)`. - target: as :func:`dice_loss`.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (:math:`(1,)` with
          ``aggregate="batch"``, :math:`(0,)` if N = 0).

    Returns:
        The loss in the input's dtype; empty input or all voxels ignored gives 0 with a gradient.

    Raises:
        ValueError: Bad shapes, options or reduction; softmax over one channel; ``activation=None``.
        TypeError: A non-floating input or a boolean target.

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])
        >>> losskit.dice_ce_loss(logits, torch.tensor([[[0, 1]]]), reduction="none")
        tensor([0.0007])

    References:
        Isensee et al., "nnU-Net", Nature Methods 2021; MONAI ``DiceCELoss``.
    """
    from losskit.functional.classification import binary_cross_entropy, cross_entropy

    check_reduction(reduction, normalizer)
    check_number("lambda_dice", lambda_dice, low=0.0)
    check_number("lambda_ce", lambda_ce, low=0.0)
    check_one_of("absent", absent, ABSENT)
    check_one_of("aggregate", aggregate, AGGREGATES)
    _check_sync(sync_stats, aggregate)
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid' for dice_ce_loss (its CE half takes "
                         f"logits), got {activation!r}")
    _check_smoothing(smooth_nr, smooth_dr, eps)
    cw = _class_weight(class_weight, input, include_background)  # validates class_weight first
    full, dt = _stats(input, target, activation=activation, include_background=True, aggregate="per_sample",
                      ignore_index=ignore_index, squared=squared, fused_ce=activation == "softmax",
                      ce_weight=class_weight)
    stats = full.select(include_background)
    if aggregate == "batch":
        stats = stats.pooled(sync_stats)
    dice = _dice_from_stats(stats, squared, smooth_nr, smooth_dr, eps)
    unit_w = cw.expand(dice.shape) if cw is not None else torch.ones_like(dice)
    if absent == "zero":
        dice = torch.where(stats.tsum > 0, dice, dice.new_zeros(()))
    elif absent == "exclude":
        unit_w = torch.where(stats.tsum > 0, unit_w, unit_w.new_zeros(()))
    dice = (dice * unit_w).sum(1) / unit_w.sum(1).clamp_min(torch.finfo(dice.dtype).tiny)

    # CE: per-sample sum over valid voxels and its denominator.
    if full.ce is not None:
        ce_sum, ce_count = full.ce, full.ce_den
    elif activation == "softmax":
        labels = target
        if not target.is_floating_point() and target.dim() == input.dim():
            labels = target.squeeze(1)
        ce = cross_entropy(input, labels, weight=class_weight, ignore_index=-100 if ignore_index is None
                           else ignore_index, reduction="none").to(full.tp.dtype)
        ce_sum = _flat(ce, 1).sum(-1)
        if class_weight is None:
            ce_count = full.count.squeeze(1)
        else:
            w = upcast(class_weight.to(input.device))
            if dt.index is not None:
                wy = w[dt.index]
                if dt.valid is not None:
                    wy = wy * dt.valid
            else:
                wy = (dt.dense * w.view(1, -1, *([1] * (input.dim() - 2)))).sum(1)
            ce_count = _flat(wy, 1).sum(-1)
    else:
        if dt is None:  # the fused sigmoid kernel read the index labels directly
            dt = dense_target(input, target, ignore_index=ignore_index, compute_dtype=compute_dtype(input.dtype))
        labels = one_hot(dt, input.shape[1], compute_dtype(input.dtype))
        bce = binary_cross_entropy(upcast(input), labels, reduction="none")
        if dt.valid is not None:
            bce = bce * dt.valid.unsqueeze(1)
        if class_weight is not None:
            bce = bce * upcast(class_weight.to(input.device)).view(1, -1, *([1] * (input.dim() - 2)))
        ce_sum = _flat(bce, 1).sum(-1)
        ce_count = full.count.squeeze(1) * (input.shape[1] if class_weight is None else
                                           upcast(class_weight.to(input.device)).sum())
    if aggregate == "batch" and (ce_sum.shape[0] or sync_stats):
        ce_sum, ce_count = ce_sum.sum(0, keepdim=True), ce_count.sum(0, keepdim=True)
        if sync_stats:
            ce_sum, ce_count = _all_reduce_fields([ce_sum, ce_count])
    ce_mean = ce_sum / ce_count.clamp_min(torch.finfo(ce_sum.dtype).tiny)
    loss = lambda_dice * dice + lambda_ce * ce_mean
    if weight is not None:
        check_tensor("weight", weight)
        check_broadcastable("weight", weight, loss.shape, "the loss's natural unit, shape")
        weight = upcast(weight)
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


__all__ = [
    "RegionStats",
    "dice_ce_loss",
    "dice_loss",
    "focal_tversky_loss",
    "generalized_dice_loss",
    "jaccard_loss",
    "mcc_loss",
    "region_stats",
    "tversky_loss",
]
