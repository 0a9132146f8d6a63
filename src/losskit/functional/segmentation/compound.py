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
from losskit._core.dense import DenseTarget, dense_target, index_labels, one_hot
from losskit._core.numerics import compute_dtype, upcast
from losskit._core.reduction import Reduction, check_reduction, reduce_for
from losskit.functional._region_stats import RegionStats, _all_reduce_fields, _flat
from losskit.functional.classification import binary_cross_entropy, cross_entropy
from losskit.functional.segmentation._focal import dense_focal_sums, focal_sums
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
from losskit.functional.segmentation.overlap import generalized_dice_loss


def _dice_class_mean(stats: RegionStats, cw: Tensor | None, absent: str, squared: bool, smooth_nr: float,
                     smooth_dr: float, eps: float) -> Tensor:
    """Each sample's (or the pooled batch's) Dice over its classes: the ``class_weight``-weighted mean
    under the ``absent`` policy of :func:`losskit.dice_loss`, shape ``(N,)``."""
    dice = _dice_from_stats(stats, squared, smooth_nr, smooth_dr, eps)
    unit_w = cw.expand(dice.shape) if cw is not None else torch.ones_like(dice)
    if absent == "zero":
        dice = torch.where(stats.tsum > 0, dice, dice.new_zeros(()))
    elif absent == "exclude":
        unit_w = torch.where(stats.tsum > 0, unit_w, unit_w.new_zeros(()))
    elif absent == "sample_mean":
        dice, unit_w = _sample_means(dice, stats.tsum > 0, cw)
    return (dice * unit_w).sum(1) / unit_w.sum(1).clamp_min(torch.finfo(dice.dtype).tiny)


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
    dice = _dice_class_mean(stats, cw, absent, squared, smooth_nr, smooth_dr, eps)

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




# --- Dice + focal -------------------------------------------------------------------------------


def _check_focal(gamma: float, alpha: float | None, activation: object, name: str) -> None:
    check_number("gamma", gamma, low=0.0)
    if alpha is not None:
        check_number("alpha", alpha, low=0.0, high=1.0)
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid' for {name} (its focal half takes logits), "
                         f"got {activation!r}")


def _focal_half(input: Tensor, target: Tensor, dt: DenseTarget | None, *, include_background: bool,
                ignore_index: int | None, gamma: float, alpha: float | None,
                channel_weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """Each sample's weighted focal sum over its kept channels and valid voxels, and the weighted number
    of (channel, voxel) pairs it sums, both ``(N,)``."""
    logits, first = _flat(input, 2), 0 if include_background else 1
    if target.is_floating_point():
        dense = dt.dense if dt is not None else dense_target(input, target, ignore_index=None,
                                                              compute_dtype=compute_dtype(input.dtype)).dense
        sums = dense_focal_sums(logits, _flat(dense, 2), first=first, gamma=gamma, alpha=alpha)
        voxels = sums.new_full((input.shape[0],), float(logits.shape[-1]))
    else:
        labels = _flat(index_labels(input, target, ignore_index=ignore_index), 1)
        sums = focal_sums(logits, labels, first=first, ignore_index=ignore_index, gamma=gamma, alpha=alpha)
        voxels = (sums.new_full((input.shape[0],), float(labels.shape[-1])) if ignore_index is None
                  else (labels != ignore_index).sum(-1).to(sums.dtype))
    if channel_weight is None:
        return sums.sum(1), voxels * sums.shape[1]
    return (sums * channel_weight).sum(1), voxels * channel_weight.sum()


def _one_rounding(input: Tensor) -> Tensor:
    """Half and bfloat16 logits as a float32 copy: each half writes its own gradient, and their sum
    is then rounded to the input's dtype once (the float32 copy's backward), not three times."""
    return upcast(input)


def _compound(region: Tensor, focal_sum: Tensor, focal_count: Tensor, *, lambda_region: float,
              lambda_focal: float, aggregate: str, sync_stats: bool, input: Tensor, target: Tensor,
              weight: Tensor | None, reduction: str, normalizer: float | Tensor | None) -> Tensor:
    """``lambda_region * region + lambda_focal * focal mean`` per sample (pooled with ``"batch"``), reduced."""
    if aggregate == "batch" and (focal_sum.shape[0] or sync_stats):
        focal_sum, focal_count = focal_sum.sum(0, keepdim=True), focal_count.sum(0, keepdim=True)
        if sync_stats:
            focal_sum, focal_count = _all_reduce_fields([focal_sum, focal_count])
    focal = focal_sum / focal_count.clamp_min(torch.finfo(focal_sum.dtype).tiny)
    loss = lambda_region * region + lambda_focal * focal
    if weight is not None:
        check_tensor("weight", weight)
        check_broadcastable("weight", weight, loss.shape, "the loss's natural unit, shape")
        weight = upcast(weight)
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


def dice_focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    lambda_dice: float = 1.0,
    lambda_focal: float = 1.0,
    gamma: float = 2.0,
    alpha: float | None = None,
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
    r"""Dice plus sigmoid focal loss (MONAI ``DiceFocalLoss``), per sample, from index labels.

    .. math::
        \ell_n = \lambda_{dice} \operatorname{mean}_c \ell^{dice}_{nc}
            + \lambda_{focal} \frac{\sum_{c, x} w_c f_{ncx}}{V_n \sum_c w_c}, \qquad
        f = \alpha_t (1 - p_t)^\gamma (-\log p_t), \quad p = \sigma(x_{ncx})

    The Dice half is :func:`dice_loss` with the same options (``activation`` is its activation).
    The focal half is, as in MONAI, a **sigmoid** focal loss of every kept channel against the
    one-hot target (``include_background=False`` drops channel 0 from both halves), averaged over
    the channels and each sample's :math:`V_n` valid voxels; :math:`\alpha_t = \alpha` at the
    labelled channel and :math:`1 - \alpha` elsewhere (no factor with ``alpha=None``, MONAI's
    default). Index labels are never expanded to one-hot: both halves read them chunk by chunk and
    keep no activation for backward, so a forward and backward pass needs about the gradient's
    memory plus a chunk (see ``benchmarks/bench_dice_focal.py``). Half and bfloat16 logits are
    copied to float32 once, so the two halves' gradients are summed before the one rounding.

    With equal voxel counts, no ignored voxels and no class weights, ``reduction="mean"`` equals
    MONAI 1.6 ``DiceFocalLoss(softmax=True, to_onehot_y=True)`` (``sigmoid=True`` for
    ``activation="sigmoid"``) with the same ``gamma``, ``alpha``, ``include_background``,
    ``squared`` (``squared_pred``), smoothing and ``batch``. ``class_weight`` weighs both halves
    as weighted means over the classes; MONAI's ``weight`` takes plain means of weighted terms.

    Args:
        input: Logits ``(N, C, *spatial)``.
        target: Class indices ``(N, *spatial)`` / ``(N, 1, *spatial)`` or one-hot / soft labels with
            the input's shape (the focal factor then interpolates linearly in the label).
        lambda_dice: Weight of the Dice half, :math:`\ge 0`.
        lambda_focal: Weight of the focal half, :math:`\ge 0`.
        gamma: Focusing exponent :math:`\gamma \ge 0` (0 gives binary cross-entropy).
        alpha: Weight of the labelled channel in :math:`[0, 1]`, or ``None``.
        activation: The Dice half's ``"softmax"`` or ``"sigmoid"``.
        include_background: Keep channel 0 in both halves.
        aggregate: ``"per_sample"`` or ``"batch"`` (Dice statistics and focal sums pooled).
        sync_stats: With ``aggregate="batch"``, also pool over the ranks of ``torch.distributed``.
        squared: V-Net Dice denominator.
        class_weight: Per-class weights ``(C,)`` (background included) for both halves.
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
        ValueError: Bad shapes, options or reduction; softmax over one channel; ``activation=None``;
            a non-finite result.
        TypeError: A non-floating input or a boolean target.

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])
        >>> # Dice 0.0003; focal: every f = sigmoid(-4)^2 * softplus(-4) = 3.2e-4 * 0.0181
        >>> losskit.dice_focal_loss(logits, torch.tensor([[[0, 1]]]), reduction="none")
        tensor([0.0003])

    References:
        Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017; Zhu et al., "AnatomyNet",
        Medical Physics 2019 (Dice + focal). Defaults follow MONAI ``DiceFocalLoss``.
    """
    check_reduction(reduction, normalizer)
    check_number("lambda_dice", lambda_dice, low=0.0)
    check_number("lambda_focal", lambda_focal, low=0.0)
    _check_focal(gamma, alpha, activation, "dice_focal_loss")
    check_one_of("absent", absent, ABSENT)
    check_one_of("aggregate", aggregate, AGGREGATES)
    _check_sync(sync_stats, aggregate)
    _check_smoothing(smooth_nr, smooth_dr, eps)
    cw = _class_weight(class_weight, input, include_background)
    logits = _one_rounding(input)
    full, dt = _stats(logits, target, activation=activation, include_background=include_background,
                      aggregate="per_sample", ignore_index=ignore_index, squared=squared)
    stats = full.pooled(sync_stats) if aggregate == "batch" else full
    dice = _dice_class_mean(stats, cw, absent, squared, smooth_nr, smooth_dr, eps)
    focal_sum, focal_count = _focal_half(logits, target, dt, include_background=include_background,
                                         ignore_index=ignore_index, gamma=gamma, alpha=alpha, channel_weight=cw)
    return _compound(dice, focal_sum, focal_count, lambda_region=lambda_dice, lambda_focal=lambda_focal,
                     aggregate=aggregate, sync_stats=sync_stats, input=input, target=target, weight=weight,
                     reduction=reduction, normalizer=normalizer)


def generalized_dice_focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    lambda_gdl: float = 1.0,
    lambda_focal: float = 1.0,
    gamma: float = 2.0,
    alpha: float | None = None,
    activation: str = "softmax",
    include_background: bool = True,
    aggregate: str = "per_sample",
    sync_stats: bool = False,
    weight_type: str = "square",
    absent: str = "max",
    class_weight: Tensor | None = None,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    eps: float = 1e-7,
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Generalized Dice plus sigmoid focal loss (MONAI ``GeneralizedDiceFocalLoss``), per sample.

    .. math::
        \ell_n = \lambda_{gdl}\, \ell^{gdl}_n
            + \lambda_{focal} \frac{\sum_{c, x} w_c f_{ncx}}{V_n \sum_c w_c}

    The first half is :func:`generalized_dice_loss` (``weight_type``, ``absent``, smoothing), the
    focal half that of :func:`dice_focal_loss`. With equal voxel counts, no ignored voxels and no
    class weights, ``reduction="mean"`` equals MONAI 1.6 ``GeneralizedDiceFocalLoss(softmax=True,
    to_onehot_y=True)`` with the same ``w_type``, ``gamma``, ``include_background``, smoothing and
    ``batch``. ``class_weight`` multiplies the generalized-Dice class weights and weighs the focal
    mean (MONAI's ``weight`` reaches its focal half only, as a plain mean of weighted terms).

    Args:
        input: Logits ``(N, C, *spatial)``.
        target: Class indices or one-hot / soft labels (see :func:`dice_loss`).
        lambda_gdl: Weight of the generalized-Dice half, :math:`\ge 0`.
        lambda_focal: Weight of the focal half, :math:`\ge 0`.
        gamma: Focusing exponent :math:`\gamma \ge 0`.
        alpha: Weight of the labelled channel in :math:`[0, 1]`, or ``None``.
        activation: The generalized Dice half's ``"softmax"`` or ``"sigmoid"``.
        include_background: Keep channel 0 in both halves.
        aggregate: ``"per_sample"`` or ``"batch"``.
        sync_stats: With ``aggregate="batch"``, also pool over the ranks of ``torch.distributed``.
        weight_type: ``"square"`` | ``"simple"`` | ``"uniform"`` (see :func:`generalized_dice_loss`).
        absent: ``"max"`` | ``"zero"`` (see :func:`generalized_dice_loss`).
        class_weight: Per-class factors ``(C,)`` (background included) for both halves.
        smooth_nr: Numerator smoothing.
        smooth_dr: Denominator smoothing.
        eps: Floor of the denominator.
        ignore_index: Index-target value excluded from both halves.
        weight: Per-sample weights broadcastable to ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, C, d_1, \dots, d_k)`. - target: as :func:`dice_loss`.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (:math:`(1,)` with
          ``aggregate="batch"``, :math:`(0,)` if N = 0).

    Returns:
        The loss in the input's dtype; empty input gives 0 with a gradient.

    Raises:
        ValueError: Bad shapes, options or reduction; softmax over one channel; ``activation=None``;
            a non-finite result.
        TypeError: A non-floating input or a boolean target.

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])
        >>> losskit.generalized_dice_focal_loss(logits, torch.tensor([[[0, 1]]]), reduction="none")
        tensor([0.0003])

    References:
        Sudre et al., "Generalised Dice overlap as a deep learning loss function for highly
        unbalanced segmentations", DLMIA 2017; Lin et al., ICCV 2017. Defaults follow MONAI
        ``GeneralizedDiceFocalLoss``.
    """
    check_reduction(reduction, normalizer)
    check_number("lambda_gdl", lambda_gdl, low=0.0)
    check_number("lambda_focal", lambda_focal, low=0.0)
    _check_focal(gamma, alpha, activation, "generalized_dice_focal_loss")
    logits = _one_rounding(input)
    gdl = generalized_dice_loss(logits, target, activation=activation, include_background=include_background,
                                aggregate=aggregate, sync_stats=sync_stats, weight_type=weight_type, absent=absent,
                                class_weight=class_weight, smooth_nr=smooth_nr, smooth_dr=smooth_dr, eps=eps,
                                ignore_index=ignore_index, reduction="none")
    cw = _class_weight(class_weight, input, include_background)
    focal_sum, focal_count = _focal_half(logits, target, None, include_background=include_background,
                                         ignore_index=ignore_index, gamma=gamma, alpha=alpha, channel_weight=cw)
    return _compound(gdl, focal_sum, focal_count, lambda_region=lambda_gdl, lambda_focal=lambda_focal,
                     aggregate=aggregate, sync_stats=sync_stats, input=input, target=target, weight=weight,
                     reduction=reduction, normalizer=normalizer)


__all__ = ["dice_ce_loss", "dice_focal_loss", "generalized_dice_focal_loss"]
