r"""The front end shared by the region losses: checks, the statistics (fused kernels or autograd),
the exact ratio :math:`1 - n / F`, absent-class and class-weight handling, shared docstring parts.

The conventions are described in :mod:`losskit.functional.segmentation`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losskit._core.checks import (
    check_bool,
    check_broadcastable,
    check_class_vector,
    check_in_unit_interval,
    check_number,
    check_one_of,
    check_tensor,
    checks_enabled,
)
from losskit._core.dense import DenseTarget, check_activation, dense_target, drop_background, index_labels
from losskit._core.docs import shared_docs
from losskit._core.numerics import compute_dtype, safe_divide, upcast
from losskit._core.reduction import check_reduction, reduce_loss
from losskit.functional._region_stats import (
    RegionStats,
    _flat,
    _SigmoidStats,
    _SoftmaxDenseStats,
    _SoftmaxIndexStats,
    probabilities_with_complement,
    region_stats,
)

AGGREGATES = ("per_sample", "batch")
ABSENT = ("keep", "zero", "exclude", "sample_mean")

# --- shared front end ---------------------------------------------------------------------------


def _check_sync(sync_stats: object, aggregate: str) -> None:
    if not isinstance(sync_stats, bool):
        raise TypeError(f"sync_stats must be a bool, got {type(sync_stats).__name__}")
    if sync_stats and aggregate != "batch":
        raise ValueError("sync_stats=True pools the statistics over the ranks, so it needs aggregate='batch'; "
                         f"got aggregate={aggregate!r}")


def _stats(input: Tensor, target: Tensor, *, activation: str | None, include_background: bool, aggregate: str,
           ignore_index: int | None, squared: bool = False, soft_label: bool = False,
           fused_ce: bool = False, ce_weight: Tensor | None = None, sync_stats: bool = False,
           mask: Tensor | None = None) -> tuple[RegionStats, DenseTarget | None]:
    """The statistics (pooled with ``aggregate="batch"``) and the prepared target (``None`` when a
    fused kernel read index labels directly: callers that need it call :func:`dense_target`).
    ``mask`` (see :func:`_voxel_mask`) removes voxels from every sum."""
    check_one_of("aggregate", aggregate, AGGREGATES)
    check_bool("include_background", include_background)
    _check_sync(sync_stats, aggregate)
    check_activation(input, activation)
    voxels = None if mask is None else _voxel_mask(mask, input)
    if voxels is not None and not target.is_floating_point():  # masked voxels become ignored ones
        ignore = -1 if ignore_index is None else ignore_index
        labels = index_labels(input, target, ignore_index=ignore_index)
        target, ignore_index = torch.where(voxels, labels.long(), ignore), ignore
        voxels = None
    kernel = None if voxels is not None else _fused_kernel(input, target, activation, soft_label, ce_weight)
    if kernel is not None and not target.is_floating_point():  # read chunk by chunk: no int64 copy
        index, dt = _flat(index_labels(input, target, ignore_index=ignore_index), 1), None
    else:
        index, dt = None, dense_target(input, target, ignore_index=ignore_index,
                                       compute_dtype=compute_dtype(input.dtype))
    if not include_background and input.shape[1] < 2:
        raise ValueError("include_background=False needs at least two channels (channel 0 is the background)")
    if kernel is None:
        x = _zero_ignored(input, dt)
        if voxels is not None:  # one-hot / soft targets: masked voxels count in no sum (as MONAI)
            x = torch.where(voxels.unsqueeze(1), x, 0.0)
        if activation is None:
            _check_probabilities(x)
        p, q = probabilities_with_complement(x, activation)
        if voxels is not None:
            keep = voxels.unsqueeze(1).to(p.dtype)
            p, dt = p * keep, DenseTarget(None, dt.dense * keep, None)
        stats = region_stats(p, dt, squared=squared, soft_label=soft_label, complement=q)
    else:
        labels = None if dt is None else _flat(dt.dense, 2)
        stats = _fused_stats(kernel, _flat(input, 2), index, ignore_index, labels, squared=squared,
                             with_ce=fused_ce, ce_weight=ce_weight)
    stats = stats.select(include_background)
    return (stats.pooled(sync_stats) if aggregate == "batch" else stats), dt


def _voxel_mask(mask: object, input: Tensor) -> Tensor:
    """``mask`` as a bool ``(N, *spatial)``: shape ``(N or 1, 1, *spatial)`` or ``(N or 1, *spatial)``,
    bool or 0/1 values (a value check)."""
    check_tensor("mask", mask)
    spatial = tuple(input.shape[2:])
    shape = tuple(mask.shape)
    if mask.dim() == input.dim() and shape[1] == 1:
        shape = shape[:1] + shape[2:]
    if len(shape) != len(spatial) + 1 or shape[1:] != spatial or shape[0] not in (1, input.shape[0]):
        raise ValueError(f"mask must have shape {(input.shape[0], 1, *spatial)} or {(input.shape[0], *spatial)} "
                         f"(a batch of 1 broadcasts), got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_complex():
            raise TypeError(f"mask must be bool or hold 0 and 1, got dtype {mask.dtype}")
        if checks_enabled() and not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must hold only 0 and 1 (voxels kept or left out), got other values")
    return (mask.reshape(shape) != 0).expand(input.shape[0], *spatial)


def _zero_ignored(input: Tensor, target: DenseTarget) -> Tensor:
    """``input`` with 0 at the ignored positions of ``target``, which may hold anything (NaN, inf):
    they then count in no sum and get a zero gradient."""
    return input if target.valid is None else torch.where(target.valid.unsqueeze(1), input, 0.0)


def _check_probabilities(input: Tensor) -> None:
    """Value check: with ``activation=None`` the input holds probabilities (logits would score garbage)."""
    try:
        check_in_unit_interval("input", input)
    except ValueError as error:
        raise ValueError(f"{error}: activation=None takes probabilities; pass logits with "
                         "activation='softmax' or 'sigmoid'") from None


def _fused_kernel(input: Tensor, target: Tensor, activation: str | None, soft_label: bool,
                  ce_weight: Tensor | None) -> str | None:
    """``"softmax"`` or ``"sigmoid"`` when a fused kernel computes these statistics, else ``None``."""
    if torch.compiler.is_compiling() or not isinstance(target, Tensor):  # compiled: the compiler fuses the
        return None  # plain form; not a tensor: dense_target says what is wrong
    indices = not target.is_floating_point()
    # One-hot / soft labels: none that need a gradient, no soft-label TP, no per-class CE weights.
    supported = indices or (not target.requires_grad and not soft_label)
    if activation == "softmax" and input.shape[1] > 1 and supported and (indices or ce_weight is None):
        return "softmax"
    if activation == "sigmoid" and supported:
        return "sigmoid"
    return None


def _fused_stats(kernel: str, logits: Tensor, index: Tensor | None, ignore_index: int | None,
                 labels: Tensor | None, *, squared: bool, with_ce: bool, ce_weight: Tensor | None) -> RegionStats:
    """:class:`RegionStats` of logits ``(N, C, S)`` from the fused kernel, index (N, S) or dense labels."""
    keep = torch.is_grad_enabled() and logits.requires_grad
    ce = ce_den = None
    if kernel == "sigmoid":
        tp, fp, fn, psq, sqerr, tsum, count = _SigmoidStats.apply(logits, index, ignore_index, labels, squared, keep)
    elif index is not None:
        ce_weight = None if ce_weight is None else ce_weight.to(logits.device, compute_dtype(logits.dtype))
        tp, fp, fn, psq, sqerr, tsum, count, ce, ce_den = _SoftmaxIndexStats.apply(
            logits, index, ignore_index, with_ce, ce_weight, squared, keep)
    else:
        tp, fp, fn, psq, sqerr, tsum, ce = _SoftmaxDenseStats.apply(logits, labels, with_ce, squared, keep)
    if labels is None:  # index labels: T from the kernel, and t^2 = t
        stats = RegionStats(tp, fp, fn, tsum, count)
        if squared:
            stats.psq, stats.tsq, stats.sqerr = psq, tsum, sqerr
    else:  # dense labels: their sums need no gradient (T from the kernel, read while each chunk is in cache)
        stats = RegionStats(tp, fp, fn, tsum, tp.new_full((tp.shape[0], 1), float(labels.shape[-1])))
        if squared:
            stats.psq, stats.tsq, stats.sqerr = psq, labels.square().sum(-1), sqerr
    if with_ce and ce is not None:
        stats.ce, stats.ce_den = ce, (stats.count.squeeze(1) if ce_den is None else ce_den)
    return stats


def _check_smoothing(smooth_nr: float, smooth_dr: float, eps: float) -> None:
    check_number("smooth_nr", smooth_nr, low=0.0)
    check_number("smooth_dr", smooth_dr, low=0.0)
    check_number("eps", eps, low=0.0)


def _one_minus_ratio(numerator: Tensor, complement: Tensor, smooth_nr: float, smooth_dr: float, eps: float) -> Tensor:
    r""":math:`1 - (a + s_{nr}) / \max(a + b + s_{dr}, \epsilon)` for ``numerator`` :math:`a` and its
    ``complement`` :math:`b` (the denominator minus the numerator, summed as such: :math:`FP + FN`
    for Dice), keeping every digit at both ends (:class:`_OneMinusRatio`)."""
    return _OneMinusRatio.apply(numerator, complement, smooth_nr, smooth_dr, eps)


class _OneMinusRatio(torch.autograd.Function):
    r""":math:`L = 1 - n / F` with :math:`n = a + s_{nr}`, :math:`F = \max(a + b + s_{dr}, \epsilon)`.

    The value is :math:`c / F` with :math:`c = b + s_{dr} - s_{nr} + (F - a - b - s_{dr})`: near a
    perfect score :math:`1 - n / F` subtracts two nearly equal numbers and keeps few digits (6% of
    a float32 Dice loss of 1e-6). The gradient is :math:`\partial L / \partial a = -c / F^2`,
    :math:`\partial L / \partial b = n / F^2` (:math:`-1/F` and 0 where the floor holds), each one
    product: differentiating either written form gives a difference of two nearly equal terms at
    one end (a loss near 1 or near 0). Second derivatives differentiate the same expressions.
    """

    @staticmethod
    def forward(ctx, numerator: Tensor, complement: Tensor, smooth_nr: float, smooth_dr: float,  # noqa: ANN205
                eps: float):
        ctx.save_for_backward(numerator, complement)
        ctx.constants = smooth_nr, smooth_dr, eps
        return _OneMinusRatio.parts(numerator, complement, smooth_nr, smooth_dr, eps)[0]

    @staticmethod
    def parts(numerator: Tensor, complement: Tensor, smooth_nr: float, smooth_dr: float,
              eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The value, :math:`n`, :math:`c` and :math:`F`."""
        denominator = numerator + complement + smooth_dr
        floored = denominator.clamp_min(eps)
        kept = complement + (smooth_dr - smooth_nr) + (floored - denominator)
        return kept / floored, numerator + smooth_nr, kept, floored

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN205
        numerator, complement = ctx.saved_tensors
        smooth_nr, smooth_dr, eps = ctx.constants
        _, kept_nr, kept, floored = _OneMinusRatio.parts(numerator, complement, smooth_nr, smooth_dr, eps)
        free = numerator + complement + smooth_dr >= eps  # the floor does not hold
        square = floored.square()
        g_numerator = torch.where(free, -kept / square, -1 / floored) * grad
        g_complement = torch.where(free, kept_nr / square, 0.0) * grad
        return g_numerator, g_complement, None, None, None


def _class_weight(class_weight: Tensor | None, input: Tensor, include_background: bool) -> Tensor | None:
    if class_weight is None:
        return None
    check_class_vector("class_weight", class_weight, input.shape[1], input=input)
    w = upcast(class_weight)
    return drop_background(w.unsqueeze(0), include_background).squeeze(0)


def _finish(loss: Tensor, stats: RegionStats, *, input: Tensor, target: Tensor, absent: str,
            class_weight: Tensor | None, weight: Tensor | None, reduction: str,
            normalizer: float | Tensor | None) -> Tensor:
    mask = None
    if absent == "sample_mean":
        loss, class_weight = _sample_means(loss, stats.tsum > 0, class_weight)
    elif absent != "keep":
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


def _sample_means(loss: Tensor, present: Tensor, class_weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """``absent="sample_mean"`` (kornia's ``average="macro"``): each sample's units weighted to sum
    to 1 over its present classes (``class_weight``-weighted), the absent ones to 0; a sample with
    no present class of nonzero weight becomes units of loss 1 (zero gradient) and weight 1/C, so
    every sample counts once in ``"mean"`` and the unit weights of a sample sum to 1."""
    weights = present.to(loss.dtype) if class_weight is None else torch.where(present, class_weight, 0.0)
    total = weights.sum(1, keepdim=True)
    empty = total == 0
    share = torch.where(empty, safe_divide(1.0, loss.shape[1]), weights / torch.where(empty, 1.0, total))
    return torch.where(empty, 1.0, torch.where(weights > 0, loss, 0.0)), share


def _front(input, target, *, activation, include_background, aggregate, absent, ignore_index, smooth_nr,
           smooth_dr, eps, reduction, normalizer, class_weight, squared=False, soft_label=False, sync_stats=False,
           mask=None):
    check_reduction(reduction, normalizer)
    check_one_of("absent", absent, ABSENT)
    _check_smoothing(smooth_nr, smooth_dr, eps)
    stats, _ = _stats(input, target, activation=activation, include_background=include_background,
                      aggregate=aggregate, ignore_index=ignore_index, squared=squared, soft_label=soft_label,
                      sync_stats=sync_stats, mask=mask)
    cw = _class_weight(class_weight, input, include_background)
    return stats, cw


_COMMON_ARGS = r"""
        input: Logits ``(N, C, *spatial)`` (probabilities in ``[0, 1]`` with ``activation=None``, a
            value check).
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
        absent: ``"keep"`` | ``"zero"`` | ``"exclude"`` | ``"sample_mean"``: units whose target is
            empty (``T = 0``) keep the formula's value, are set to 0 but counted, are left out of
            the mean, or are left out of their sample's mean, every sample counting once (one
            with no present class scores 1; see the module docstring).
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
        ``absent`` is ``"zero"`` or ``"exclude"`` (unsmoothed, an empty unit scores 1 under
        ``"keep"``; ``"sample_mean"`` scores such a sample 1).

    Raises:
        ValueError: Shapes that do not match, a class index out of range, a bad option or
            reduction, softmax over one channel, probabilities outside ``[0, 1]`` with
            ``activation=None``, a non-finite result (naming the input; NaN or infinity at
            ignored voxels changes nothing).
        TypeError: A non-floating input or a boolean target."""


_doc = shared_docs(ARGS=_COMMON_ARGS, SHAPE=_SHAPE, RETURNS_RAISES=_RETURNS_RAISES)


def _dice_from_stats(stats: RegionStats, squared: bool, smooth_nr: float, smooth_dr: float, eps: float) -> Tensor:
    # P + T - 2 TP = FP + FN; sum p^2 + sum t^2 - 2 TP = sum (p - t)^2
    complement = stats.sqerr if squared else stats.fp + stats.fn
    return _one_minus_ratio(2 * stats.tp, complement, smooth_nr, smooth_dr, eps)
