r"""The overlap losses: Dice, Jaccard, Tversky, focal Tversky, generalized Dice and MCC.

Each is a formula over the per-(sample, class) statistics of :func:`region_stats`; the shared
conventions are in :mod:`losskit.functional.segmentation`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losskit._core.checks import check_broadcastable, check_number, check_one_of, check_tensor
from losskit._core.numerics import upcast
from losskit._core.reduction import Reduction, check_reduction, reduce_for
from losskit.functional._region_stats import RegionStats
from losskit.functional.segmentation._front import (
    _check_smoothing,
    _class_weight,
    _dice_from_stats,
    _doc,
    _finish,
    _front,
    _one_minus_ratio,
    _stats,
)


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
    mask: Tensor | None = None,
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
        mask: Voxels to score, ``(N, 1, *spatial)`` or ``(N, *spatial)`` (a batch of 1 broadcasts),
            bool or 0/1: a voxel outside the mask counts in no sum, after the activation (MONAI
            ``MaskedDiceLoss``), and may hold anything. With index targets it acts as
            ``ignore_index``; MONAI's ``MaskedDiceLoss(to_onehot_y=True)`` instead labels the
            masked voxels background before the one-hot (they count as missed background), so its
            parity holds with one-hot targets.

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
                       class_weight=class_weight, squared=squared, soft_label=soft_label, mask=mask)
    loss = _dice_from_stats(stats, squared, smooth_nr, smooth_dr, eps)
    return _finish(loss, stats, input=input, target=target, absent=absent, class_weight=cw, weight=weight,
                   reduction=reduction, normalizer=normalizer)


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



__all__ = ["dice_loss", "focal_tversky_loss", "generalized_dice_loss", "jaccard_loss", "mcc_loss", "tversky_loss"]
