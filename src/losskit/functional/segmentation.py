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
  temporaries of about one chunk of voxels (2 MB on a CPU, 64 MB on a GPU; autograd through the
  formula keeps the probabilities, a one-hot target and products: about three times as much).
  They serve ``activation="softmax"`` and ``"sigmoid"`` with index or one-hot / soft targets,
  ``squared`` too, and Dice+CE's cross-entropy. Index labels are read in their own integer
  dtype, chunk by chunk, so no int64 copy of the label map is made either; half and bfloat16
  logits are read the same way and computed in float32, with no float32 copy of the logits
  (backward recomputes each chunk's activation and writes the gradient, rounded once, in the
  logits' dtype). ``soft_label=True``, targets that require a gradient, ``activation=None``,
  Dice+CE with ``class_weight`` and one-hot / soft targets, and code being traced by
  ``torch.compile`` (which fuses the plain form itself) use plain autograd: the same values and
  gradients, not the same memory.
* **Absent classes** (``T = 0`` for that unit): ``absent="keep"`` (default) uses the formula as
  is, so a false positive on an empty class costs nearly 1 and an empty prediction nearly 0;
  ``absent="zero"`` sets those units to 0 but keeps them in the mean (SMP);
  ``absent="exclude"`` drops them from the mean; ``absent="sample_mean"`` drops them from their
  sample's mean and counts every sample once (kornia 0.9.0 ``average="macro"``): the units of a
  sample get weights summing to 1 over its present classes (times ``class_weight``), so
  ``reduction="none"`` summed over classes is each sample's loss, and a sample with no present
  class of nonzero weight (every voxel ignored, say) scores 1 with zero gradient.
* **Accuracy.** The statistics and the formulas keep their digits where a loss is small: see
  :mod:`losskit.functional._region_stats` (float32 and half precision are tested against
  float64 near convergence, with saturated logits, on 160k-voxel images and at one positive in
  1e5).

To reproduce a peer (each row is proved by a test: MONAI and kornia live in
``tests/test_segmentation.py``, SMP 0.6.0 golden vectors in ``tests/test_golden_smp.py``):

* MONAI ``DiceLoss(softmax=True, to_onehot_y=True)``: the defaults (``include_background``,
  ``aggregate="batch"`` for ``batch=True``, ``squared=True`` for ``squared_pred=True``). MONAI's
  ``weight=w`` is ``class_weight=w, reduction="none"`` then ``.mean()`` (MONAI takes a plain mean
  of the weighted units; losskit's ``"mean"`` is the weighted mean). ``jaccard=True`` is
  :func:`jaccard_loss` with half the smoothing (``smooth_nr = smooth_dr = s / 2``).
* MONAI ``TverskyLoss``, ``GeneralizedDiceLoss`` (``absent="max"``), ``DiceCELoss``, ``MCCLoss``:
  the same options under the same names (``weight_type`` for ``w_type``).
* MONAI floors no denominator: with ``smooth_dr`` below ``1e-7`` add ``eps=0`` (losskit's floor
  ``eps=1e-7`` changes nothing while ``smooth_dr >= 1e-7``; with ``smooth_nr = smooth_dr = 1e-8``
  a generalized Dice whose class weights are all 0 scores 0.9 instead of MONAI's exact 0).
* SMP ``DiceLoss`` / ``JaccardLoss`` / ``TverskyLoss`` (``from_logits=True``):
  ``aggregate="batch", smooth_nr=0, smooth_dr=0, eps=1e-7, absent="zero"``, with
  ``activation="softmax"`` (multiclass) or ``"sigmoid"`` (binary, multilabel). SMP's focal
  Tversky (``gamma=g`` on the class mean) is ``tversky_loss(...) ** g``, not
  :func:`focal_tversky_loss`.
* SMP ``MCCLoss(eps=e)`` (binary, probabilities in): ``mcc_loss(activation=None,
  aggregate="batch", smooth_nr=0, smooth_dr=0, eps=0, smooth_counts=e)``; ``e`` is added to each
  confusion count, so a perfect prediction scores about 1e-6, not MONAI's exact 0.
* kornia 0.9.0 ``dice_loss(average="macro", weight=w)`` / ``tversky_loss``: ``smooth_nr=0,
  smooth_dr=1e-8, eps=0, absent="sample_mean"`` (``class_weight=w``).
* kornia 0.9.0 ``dice_loss(average="micro", weight=w)`` (classes pooled):
  ``generalized_dice_loss(weight_type="uniform", class_weight=w, smooth_nr=0, smooth_dr=1e-8,
  eps=0)``.
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
)
from losskit._core.dense import DenseTarget, check_activation, dense_target, drop_background, index_labels, one_hot
from losskit._core.docs import shared_docs
from losskit._core.numerics import compute_dtype, safe_divide, upcast
from losskit._core.reduction import Reduction, check_reduction, reduce_for, reduce_loss
from losskit.functional._region_stats import (
    RegionStats,
    _all_reduce_fields,
    _flat,
    _SigmoidStats,
    _SoftmaxDenseStats,
    _SoftmaxIndexStats,
    probabilities_with_complement,
    region_stats,
)
from losskit.functional.classification import binary_cross_entropy, cross_entropy

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
           fused_ce: bool = False, ce_weight: Tensor | None = None,
           sync_stats: bool = False) -> tuple[RegionStats, DenseTarget | None]:
    """The statistics (pooled with ``aggregate="batch"``) and the prepared target (``None`` when a
    fused kernel read index labels directly: callers that need it call :func:`dense_target`)."""
    check_one_of("aggregate", aggregate, AGGREGATES)
    check_bool("include_background", include_background)
    _check_sync(sync_stats, aggregate)
    check_activation(input, activation)
    kernel = _fused_kernel(input, target, activation, soft_label, ce_weight)
    if kernel is not None and not target.is_floating_point():  # read chunk by chunk: no int64 copy
        index, dt = _flat(index_labels(input, target, ignore_index=ignore_index), 1), None
    else:
        index, dt = None, dense_target(input, target, ignore_index=ignore_index,
                                       compute_dtype=compute_dtype(input.dtype))
    if not include_background and input.shape[1] < 2:
        raise ValueError("include_background=False needs at least two channels (channel 0 is the background)")
    if kernel is None:
        x = _zero_ignored(input, dt)
        if activation is None:
            _check_probabilities(x)
        p, q = probabilities_with_complement(x, activation)
        stats = region_stats(p, dt, squared=squared, soft_label=soft_label, complement=q)
    else:
        labels = None if dt is None else _flat(dt.dense, 2)
        stats = _fused_stats(kernel, _flat(input, 2), index, ignore_index, labels, squared=squared,
                             with_ce=fused_ce, ce_weight=ce_weight)
    stats = stats.select(include_background)
    return (stats.pooled(sync_stats) if aggregate == "batch" else stats), dt


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
        tp, fp, fn, psq, sqerr, ce = _SoftmaxDenseStats.apply(logits, labels, with_ce, squared, keep)
    if labels is None:  # index labels: T from the kernel, and t^2 = t
        stats = RegionStats(tp, fp, fn, tsum, count)
        if squared:
            stats.psq, stats.tsq, stats.sqerr = psq, tsum, sqerr
    else:  # dense labels: their sums need no gradient
        stats = RegionStats(tp, fp, fn, labels.sum(-1), tp.new_full((tp.shape[0], 1), float(labels.shape[-1])))
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
    check_class_vector("class_weight", class_weight, input.shape[1])
    w = upcast(class_weight.to(input.device))
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
    # P + T - 2 TP = FP + FN; sum p^2 + sum t^2 - 2 TP = sum (p - t)^2
    complement = stats.sqerr if squared else stats.fp + stats.fn
    return _one_minus_ratio(2 * stats.tp, complement, smooth_nr, smooth_dr, eps)


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
    loss = _one_minus_ratio(stats.tp, stats.fp + stats.fn, smooth_nr, smooth_dr, eps)
    return _finish(loss, stats, input=input, target=target, absent=absent, class_weight=cw, weight=weight,
                   reduction=reduction, normalizer=normalizer)


def _one_minus_tversky(stats: RegionStats, alpha: float, beta: float, smooth_nr: float, smooth_dr: float,
                       eps: float) -> Tensor:
    return _one_minus_ratio(stats.tp, alpha * stats.fp + beta * stats.fn, smooth_nr, smooth_dr, eps)


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
    loss = _one_minus_tversky(stats, alpha, beta, smooth_nr, smooth_dr, eps)
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
    base = _one_minus_tversky(stats, alpha, beta, smooth_nr, smooth_dr, eps)
    floor = torch.finfo(base.dtype).tiny
    # base * 0: an exact match gives 0 with a zero gradient, and NaN stays NaN (never a silent 0)
    loss = torch.where(base > floor, base.clamp_min(floor).pow(1.0 / gamma), base * 0)
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
    class_weight: Tensor | None = None,
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
        class_weight: Per-class factors ``(C,)`` (background included) on :math:`w_c`; with
            ``weight_type="uniform"`` they are the class weights of a class-pooled Dice (kornia's
            ``average="micro"`` with ``weight``).
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
    cw = _class_weight(class_weight, input, include_background)
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
    if cw is not None:
        w = w * cw
    numerator = 2 * (w * stats.tp).sum(1)
    complement = (w * (stats.fp + stats.fn)).sum(1)  # sum_c w_c (P_c + T_c) - numerator
    loss = _one_minus_ratio(numerator, complement, smooth_nr, smooth_dr, eps)
    if weight is not None:
        check_tensor("weight", weight)
        check_broadcastable("weight", weight, loss.shape, "the loss's natural unit, shape")
        weight = upcast(weight)
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


def _one_minus_mcc(stats: RegionStats, smooth_nr: float, smooth_dr: float, eps: float,
                   smooth_counts: float) -> Tensor:
    r""":math:`1 - (a d - b c + s_{nr}) / r` with :math:`a, b, c, d = TP, FP, FN, TN` (each plus
    ``smooth_counts``) and :math:`r = \sqrt{\max((a+b)(a+c)(d+b)(d+c) + s_{dr}, \epsilon)}`; 0
    where :math:`b = c = 0`.

    Near a perfect score (numerator :math:`u = ad - bc + s_{nr} > 0`) it is
    :math:`(r^2 - u^2) / (r (r + u))`, with :math:`r^2 - u^2` expanded into terms that each hold
    :math:`b` or :math:`c`: :math:`(a+b)(a+c)(d+b)(d+c) - (ad - bc)^2 = (ad + bc)(a + d)(b + c)
    + (ac + bd)(ab + cd) + 4abcd`, so no two large numbers are subtracted.
    """
    a, b, c, d = (x + smooth_counts for x in (stats.tp, stats.fp, stats.fn, stats.tn))
    product = (a + b) * (a + c) * (d + b) * (d + c)
    shifted = product + smooth_dr
    squared_root = shifted.clamp_min(eps)
    root = squared_root.sqrt()
    numerator = a * d - b * c + smooth_nr
    gap = (a * d + b * c) * (a + d) * (b + c) + (a * c + b * d) * (a * b + c * d) + 4 * a * b * c * d
    difference = gap + smooth_dr + (squared_root - shifted) - smooth_nr * (2 * (a * d - b * c) + smooth_nr)
    near = difference / (root + numerator.clamp_min(0))  # root - numerator, where numerator > 0
    loss = torch.where(numerator > 0, near, root - numerator) / root
    return torch.where((b == 0) & (c == 0), loss.new_zeros(()), loss)  # a perfect hard prediction


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
    smooth_counts: float = 0.0,
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
        smooth_counts: Added to each of :math:`TP, FP, FN, TN` before the formula, as
            segmentation-models-pytorch's ``MCCLoss(eps=e)``; a perfect prediction then scores
            slightly above 0 (and an empty target predicted empty about 0.5).

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
    check_number("smooth_counts", smooth_counts, low=0.0)
    loss = _one_minus_mcc(stats, smooth_nr, smooth_dr, eps, smooth_counts)
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
    elif absent == "sample_mean":
        dice, unit_w = _sample_means(dice, stats.tsum > 0, cw)
    dice = (dice * unit_w).sum(1) / unit_w.sum(1).clamp_min(torch.finfo(dice.dtype).tiny)

    # CE: per-sample sum over valid voxels and its denominator.
    if full.ce is not None:
        ce_sum, ce_count = full.ce, full.ce_den
    elif activation == "softmax":
        labels = target
        if not target.is_floating_point() and target.dim() == input.dim():
            labels = target.squeeze(1)
        ce = cross_entropy(_zero_ignored(input, dt), labels, weight=class_weight,
                           ignore_index=-100 if ignore_index is None else ignore_index,
                           reduction="none").to(full.tp.dtype)
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
        bce = binary_cross_entropy(upcast(_zero_ignored(input, dt)), labels, reduction="none")
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
