r"""Compound region losses: a region (overlap) term plus a voxel-wise term, one value per sample.

The region half shares every convention of :mod:`losskit.functional.segmentation` (activation,
index labels read without a one-hot copy, ``include_background``, ``aggregate``, smoothing,
``absent``); the voxel half is averaged over each sample's valid voxels, so ``reduction="none"``
gives one value per sample.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losskit._core.checks import check_broadcastable, check_number, check_one_of, check_tensor
from losskit._core.dense import dense_target, one_hot
from losskit._core.numerics import compute_dtype, upcast
from losskit._core.reduction import Reduction, check_reduction, reduce_for
from losskit.functional._region_stats import _all_reduce_fields, _flat
from losskit.functional.classification import binary_cross_entropy, cross_entropy
from losskit.functional.segmentation._front import (
    ABSENT,
    AGGREGATES,
    _check_smoothing,
    _check_sync,
    _class_weight,
    _dice_from_stats,
    _sample_means,
    _stats,
    _zero_ignored,
)


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


__all__ = ["dice_ce_loss"]
