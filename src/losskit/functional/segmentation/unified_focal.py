r"""The asymmetric unified focal loss (Yeung et al. 2022): an asymmetric focal cross-entropy plus an
asymmetric focal Tversky loss, one value per sample.

"Asymmetric" means the background (channel 0) and the foreground classes (channels 1..) are treated
differently: the focal modulation suppresses only the background's easy voxels in the cross-entropy,
and the focal exponent enhances only the foreground classes' Tversky losses, so rare foreground
structures are never down-weighted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losskit._core.checks import check_bool, check_floating, check_number, check_one_of
from losskit._core.dense import DenseTarget, index_labels
from losskit._core.numerics import log_softmax, upcast
from losskit._core.reduction import Reduction, check_reduction
from losskit.functional._region_stats import _flat
from losskit.functional.segmentation._front import AGGREGATES, _check_smoothing, _one_minus_ratio, _stats
from losskit.functional.segmentation.compound import _compound


def _check_options(lambda_focal: float, delta: float, gamma: float, activation: object, aggregate: str,
                   focal_class_mean: bool) -> None:
    check_number("lambda_focal", lambda_focal, low=0.0, high=1.0)
    check_number("delta", delta, low=0.0, high=1.0)
    check_number("gamma", gamma, low=0.0)
    if gamma > 1 and lambda_focal < 1:
        raise ValueError(f"gamma must be in [0, 1] while the Tversky half counts (lambda_focal < 1): its "
                         f"foreground exponent 1 - gamma would be negative, got gamma={gamma}")
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid' for asymmetric_unified_focal_loss (its "
                         f"focal half takes logits), got {activation!r}")
    check_one_of("aggregate", aggregate, AGGREGATES)
    check_bool("focal_class_mean", focal_class_mean)


def _two_channels(input: Tensor, target: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    """Logits over background and foreground for a softmax: one sigmoid logit ``x`` becomes ``(0, x)``
    (whose softmax is ``(sigmoid(-x), sigmoid(x))``) and a floating binary target ``t`` becomes
    ``(1 - t, t)``; softmax logits are returned as they are, in the compute dtype."""
    x = upcast(input)
    if activation == "softmax":
        return x, target
    if input.dim() < 2 or input.shape[1] != 1:
        raise ValueError("activation='sigmoid' takes one foreground logit per voxel, input of shape "
                         f"(N, 1, *spatial); got {tuple(input.shape)} (use activation='softmax' for C >= 2 channels)")
    x = torch.cat([torch.zeros_like(x), x], 1)
    if isinstance(target, Tensor) and target.is_floating_point() and target.shape == input.shape:
        target = torch.cat([1 - target, target], 1)
    return x, target


def _focal_tversky_half(stats, delta: float, gamma: float, smooth_nr: float, smooth_dr: float,
                        eps: float) -> Tensor:
    r"""Each sample's (or the pooled batch's) class mean of :math:`1 - TI_0` and :math:`(1 - TI_c)^{1-\gamma}`."""
    base = _one_minus_ratio(stats.tp, delta * stats.fn + (1 - delta) * stats.fp, smooth_nr, smooth_dr, eps)
    fore = base[:, 1:]
    floor = torch.finfo(base.dtype).tiny
    # floored base: a finite gradient at a perfect match (exponent below 1); base * 0 keeps NaN NaN
    fore = torch.where(fore > floor, fore.clamp_min(floor).pow(1.0 - gamma), fore * 0)
    return torch.cat([base[:, :1], fore], 1).mean(1)


def _focal_half(logits: Tensor, target: Tensor, dt: DenseTarget | None, ignore_index: int | None, delta: float,
                gamma: float) -> tuple[Tensor, Tensor]:
    r"""Each sample's sum of the asymmetric focal term over its valid voxels, and their number, ``(N,)``:
    :math:`(1-\delta)(1 - p_0)^\gamma (-\log p_0)` at background voxels, :math:`\delta (-\log p_y)` at
    foreground ones, with :math:`\log p` the exact log-softmax and :math:`1 - p_0 = -\operatorname{expm1}(\log p_0)`."""
    x = _flat(logits, 2)
    if target.is_floating_point():
        labels, valid = _flat(dt.dense, 2), None
    else:
        index = _flat(index_labels(logits, target, ignore_index=ignore_index), 1).long()
        valid = None if ignore_index is None else index != ignore_index
        if valid is not None:  # ignored voxels may hold anything: they count nowhere, gradient 0
            index, x = torch.where(valid, index, 0), torch.where(valid.unsqueeze(1), x, 0.0)
    nll = -log_softmax(x, 1)
    # Terms of unlabelled channels are masked before any product: a -inf logit (probability 0) there
    # makes an infinite -log p that must give neither an infinite value nor a NaN gradient.
    if target.is_floating_point():
        fore = torch.where(labels[:, 1:] > 0, labels[:, 1:] * nll[:, 1:], 0.0).sum(1)
        per_voxel = _background(nll[:, 0], labels[:, 0] > 0, delta, gamma) * labels[:, 0] + delta * fore
        return per_voxel.sum(-1), per_voxel.new_full((x.shape[0],), float(x.shape[-1]))
    background = index == 0
    per_voxel = torch.where(background, _background(nll[:, 0], background, delta, gamma),
                            delta * nll.gather(1, index.unsqueeze(1)).squeeze(1))
    if valid is None:
        return per_voxel.sum(-1), per_voxel.new_full((x.shape[0],), float(x.shape[-1]))
    return torch.where(valid, per_voxel, 0.0).sum(-1), valid.sum(-1).to(per_voxel.dtype)


def _background(nll: Tensor, labelled: Tensor, delta: float, gamma: float) -> Tensor:
    r""":math:`(1 - \delta)(1 - p_0)^\gamma (-\log p_0)` where ``labelled``, 0 elsewhere, from :math:`-\log p_0`."""
    nll = torch.where(labelled, nll, 0.0)
    miss = -torch.expm1(-nll)  # 1 - p_0 to full relative precision
    # floored: (1 - p0)^gamma has an infinite slope at 0 for gamma < 1, where the term's true slope is 0
    return (1 - delta) * miss.clamp_min(torch.finfo(miss.dtype).tiny).pow(gamma) * nll


def asymmetric_unified_focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    lambda_focal: float = 0.5,
    delta: float = 0.6,
    gamma: float = 0.5,
    activation: str = "softmax",
    aggregate: str = "per_sample",
    focal_class_mean: bool = False,
    smooth_nr: float = 1e-7,
    smooth_dr: float = 1e-7,
    eps: float = 1e-7,
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Asymmetric unified focal loss (Yeung et al. 2022), per sample, on logits.

    A compound of a focal cross-entropy and a focal Tversky loss that treats the background
    (channel 0) and the foreground classes (channels 1..) differently: easy background voxels are
    down-weighted in the cross-entropy, the foreground's Tversky losses are raised to
    :math:`1 - \gamma < 1` (enhanced where small), and no foreground term is ever suppressed.

    .. math::
        \ell_n = \lambda\, \frac{1}{V_n} \sum_x f_x + (1 - \lambda)\, \frac{1}{C} \Big[(1 - TI_{n0})
            + \sum_{c \ge 1} (1 - TI_{nc})^{1 - \gamma}\Big]

    .. math::
        f_x = \begin{cases} (1 - \delta)\,(1 - p_{0x})^\gamma\, (-\log p_{0x}) & y_x = 0 \\
                            \delta\, (-\log p_{y_x x}) & y_x \ge 1 \end{cases}, \qquad
        TI_{nc} = \frac{TP + s_{nr}}{\max(TP + \delta\, FN + (1 - \delta)\, FP + s_{dr}, \epsilon)}

    :math:`V_n` is the sample's number of valid voxels (with ``focal_class_mean=True``,
    :math:`C V_n`: MONAI's mean over the stacked per-class terms). ``delta`` weighs the foreground in
    the cross-entropy and false negatives in the Tversky index (:math:`\delta > 0.5` favours
    recall); one ``gamma`` sets both the background suppression and the foreground enhancement.
    Multi-class input generalizes the paper's binary form: channel 0 is the background and every
    other channel a foreground class. Both halves come from the logits: :math:`\log p` is an exact
    log-softmax, :math:`1 - p_0` is :math:`-\operatorname{expm1}(\log p_0)`, and :math:`1 - TI` is
    computed as :math:`(\delta FN + (1-\delta) FP) / (\dots)` from FP and FN summed as such, so a
    near-converged loss keeps its digits in float32. For the binary case with one logit,
    ``activation="sigmoid"`` uses :math:`(p_0, p_1) = (\sigma(-x), \sigma(x))`. Floating one-hot /
    soft targets weight each channel's term by its label.

    Defaults follow the authors' code (``asym_unified_focal_loss(weight=0.5, delta=0.6, gamma=0.5)``,
    which sums the focal term over the classes as in the paper's formula). MONAI 1.6's
    ``AsymmetricUnifiedFocalLoss`` differs: it takes probabilities (its docstring says logits, but
    it applies no activation, and clamps them to :math:`[10^{-7}, 1 - 10^{-7}]`, so saturated
    voxels get no gradient), averages the focal term over the classes too (half the paper's value
    for two classes), uses ``delta=0.7`` and only channels 0 and 1 whatever ``num_classes``, and
    returns a scalar even with ``reduction="none"``. With two channels (or one sigmoid logit),
    probabilities inside its clamp and no ignored voxels, ``reduction="mean"`` here equals MONAI's
    value on the probabilities with ``delta=0.7, focal_class_mean=True``. ``lambda_focal=1`` is
    the asymmetric focal loss alone (MONAI ``AsymmetricFocalLoss``, ``gamma`` up to any value),
    ``lambda_focal=0`` the asymmetric focal Tversky loss (MONAI ``AsymmetricFocalTverskyLoss``).

    Args:
        input: Logits ``(N, C, *spatial)`` with :math:`C \ge 2` (softmax), or ``(N, 1, *spatial)``
            with ``activation="sigmoid"`` (binary).
        target: Class indices ``(N, *spatial)`` / ``(N, 1, *spatial)`` (integer, never expanded to
            one-hot), or one-hot / soft labels with the input's shape (floating; a binary mask with
            ``activation="sigmoid"``).
        lambda_focal: :math:`\lambda \in [0, 1]`, the focal half's share (MONAI's ``weight``).
        delta: :math:`\delta \in [0, 1]`: foreground weight in the focal half, false-negative
            weight in the Tversky half.
        gamma: :math:`\gamma \ge 0`: background focal exponent and foreground Tversky enhancement
            :math:`1 - \gamma`; at most 1 unless ``lambda_focal=1``.
        activation: ``"softmax"`` (over dim 1) or ``"sigmoid"`` (one channel).
        aggregate: ``"per_sample"`` or ``"batch"`` (Tversky statistics and focal sums pooled over
            the batch first).
        focal_class_mean: Divide the focal half by the number of classes as well (MONAI).
        smooth_nr: Added to the Tversky numerator (MONAI's and the authors' ``epsilon``).
        smooth_dr: Added to the Tversky denominator.
        eps: Floor of the Tversky denominator (after ``smooth_dr``).
        ignore_index: Index-target value whose voxels count in neither half (their input may hold
            anything).
        weight: Per-sample weights broadcastable to ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, C, d_1, \dots, d_k)`. - target: as above.
        - output: scalar, or :math:`(N,)` with ``reduction="none"``: the natural unit is one value
          per sample (:math:`(1,)` with ``aggregate="batch"``, :math:`(0,)` if N = 0).

    Returns:
        The loss in the input's dtype; empty input gives 0 with a gradient.

    Raises:
        ValueError: Bad shapes, options or reduction; softmax over one channel, sigmoid over more
            than one; ``gamma > 1`` with ``lambda_focal < 1``; a class index out of range; a
            non-finite result.
        TypeError: A non-floating input or a boolean target.

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])  # background, then foreground
        >>> losskit.asymmetric_unified_focal_loss(logits, torch.tensor([[[0, 1]]]), reduction="none")
        tensor([0.0047])

    References:
        Yeung, Sala, Schönlieb and Rundo, "Unified Focal loss: Generalising Dice and cross
        entropy-based losses to handle class imbalanced medical image segmentation", Computerized
        Medical Imaging and Graphics 95, 2022; the authors' code (github.com/mlyg/unified-focal-loss);
        MONAI ``AsymmetricUnifiedFocalLoss``.
    """
    check_reduction(reduction, normalizer)
    _check_options(lambda_focal, delta, gamma, activation, aggregate, focal_class_mean)
    _check_smoothing(smooth_nr, smooth_dr, eps)
    check_floating("input", input)
    if input.dim() < 3:
        raise ValueError(f"input must have shape (N, C, *spatial), got {tuple(input.shape)}")
    logits, target2 = _two_channels(input, target, activation)
    stats, dt = _stats(logits, target2, activation="softmax", include_background=True, aggregate=aggregate,
                       ignore_index=ignore_index)
    tversky = _focal_tversky_half(stats, delta, gamma, smooth_nr, smooth_dr, eps)
    focal_sum, focal_count = _focal_half(logits, target2, dt, ignore_index, delta, gamma)
    if focal_class_mean:
        focal_count = focal_count * logits.shape[1]
    return _compound(tversky, focal_sum, focal_count, lambda_region=1 - lambda_focal, lambda_focal=lambda_focal,
                     aggregate=aggregate, sync_stats=False, input=input, target=target, weight=weight,
                     reduction=reduction, normalizer=normalizer)


__all__ = ["asymmetric_unified_focal_loss"]
