r"""Dense-detection losses: quality-aware classification (VFL, QFL), box distributions (DFL), heatmaps.

Every loss here takes logits (never probabilities) and computes in log space (``logsigmoid``,
``log_softmax``, powers as ``exp(e log p)``), so logits of :math:`\pm 10^4` give finite values and
gradients in every floating dtype, and easy examples, whose loss the focal factors make tiny,
keep their full relative precision. float16 and bfloat16 inputs are computed in float32 and
returned in their own dtype.

Natural units (what ``reduction="none"`` returns):

* :func:`varifocal_loss`, :func:`quality_focal_loss`, :func:`gaussian_focal_loss`: elementwise,
  the input's shape (for a classification head :math:`(N, C)` or :math:`(B, A, C)`, one value
  per (anchor, class)). mmdetection sums QFL over classes per anchor first; that changes only
  the plain ``"mean"``, never ``"sum"`` or ``normalizer=`` (see :func:`quality_focal_loss`).
* :func:`distribution_focal_loss`: one value per predicted distance, ``input.shape[:-1]``
  (for box sides :math:`(N, 4)`).

Dense detectors divide by a count fixed outside the loss (positives, the sum of soft target
scores) rather than by the number of elements: pass it as ``normalizer=``. Each function's
docstring has a "to reproduce <peer>, pass ..." list, each row proved by a test in
``tests/test_detection.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as TF
from torch import Tensor

from losskit._core.checks import (
    check_bool,
    check_broadcastable,
    check_class_indices,
    check_class_vector,
    check_finite,
    check_floating,
    check_in_unit_interval,
    check_int,
    check_number,
    check_one_of,
    check_positive_values,
    check_same_device,
    check_same_shape,
    check_tensor,
    checks_enabled,
)
from losskit._core.numerics import log_softmax, upcast, weighted_log
from losskit._core.reduction import Reduction, check_reduction, reduce_loss
from losskit.functional.classification import _prepare_binary

# --- shared helpers ---------------------------------------------------------------------------


def _log_sigmoids(logits: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`(\log \sigma(x), \log \sigma(-x)) = (\log p, \log(1 - p))`, each exact in both tails."""
    return TF.logsigmoid(logits), TF.logsigmoid(-logits)


def _bce(log_p: Tensor, log_not_p: Tensor, target: Tensor) -> Tensor:
    """Elementwise BCE on logits for soft targets, to full relative precision in both tails.

    The focal-type factors here multiply BCE by tiny numbers, so its *relative* precision on
    easy examples matters: PyTorch's fused ``binary_cross_entropy_with_logits`` gives 0 for
    ``BCE(-25, 0)`` in float32 (true value 1.4e-11) and loses 7% already at -12, which also
    corrupts the gradient of the product. ``-(t log p + (1 - t) log(1 - p))`` from ``logsigmoid``
    is exact there and finite at logits of +/-1e4.
    """
    return -(target * log_p + (1 - target) * log_not_p)


def _abs_pow(d: Tensor, exponent: float) -> Tensor:
    r""":math:`|d|^e` with a finite gradient everywhere: 0 at :math:`d = 0` (1 if :math:`e = 0`).

    For :math:`e < 1` the true derivative at 0 is infinite; there the gradient is taken as 0 (the
    value sits at its minimum). The floor keeps ``pow``'s backward finite in the unused branch.
    """
    a = d.abs()
    powered = a.clamp_min(torch.finfo(a.dtype).tiny).pow(exponent)
    return torch.where(a == 0, 1.0 if exponent == 0 else 0.0, powered)  # a == 0, not a > 0: NaN stays NaN


def _finish(loss: Tensor, input: Tensor, reduction: Reduction, weight: Tensor | None,
            normalizer: float | Tensor | None, **inputs: Tensor) -> Tensor:
    return reduce_loss(loss, reduction, weight=weight, normalizer=normalizer, out_dtype=input.dtype,
                       inputs={"input": input, **inputs})


# --- quality-aware classification -------------------------------------------------------------


def _positive_labels(positives: str, label: Tensor | None, input: Tensor, dtype: torch.dtype) -> Tensor | None:
    """VFL's ``label`` in the compute dtype with ``positives="label"``; ``None`` with ``"target"``."""
    check_one_of("positives", positives, ("target", "label"))
    if positives == "target":
        if label is not None:
            raise ValueError('label= is only used with positives="label"; with positives="target" the '
                             "positives are where target > 0")
        return None
    if label is None:
        raise ValueError('positives="label" needs label=, the 0/1 class indicator with the input\'s shape')
    check_tensor("label", label)
    check_same_shape("input", input, "label", label)
    labels = label.to(dtype) if not label.is_floating_point() else upcast(label).to(dtype)
    check_in_unit_interval("label", labels)
    return labels


def varifocal_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.75,
    gamma: float = 2.0,
    positives: str = "target",
    label: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Varifocal loss (VarifocalNet): BCE toward an IoU-aware score, negatives down-weighted focally.

    The classification target of a positive is its localisation quality :math:`q` (the IoU of
    the predicted box with its ground truth), 0 for negatives. Positives are weighted by
    :math:`q` itself, so high-quality detections dominate training; negatives are weighted
    :math:`\alpha p^\gamma` as in focal loss, so the many easy ones fade out. Unlike focal loss
    the treatment is asymmetric: positives are never down-weighted by their own confidence.

    .. math::
        p = \sigma(x), \qquad
        w = \begin{cases} q & \text{positive} \\ \alpha\, p^\gamma & \text{negative} \end{cases},
        \qquad \ell = w \cdot \mathrm{BCE}(x, q)

    Which entries are positive is where the peers differ:

    * ``positives="target"`` (default, mmdetection): positive where :math:`q > 0`. It needs no
      extra tensor and is the paper's definition.
    * ``positives="label"`` (Ultralytics): a 0/1 ``label`` tensor (one-hot class indicator) and
      :math:`w = \alpha p^\gamma (1 - l) + q\, l`. A positive-class entry with :math:`q = 0`
      then gets weight 0, where mmdetection treats it as a negative with weight :math:`\alpha p^\gamma`.

    As in both peers the weight is not detached: gradients flow through :math:`p^\gamma` too.

    Args:
        input: Classification logits.
        target: IoU-aware scores :math:`q \in [0, 1]` (0 for negatives), input's shape.
        alpha: Weight :math:`\alpha \in [0, 1]` of the negatives.
        gamma: Focusing exponent :math:`\gamma \ge 0` of the negatives.
        positives: ``"target"`` (positive where :math:`q > 0`) or ``"label"`` (from ``label``).
        label: With ``positives="label"``: 0/1 (or soft) class indicators, input's shape.
        weight: Elementwise weights broadcastable to the input.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(*)`, e.g. :math:`(B, A, C)`. - target, label: as input.
        - output: scalar, or :math:`(*)` with ``reduction="none"`` (elementwise). Empty input
          gives 0 with a gradient.

    Returns:
        The loss in the input's dtype.

    Raises:
        ValueError: Shapes that differ, ``target`` or ``label`` outside :math:`[0, 1]`, a
            ``label`` missing with ``positives="label"`` or given with ``"target"``, ``alpha``
            outside :math:`[0, 1]`, ``gamma < 0``, an unknown ``positives`` or reduction.
        TypeError: A non-floating input.

    Examples:
        >>> import torch, losskit
        >>> logits, q = torch.tensor([0.0, 0.0]), torch.tensor([0.8, 0.0])
        >>> # at x = 0 BCE is ln 2 for any q: 0.8 * ln 2 and 0.75 * 0.5^2 * ln 2
        >>> losskit.varifocal_loss(logits, q, reduction="none")
        tensor([0.5545, 0.1300])

    To reproduce:
        - mmdetection ``VarifocalLoss`` (``iou_weighted=True``) with ``avg_factor=n``: the
          defaults and ``normalizer=n``.
        - Ultralytics ``VarifocalLoss`` on :math:`(B, A, C)`: ``positives="label", label=one_hot,
          reduction="mean", normalizer=A`` (its ``.mean(1).sum()``).
        - Ultralytics RT-DETR: ``alpha=0.25, gamma=1.5, positives="label", label=one_hot,
          normalizer=max(num_gts, 1)`` (``.mean(1).sum()`` divided by ``num_gts / nq``).

    References:
        Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", CVPR 2021. Defaults
        (alpha 0.75, gamma 2, positives where :math:`q > 0`) follow the paper and mmdetection.
    """
    check_reduction(reduction, normalizer)
    alpha = check_number("alpha", alpha, low=0.0, high=1.0)
    gamma = check_number("gamma", gamma, low=0.0)
    logits, q = _prepare_binary(input, target, weight)
    labels = _positive_labels(positives, label, input, logits.dtype)
    log_p, log_not_p = _log_sigmoids(logits)
    # alpha p^gamma as exp(gamma log p): exact for tiny p, gradient finite for every gamma >= 0.
    negative_weight = alpha * torch.exp(gamma * log_p)
    if labels is None:
        focal_weight = torch.where(q > 0, q, negative_weight)
    else:
        focal_weight = negative_weight * (1 - labels) + q * labels
    loss = _bce(log_p, log_not_p, q) * focal_weight
    extra = {} if label is None else {"label": label}
    return _finish(loss, input, reduction, weight, normalizer, target=target, **extra)


def quality_focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    beta: float = 2.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Quality focal loss (Generalized Focal Loss): focal loss for soft, IoU-valued targets.

    Joins classification and localisation quality in one score: the target of the ground-truth
    class of a positive is its IoU :math:`q`, every other entry's target is 0. The focal factor
    :math:`|q - p|^\beta` down-weights entries already predicted close to their (soft) target,
    so it reduces to the focal loss's :math:`p^\beta` for negatives.

    .. math::
        p = \sigma(x), \qquad \ell = |q - p|^\beta\; \mathrm{BCE}(x, q)

    :math:`q - p` is computed as :math:`q\,\sigma(-x) - (1 - q)\,\sigma(x)`, exact where
    :math:`p` rounds to 1. For :math:`\beta < 1` the factor's derivative at :math:`q = p` is
    infinite; there the gradient is taken as 0 (the factor is at its minimum), never NaN.

    Args:
        input: Classification logits.
        target: Soft scores :math:`q \in [0, 1]` (IoU at each positive's class, else 0), input's shape.
        beta: Focusing exponent :math:`\beta \ge 0`; ``beta=0`` is :func:`binary_cross_entropy`.
        weight: Elementwise weights broadcastable to the input (a per-anchor weight of shape
            :math:`(N, 1)` for an :math:`(N, C)` input).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(*)`, e.g. :math:`(N, C)`. - target: as input.
        - output: scalar, or :math:`(*)` with ``reduction="none"``: elementwise, as the
          TorchBearer/paper form. mmdetection's per-anchor value is ``reduction="none"``
          then ``.sum(-1)``. Empty input gives 0 with a gradient.

    Returns:
        The loss in the input's dtype.

    Raises:
        ValueError: Shapes that differ, targets outside :math:`[0, 1]`, ``beta < 0``, a bad reduction.
        TypeError: A non-floating input.

    Examples:
        >>> import torch, losskit
        >>> logits, q = torch.tensor([0.0, 0.0]), torch.tensor([0.9, 0.0])
        >>> # BCE(0, q) = ln 2: |0.9 - 0.5|^2 ln 2 and |0 - 0.5|^2 ln 2
        >>> losskit.quality_focal_loss(logits, q, reduction="none")
        tensor([0.1109, 0.1733])

    To reproduce:
        - mmdetection ``QualityFocalLoss`` with ``(label, score)`` targets (background index
          :math:`C`) and ``avg_factor=n``: pass ``target = one_hot(label, C + 1)[:, :C] * score[:, None]``,
          ``weight=w[:, None]`` for a per-anchor weight, and ``normalizer=n``. Its per-anchor
          ``reduction="none"`` is ours followed by ``.sum(-1)``; its plain ``"mean"`` (no
          ``avg_factor``) is ``reduction="sum"`` divided by :math:`N`, :math:`C` times ours.
        - pytorch-toolbelt ``QualityFocalLoss`` / the paper's elementwise form: the defaults.

    References:
        Li et al., "Generalized Focal Loss: Learning Qualified and Distributed Bounding Boxes
        for Dense Object Detection", NeurIPS 2020 (Eq. 5). Default beta 2 follows the paper and
        mmdetection; the elementwise unit follows the paper's formula and matches the other
        sigmoid losses, so class weights of shape :math:`(C,)` work as ``weight=``.
    """
    check_reduction(reduction, normalizer)
    beta = check_number("beta", beta, low=0.0)
    logits, q = _prepare_binary(input, target, weight)
    log_p, log_not_p = _log_sigmoids(logits)
    gap = q * torch.exp(log_not_p) - (1 - q) * torch.exp(log_p)  # q - p, exact where p rounds to 1
    loss = _bce(log_p, log_not_p, q) * _abs_pow(gap, beta)
    return _finish(loss, input, reduction, weight, normalizer, target=target)


# --- box distributions ------------------------------------------------------------------------


def _prepare_distances(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Validate DFL's inputs; return (logits, target distances) in the compute dtype."""
    check_floating("input", input)
    check_tensor("target", target)
    check_same_device("input", input, "target", target)
    if input.dim() == 0 or input.shape[-1] < 2:
        raise ValueError(f"input must hold logits over at least 2 bins in its last dimension, shape (..., n_bins), "
                         f"got shape {tuple(input.shape)}")
    if target.shape != input.shape[:-1]:
        raise ValueError(f"target must hold one distance per distribution, shape {tuple(input.shape[:-1])} "
                         f"(input's shape without its last, bins dimension), got shape {tuple(target.shape)}")
    if not target.is_floating_point():
        raise TypeError(f"target must hold floating distances in bin units, got dtype {target.dtype}")
    if checks_enabled() and target.numel() and not bool((target >= 0).all()):  # NaN fails too
        raise ValueError(f"target distances must be >= 0 (in bin units); found minimum {target.min().item():g}")
    logits = upcast(input)
    return logits, upcast(target).to(logits.dtype)


def distribution_focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    clamp_margin: float = 0.01,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Distribution focal loss (Generalized Focal Loss): a box distance as a distribution over bins.

    A box side's distance is predicted as a discrete distribution over :math:`n` bins at
    :math:`0, 1, \dots, n - 1` (its expectation is the distance). A continuous target
    :math:`y` between bins :math:`y_l = \lfloor y \rfloor` and :math:`y_r = y_l + 1` is taught
    as cross-entropy toward both neighbours, each weighted by its closeness, which focuses the
    distribution around the target and keeps its expectation there.

    .. math::
        y \leftarrow \min(y,\; n - 1 - m), \quad y_l = \lfloor y \rfloor, \quad y_r = y_l + 1

        \ell = -\big[(y_r - y) \log S_{y_l} + (y - y_l) \log S_{y_r}\big],
        \qquad S = \mathrm{softmax}(x)

    The loss is smallest, but not 0, at :math:`S_{y_l} = y_r - y, S_{y_r} = y - y_l`. Targets
    above :math:`n - 1 - m` are clamped there (both peers clamp: Ultralytics in the loss,
    mmdetection in the head). The default margin :math:`m = 0.01` reproduces Ultralytics, and
    any :math:`m > 0` keeps the optimum finite: a target of exactly :math:`n - 1` asks for all
    the mass on the last bin, which only infinite logits give. ``log_softmax`` runs once and is
    gathered twice; an integer target gives plain cross-entropy at that bin.

    Args:
        input: Logits over the bins, last dimension :math:`n \ge 2` (16 for Ultralytics'
            ``reg_max=16``, ``reg_max + 1 = 17`` for mmdetection's).
        target: Distances :math:`y \ge 0` in bin units (distance / stride), floating, shape
            ``input.shape[:-1]``.
        clamp_margin: :math:`m \in [0, 1)`; targets are clamped to :math:`[0, n - 1 - m]`.
        weight: Weights broadcastable to ``input.shape[:-1]`` (a per-box weight of shape
            :math:`(N, 1)` for :math:`(N, 4, n)` logits).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(*, n)`, e.g. :math:`(N, 4, 16)`. - target: :math:`(*)`, e.g. :math:`(N, 4)`.
        - output: scalar, or :math:`(*)` with ``reduction="none"`` (one value per distance).
          Empty input gives 0 with a gradient.

    Returns:
        The loss in the input's dtype.

    Raises:
        ValueError: Fewer than 2 bins, a target of the wrong shape, a negative (or NaN) target
            (a value check), ``clamp_margin`` outside :math:`[0, 1)`, a bad reduction.
        TypeError: A non-floating input or target.

    Examples:
        >>> import torch, losskit
        >>> logits = torch.zeros(1, 4)  # uniform over 4 bins: -log S = ln 4 everywhere
        >>> losskit.distribution_focal_loss(logits, torch.tensor([1.3]))  # 0.7 ln 4 + 0.3 ln 4
        tensor(1.3863)

    To reproduce:
        - Ultralytics ``BboxLoss`` DFL term (``reg_max=16``: 16 bins, targets clamped to 14.99,
          mean over the 4 sides, times the anchor weight :math:`w`, over ``target_scores_sum``):
          ``weight=w[:, None], normalizer=4 * target_scores_sum`` (default margin).
        - mmdetection ``DistributionFocalLoss`` in ``GFLHead`` (``reg_max=16``): give 17 bins,
          ``clamp_margin=0.1`` (its head-side clamp to 15.9), ``weight=w[:, None]`` and
          ``normalizer=4 * w.sum()`` (its ``avg_factor=4`` then division by :math:`\sum w`).

    References:
        Li et al., "Generalized Focal Loss", NeurIPS 2020 (Eq. 6). The default margin follows
        Ultralytics; the number of bins is the input's, so both peers' heads work unchanged.
    """
    check_reduction(reduction, normalizer)
    clamp_margin = check_number("clamp_margin", clamp_margin, low=0.0, high=1.0, high_open=True)
    logits, y = _prepare_distances(input, target)
    n_bins = logits.shape[-1]
    y = y.clamp(0.0, n_bins - 1 - clamp_margin)
    left = y.floor().clamp_max(n_bins - 2)  # y = n - 1 (margin 0): left bin n - 2 with weight 0
    # A NaN distance (value checks off) reads bin 0 and stays NaN through its weights below.
    left_index = left.nan_to_num(0.0).long().unsqueeze(-1)
    log_probs = log_softmax(logits, -1)
    log_left = log_probs.gather(-1, left_index).squeeze(-1)
    log_right = log_probs.gather(-1, left_index + 1).squeeze(-1)
    w_left, w_right = left + 1 - y, y - left  # a bin of weight 0 (an integer y) is not read
    loss = -(w_left * weighted_log(log_left, w_left) + w_right * weighted_log(log_right, w_right))
    return _finish(loss, input, reduction, weight, normalizer, target=target)


# --- heatmaps ---------------------------------------------------------------------------------


def gaussian_focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float = 2.0,
    gamma: float = 4.0,
    pos_threshold: float = 1.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Gaussian focal loss (CornerNet, CenterNet): focal loss on a heatmap with Gaussian-softened negatives.

    Keypoint heads predict a heatmap whose target is 1 at each object's centre (or corner) and a
    Gaussian bump around it. Only the peaks are positives; a negative near a peak is penalised
    less, by :math:`(1 - t)^\gamma`, since predicting there is almost right. Both terms carry
    the focal factor :math:`\alpha` (the papers' :math:`\alpha` is the focusing exponent,
    not a class weight).

    .. math::
        p = \sigma(x), \qquad
        \ell = \begin{cases} -(1 - p)^\alpha \log p & t \ge \tau \\
                             -(1 - t)^\gamma\, p^\alpha \log(1 - p) & t < \tau \end{cases}

    with :math:`\tau` = ``pos_threshold``, computed with ``logsigmoid`` (no epsilon).

    Args:
        input: Heatmap logits.
        target: Gaussian heatmap :math:`t \in [0, 1]`, input's shape.
        alpha: Focusing exponent :math:`\alpha \ge 0` of both terms.
        gamma: Exponent :math:`\gamma \ge 0` of the negatives' Gaussian penalty reduction.
        pos_threshold: :math:`\tau \in (0, 1]`: entries with :math:`t \ge \tau` are peaks
            (1.0: exactly the peaks, as both peers; lower it for heatmaps stored in low precision).
        weight: Elementwise weights broadcastable to the input.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
            CenterNet and mmdetection divide the sum by the number of peaks:
            ``normalizer=(target >= pos_threshold).sum().clamp_min(1)``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(*)`, e.g. :math:`(N, C, H, W)`. - target: as input.
        - output: scalar, or :math:`(*)` with ``reduction="none"`` (elementwise). Empty input
          gives 0 with a gradient.

    Returns:
        The loss in the input's dtype.

    Raises:
        ValueError: Shapes that differ, targets outside :math:`[0, 1]`, ``alpha`` or ``gamma``
            negative, ``pos_threshold`` outside :math:`(0, 1]`, a bad reduction.
        TypeError: A non-floating input.

    Examples:
        >>> import torch, losskit
        >>> logits, heat = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.5])
        >>> # peak: 0.5^2 ln 2;  negative: 0.5^4 * 0.5^2 * ln 2
        >>> losskit.gaussian_focal_loss(logits, heat, reduction="none")
        tensor([0.1733, 0.0108])

    References:
        Law and Deng, "CornerNet: Detecting Objects as Paired Keypoints", ECCV 2018 (Eq. 1);
        Zhou et al., "Objects as Points" (CenterNet), 2019. Defaults (alpha 2, gamma 4) follow
        the papers and mmdetection's ``GaussianFocalLoss``.
    """
    check_reduction(reduction, normalizer)
    alpha = check_number("alpha", alpha, low=0.0)
    gamma = check_number("gamma", gamma, low=0.0)
    check_number("pos_threshold", pos_threshold, low=0.0, high=1.0, low_open=True)
    logits, t = _prepare_binary(input, target, weight)
    log_p, log_not_p = _log_sigmoids(logits)
    peak = t >= pos_threshold
    # Each branch reads its log only where it is used: at a logit of +/-inf the unused branch is
    # infinite, and its zero gradient would be 0 * inf = NaN.
    positive = -torch.exp(alpha * log_not_p) * torch.where(peak, log_p, 0.0)
    negative = -(1 - t).pow(gamma) * torch.exp(alpha * log_p) * torch.where(peak, 0.0, log_not_p)
    loss = torch.where(peak, positive, negative)
    return _finish(loss, input, reduction, weight, normalizer, target=target)




# --- gradient harmonizing (GHM) ----------------------------------------------------------------


def _ghm_density_weights(g: Tensor, valid: Tensor, bins: int) -> Tensor:
    r"""GHM's weight :math:`\beta_i = V / (n \cdot |B(g_i)|)` of each valid element (0 elsewhere).

    :math:`g \in [0, 1]` is each element's gradient norm, :math:`B(g)` the elements of the same of
    ``bins`` equal bins, :math:`V` the valid elements (at least 1) and :math:`n` the bins that hold
    any: the weights of the valid elements average 1. The histogram is one ``scatter_add``, so no
    count crosses to the host (mmdetection loops over the bins with ``.item()``)."""
    edges = torch.arange(1, bins, dtype=g.dtype, device=g.device) / bins
    index = torch.bucketize(g, edges, right=True)  # bin i holds edges[i-1] <= g < edges[i]
    counts = torch.zeros(bins, dtype=g.dtype, device=g.device).scatter_add_(0, index.flatten(), valid.flatten())
    filled = (counts > 0).sum()
    total = valid.sum().clamp_min(1)
    share = counts[index] * filled
    return torch.where(valid > 0, total / share.clamp_min(1), 0.0)


def _ghm_valid(weight: Tensor | None, input: Tensor) -> Tensor:
    """1.0 where an element counts (``weight > 0``), as float64 (see :func:`_ghm_density_weights`)."""
    if weight is None:
        return torch.ones(input.shape, dtype=torch.float64, device=input.device)
    return (weight > 0).to(torch.float64).expand(input.shape)


def ghmc_loss(
    input: Tensor,
    target: Tensor,
    *,
    bins: int = 10,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Gradient harmonizing classification loss (GHM-C, Li et al. 2019), elementwise, on logits.

    Binary cross-entropy reweighted by the inverse density of the gradient norm
    :math:`g = |\sigma(x) - t|`: the many easy negatives (small :math:`g`) and the few outliers
    (:math:`g` near 1) each get less weight, the rare in-between examples more.

    .. math::
        \ell_i = \beta_i \operatorname{BCE}(x_i, t_i), \qquad
        \beta_i = \frac{V}{n \, |\{j \text{ valid}: g_j \in B(g_i)\}|}

    with ``bins`` equal bins :math:`B` of :math:`[0, 1]`, :math:`V` the valid elements (all, or
    those with ``weight > 0``) and :math:`n` the non-empty bins. :math:`\beta` is computed from the
    whole input without a gradient, in float64 (so the bin of an element never depends on the
    input's dtype), and with no host sync. ``reduction="mean"`` with ``weight`` of 0 and 1 (or no
    weight) is mmdetection's ``GHMC`` value :math:`\sum_i \beta_i \operatorname{BCE}_i / V`.
    mmdetection's ``momentum`` (a running average of the bin counts) is state carried between
    calls, so it is not offered: losskit losses keep no state. BCE is computed in log space
    (:func:`losskit.binary_cross_entropy`'s form).

    Args:
        input: Logits, any shape (mmdetection: :math:`(N, C)`).
        target: Binary or soft labels in :math:`[0, 1]` with the input's shape.
        bins: Number of equal bins of the gradient norm, :math:`\ge 1`.
        weight: Elementwise weights broadcastable to the input; elements of weight 0 are not
            valid (they count in no bin), the others weigh the mean.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(*)`. - target: :math:`(*)`. - output: scalar, or :math:`(*)` with ``"none"``.

    Returns:
        The loss in the input's dtype; empty input gives 0 with a gradient.

    Raises:
        ValueError: Shapes that differ, targets outside :math:`[0, 1]`, ``bins < 1``, a bad reduction.
        TypeError: A non-floating input.

    Examples:
        >>> import torch, losskit
        >>> logits, target = torch.tensor([0.0, 3.0, -3.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 0.0])
        >>> # g = 0.5, 0.047, 0.047, 0.5: two bins of 2 elements, beta = 4 / (2 * 2) = 1 each
        >>> losskit.ghmc_loss(logits, target, reduction="none")
        tensor([0.6931, 0.0486, 0.0486, 0.6931])

    References:
        Li, Liu and Wang, "Gradient Harmonized Single-stage Detector", AAAI 2019. Defaults
        (``bins=10``) follow mmdetection ``GHMC`` (``momentum=0``).
    """
    check_reduction(reduction, normalizer)
    check_int("bins", bins, low=1)
    logits, t = _prepare_binary(input, target, weight)
    log_p, log_not_p = _log_sigmoids(logits)
    with torch.no_grad():
        g = (torch.sigmoid(logits.double()) - t.double()).abs()
        beta = _ghm_density_weights(g, _ghm_valid(weight, input), bins).to(logits.dtype)
    loss = beta * _bce(log_p, log_not_p, t)
    return _finish(loss, input, reduction, weight, normalizer, target=target)


def ghmr_loss(
    input: Tensor,
    target: Tensor,
    *,
    mu: float = 0.02,
    bins: int = 10,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Gradient harmonizing regression loss (GHM-R, Li et al. 2019), elementwise.

    The authentic smooth L1 loss (ASL1) reweighted by the inverse density of its gradient norm
    :math:`g = |d| / \sqrt{d^2 + \mu^2}` (:math:`d = x - t`), with the bins and :math:`\beta` of
    :func:`ghmc_loss`:

    .. math::
        \ell_i = \beta_i \left(\sqrt{d_i^2 + \mu^2} - \mu\right)

    ASL1 is computed as :math:`d^2 / (\sqrt{d^2 + \mu^2} + \mu)`, which keeps its digits for small
    :math:`d` (the written form subtracts two numbers near :math:`\mu`). ``reduction="mean"`` with
    ``weight`` of 0 and 1 is mmdetection's ``GHMR`` value :math:`\sum_i \beta_i ASL1_i / V`
    (``momentum=0``; see :func:`ghmc_loss`).

    Args:
        input: Predicted regression values, any shape (mmdetection: box deltas :math:`(N, 4)`).
        target: Target values with the input's shape.
        mu: :math:`\mu > 0`, the ASL1 transition scale.
        bins: Number of equal bins of the gradient norm, :math:`\ge 1`.
        weight: Elementwise weights broadcastable to the input; elements of weight 0 are not valid.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(*)`. - target: :math:`(*)`. - output: scalar, or :math:`(*)` with ``"none"``.

    Returns:
        The loss in the input's dtype; empty input gives 0 with a gradient.

    Raises:
        ValueError: Shapes that differ, ``mu <= 0``, ``bins < 1``, a bad reduction.
        TypeError: A non-floating input or target.

    Examples:
        >>> import torch, losskit
        >>> pred, target = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0])
        >>> # g = 0 and 0.9998: two bins of one element, beta = 1; ASL1 = 0 and sqrt(1.0004) - 0.02
        >>> losskit.ghmr_loss(pred, target, reduction="none")
        tensor([0.0000, 0.9802])

    References:
        Li, Liu and Wang, "Gradient Harmonized Single-stage Detector", AAAI 2019. Defaults
        (``mu=0.02``, ``bins=10``) follow mmdetection ``GHMR``.
    """
    check_reduction(reduction, normalizer)
    check_number("mu", mu, low=0.0, low_open=True)
    check_int("bins", bins, low=1)
    check_floating("input", input)
    check_floating("target", target)
    check_same_shape("input", input, "target", target)
    if weight is not None:
        check_broadcastable("weight", weight, input.shape, "input, shape", input=input)
    x, t = upcast(input), upcast(target).to(upcast(input).dtype)
    d = x - t
    root = torch.sqrt(d * d + mu * mu)
    with torch.no_grad():
        d64 = x.double() - t.double()
        g = d64.abs() / torch.sqrt(d64 * d64 + mu * mu)
        beta = _ghm_density_weights(g, _ghm_valid(weight, input), bins).to(x.dtype)
    loss = beta * (d * d / (root + mu))
    return _finish(loss, input, reduction, weight, normalizer, target=target)



# --- long-tailed classification -----------------------------------------------------------------


def seesaw_loss(
    input: Tensor,
    target: Tensor,
    *,
    class_counts: Tensor,
    p: float = 0.8,
    q: float = 2.0,
    eps: float = 1e-2,
    detach_compensation: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Seesaw loss (Wang et al. 2021): softmax cross-entropy whose negative logits are rebalanced per pair of classes.

    A sample of class :math:`y` pushes down every other class :math:`j`; on long-tailed data the
    head classes push the tail ones down far more often than the reverse. Seesaw scales each
    negative class's exponential by :math:`S_{yj} = M_{yj} C_{yj}`:

    .. math::
        M_{yj} = \min\Big(1, \big(\tfrac{N_j}{N_y}\big)^p\Big), \quad
        C_{yj} = \max\Big(1, \big(\tfrac{\sigma_j}{\max(\sigma_y, \epsilon)}\big)^q\Big), \quad
        \ell = -\log \frac{e^{x_y}}{e^{x_y} + \sum_{j \ne y} S_{yj} e^{x_j}}

    :math:`N` are the cumulative sample counts per class (each at least 1) and :math:`\sigma` the
    softmax of the logits. The mitigation factor :math:`M` spares a rarer
    class :math:`j`; the compensation factor :math:`C` restores the penalty where class :math:`j`
    already scores above the true class. Everything is added in log space
    (:math:`x_j + p \min(0, \log N_j - \log N_y) + q \max(0, \log\sigma_j - \log\max(\sigma_y,
    \epsilon))`), so saturated logits stay finite.

    mmdetection's ``SeesawLoss`` accumulates :math:`N` in a buffer during ``forward`` (and adds
    an objectness head); losskit losses keep no state, so pass the counts, **including the
    current batch** as mmdetection counts them before the loss, as ``class_counts``.

    Args:
        input: Logits ``(N, C)``.
        target: Class indices ``(N,)`` in :math:`[0, C)`.
        class_counts: Cumulative samples per class, shape ``(C,)``, :math:`\ge 0`.
        p: Mitigation exponent :math:`p \ge 0` (0: off).
        q: Compensation exponent :math:`q \ge 0` (0: off).
        eps: :math:`\epsilon > 0`, the floor of the true class's score in :math:`C`.
        detach_compensation: Treat :math:`C` as a constant in backward, as mmdetection does (its
            softmax reads detached logits). The default differentiates it: the gradient of the
            value the formula states, which mmdetection's is not.
        weight: Per-sample weights broadcastable to ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count (mmdetection's
            ``avg_factor``) instead.

    Shape:
        - input: :math:`(N, C)`. - target: :math:`(N,)`. - output: scalar, or :math:`(N,)` with ``"none"``.

    Returns:
        The loss in the input's dtype; empty input gives 0 with a gradient.

    Raises:
        ValueError: Bad shapes, a class index out of range, negative counts or exponents, a bad
            reduction.
        TypeError: A non-floating input or a non-integer target.

    Examples:
        >>> import torch, losskit
        >>> logits, labels = torch.tensor([[0.0, 0.0]]), torch.tensor([0])
        >>> # class 1 has a quarter of class 0's samples: M = 0.25 ** 0.8 = 0.3299; C = 1
        >>> losskit.seesaw_loss(logits, labels, class_counts=torch.tensor([400.0, 100.0]))  # log(1.3299)
        tensor(0.2851)

    References:
        Wang et al., "Seesaw Loss for Long-Tailed Instance Segmentation", CVPR 2021. Defaults
        (``p=0.8``, ``q=2``, ``eps=1e-2``) follow mmdetection ``SeesawLoss``.
    """
    check_reduction(reduction, normalizer)
    check_number("p", p, low=0.0)
    check_number("q", q, low=0.0)
    check_number("eps", eps, low=0.0, low_open=True)
    check_bool("detach_compensation", detach_compensation)
    check_floating("input", input)
    check_tensor("target", target)
    check_same_device("input", input, "target", target)
    if input.dim() != 2 or target.shape != input.shape[:1]:
        raise ValueError(f"input must be logits (N, C) and target class indices (N,), got shapes "
                         f"{tuple(input.shape)} and {tuple(target.shape)}")
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    check_class_indices("target", target, input.shape[1], None)
    check_class_vector("class_counts", class_counts, input.shape[1], input=input)
    check_finite("class_counts", class_counts)
    check_positive_values("class_counts", class_counts, strict=False)
    if weight is not None:
        check_broadcastable("weight", weight, target.shape, "the per-sample loss, shape")
    x = upcast(input)
    labels = target.long().unsqueeze(1)
    log_scale = torch.zeros_like(x)
    if p > 0:
        log_counts = class_counts.to(x.dtype).clamp_min(1).log()
        log_scale = log_scale + p * (log_counts.unsqueeze(0) - log_counts[labels]).clamp_max(0)
    if q > 0:
        log_scores = log_softmax(x.detach() if detach_compensation else x, 1)
        own = log_scores.gather(1, labels).clamp_min(math.log(eps))
        log_scale = log_scale + q * (log_scores - own).clamp_min(0)
    # l = log(1 + sum_{j != y} S_yj e^(x_j - x_y)): softplus of a logsumexp over the other classes,
    # exact near 0 (logsumexp(all) - x_y would subtract two nearly equal numbers)
    others = x + log_scale - x.gather(1, labels)
    others = others.scatter(1, labels, -math.inf)
    loss = TF.softplus(torch.logsumexp(others, 1))
    return _finish(loss, input, reduction, weight, normalizer, target=target)



# --- equalization loss v2 ------------------------------------------------------------------------

_EQLV2_RATIO_EPS = 1e-10  # the reference's pos_grad / (neg_grad + 1e-10)


def _prepare_eqlv2(input: Tensor, target: Tensor, pos_grad: Tensor, neg_grad: Tensor,
                   weight: Tensor | None) -> int:
    """Validate EQLv2's arguments; return :math:`C`, the number of foreground classes."""
    check_floating("input", input)
    check_tensor("target", target)
    check_same_device("input", input, "target", target)
    if input.dim() != 2 or input.shape[1] < 2:
        raise ValueError(f"input must be logits (N, C + 1): C >= 1 foreground classes and the background "
                         f"(objectness) logit last, got shape {tuple(input.shape)}")
    if target.shape != input.shape[:1]:
        raise ValueError(f"target must hold one class index per sample, shape ({input.shape[0]},), got shape "
                         f"{tuple(target.shape)}")
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"target must hold integer class indices (C = {input.shape[1] - 1} is the background), "
                        f"got dtype {target.dtype}")
    num_classes = input.shape[1] - 1
    for name, sums in (("pos_grad", pos_grad), ("neg_grad", neg_grad)):
        check_class_vector(name, sums, num_classes, input=input)
    check_class_indices("target", target, num_classes + 1, None)
    for name, sums in (("pos_grad", pos_grad), ("neg_grad", neg_grad)):
        if not sums.is_floating_point():
            raise TypeError(f"{name} must hold floating gradient sums, got dtype {sums.dtype}")
        check_finite(name, sums)
        check_positive_values(name, sums, strict=False)
    if weight is not None:
        check_broadcastable("weight", weight, target.shape, "the per-sample loss, shape", input=input)
    return num_classes


def _eqlv2_class_weights(pos_grad: Tensor, neg_grad: Tensor, gamma: float, mu: float, alpha: float,
                         like: Tensor) -> tuple[Tensor, Tensor]:
    r"""The weights ``(w_pos, w_neg)`` of the :math:`C + 1` columns, in ``like``'s dtype and device.

    Computed in float64 from the :math:`C` sums (cheap: one value per class). A class with no
    statistics (both sums 0) gets weight 1 on both sides, the reference's starting ratio of 100;
    the background column always gets 1. :math:`1 - w_{neg}` is taken as :math:`\sigma(-z)`, so
    it keeps its digits where :math:`w_{neg}` rounds to 1."""
    pos = pos_grad.detach().to(like.device, torch.float64)
    neg = neg_grad.detach().to(like.device, torch.float64)
    z = gamma * (pos / (neg + _EQLV2_RATIO_EPS) - mu)
    unseen = (pos == 0) & (neg == 0)
    neg_w = torch.where(unseen, 1.0, torch.sigmoid(z))
    pos_w = 1 + alpha * torch.where(unseen, 0.0, torch.sigmoid(-z))
    one = torch.ones(1, dtype=torch.float64, device=like.device)
    return torch.cat([pos_w, one]).to(like.dtype), torch.cat([neg_w, one]).to(like.dtype)


def eqlv2_loss(
    input: Tensor,
    target: Tensor,
    *,
    pos_grad: Tensor,
    neg_grad: Tensor,
    gamma: float = 12.0,
    mu: float = 0.8,
    alpha: float = 4.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Equalization loss v2 (Tan et al. 2021): sigmoid BCE reweighted per class by its gradient balance.

    Every sample is a negative for all classes but its own, so on long-tailed data a tail class
    receives far more accumulated negative gradient than positive. EQLv2 tracks, per class
    :math:`j`, the accumulated magnitudes of its positive and negative gradients,
    :math:`P_j` and :math:`G_j` (``pos_grad``, ``neg_grad``), and weights the class's terms of
    the next batch by their ratio: classes whose positives are drowned get their negatives
    down-weighted and their positives up-weighted.

    .. math::
        r_j = \frac{P_j}{G_j + 10^{-10}}, \qquad
        w^{neg}_j = \sigma\big(\gamma\,(r_j - \mu)\big), \qquad
        w^{pos}_j = 1 + \alpha\,(1 - w^{neg}_j),

    .. math::
        \ell_i = \sum_{j=0}^{C} \big(t_{ij}\, w^{pos}_j + (1 - t_{ij})\, w^{neg}_j\big)\,
        \operatorname{BCE}(x_{ij}, t_{ij}), \qquad t_{ij} = [y_i = j].

    The logits follow the reference's layout of :math:`C + 1` columns: the :math:`C` foreground
    classes, then the background (objectness) logit, whose label is :math:`C` and whose weights
    are always 1 (it collects no statistics). A class with no statistics yet (:math:`P_j = G_j =
    0`) gets weight 1 on both sides, as the reference's first iteration. The weights are
    constants to autograd (computed in float64 from the sums, detached); BCE is taken in log
    space, finite at logits of :math:`\pm 10^4`.

    This function is pure: the statistics are arguments. :class:`losskit.EQLv2Loss` keeps them
    as buffers and adds each batch's share with its ``update`` method, which
    :func:`eqlv2_gradient_sums` computes: :math:`|\partial\,\mathrm{BCE} / \partial x_{ij}| =
    |\sigma(x_{ij}) - t_{ij}|` times the weight the loss gave that term.

    Args:
        input: Logits ``(N, C + 1)``, the background logit last.
        target: Class indices ``(N,)`` in :math:`[0, C]`; :math:`C` is the background.
        pos_grad: Accumulated positive gradient magnitudes :math:`P`, shape ``(C,)``, :math:`\ge 0`.
        neg_grad: Accumulated negative gradient magnitudes :math:`G`, shape ``(C,)``, :math:`\ge 0`.
        gamma: Slope :math:`\gamma \ge 0` of the mapping from ratio to weight.
        mu: Centre :math:`\mu` of the mapping: the ratio at which :math:`w^{neg} = 1/2`.
        alpha: Extra positive weight :math:`\alpha \ge 0` of a class with :math:`w^{neg} = 0`.
        weight: Per-sample weights broadcastable to ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``; ``"mean"`` is the reference's value
            (the sum over all terms divided by :math:`N`; the reference ignores mmdetection's
            ``label_weights`` and ``avg_factor``, which here are ``weight=`` and ``normalizer=``).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, C + 1)`. - target: :math:`(N,)`. - pos_grad, neg_grad: :math:`(C,)`.
        - output: scalar, or :math:`(N,)` with ``"none"`` (per sample, summed over the
          :math:`C + 1` columns).

    Returns:
        The loss in the input's dtype; empty input gives 0 with a gradient.

    Raises:
        ValueError: Bad shapes (input not ``(N, C + 1)`` with :math:`C \ge 1`, target not
            ``(N,)``, sums not ``(C,)``), a class index outside :math:`[0, C]`, negative or
            non-finite sums, ``gamma`` or ``alpha`` below 0, a bad reduction.
        TypeError: A non-floating input or sums, a non-integer target.

    Examples:
        >>> import torch, losskit
        >>> logits, labels = torch.zeros(1, 3), torch.tensor([0])  # C = 2 classes and background
        >>> # no statistics yet: every weight is 1, the loss is 3 ln 2
        >>> losskit.eqlv2_loss(logits, labels, pos_grad=torch.zeros(2), neg_grad=torch.zeros(2))
        tensor(2.0794)
        >>> # class 0 (the label) is balanced, r = 1: w_pos = 1 + 4 sigmoid(12 (0.8 - 1)) = 1.3327;
        >>> # class 1 saw 0.5 positive against 5 negative: r = 0.1, w_neg = sigmoid(12 (0.1 - 0.8)) = 2.2e-4;
        >>> # the background's weight is 1: (1.3327 + 0.0002 + 1) ln 2
        >>> sums = dict(pos_grad=torch.tensor([5.0, 0.5]), neg_grad=torch.tensor([5.0, 5.0]))
        >>> losskit.eqlv2_loss(logits, labels, **sums)
        tensor(1.6171)

    References:
        Tan et al., "Equalization Loss v2: A New Gradient Balance Approach for Long-tailed Object
        Detection", CVPR 2021. Defaults (``gamma=12``, ``mu=0.8``, ``alpha=4``) and the layout
        follow the authors' mmdetection ``EQLv2`` (github.com/tztztztztz/eqlv2).
    """
    check_reduction(reduction, normalizer)
    gamma = check_number("gamma", gamma, low=0.0)
    mu = check_number("mu", mu)
    alpha = check_number("alpha", alpha, low=0.0)
    _prepare_eqlv2(input, target, pos_grad, neg_grad, weight)
    x = upcast(input)
    pos_w, neg_w = _eqlv2_class_weights(pos_grad, neg_grad, gamma, mu, alpha, x)
    labels = target.long().unsqueeze(1)
    log_p, log_not_p = _log_sigmoids(x)
    # Every column a negative (-log(1 - p)), then the label's column replaced by its positive
    # term (-log p): each term computed once, exact in both tails (no cancellation).
    terms = -neg_w * log_not_p
    own = -pos_w[labels] * log_p.gather(1, labels)
    loss = terms.scatter(1, labels, own).sum(1)
    return _finish(loss, input, reduction, weight, normalizer, target=target)


def eqlv2_gradient_sums(
    input: Tensor,
    target: Tensor,
    *,
    pos_grad: Tensor,
    neg_grad: Tensor,
    gamma: float = 12.0,
    mu: float = 0.8,
    alpha: float = 4.0,
    weight: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""One batch's share of EQLv2's statistics: the weighted gradient magnitudes per class.

    .. math::
        \Delta P_j = \sum_i w_i\, t_{ij}\, w^{pos}_j\, |\sigma(x_{ij}) - 1|, \qquad
        \Delta G_j = \sum_i w_i\, (1 - t_{ij})\, w^{neg}_j\, \sigma(x_{ij}),

    for the :math:`C` foreground classes (not the background column), with the weights
    :func:`eqlv2_loss` gives the same batch for the statistics ``pos_grad``, ``neg_grad`` and
    the per-sample weights :math:`w_i` (1 without ``weight``; the reference takes none). These
    are the magnitudes of the gradient of the summed loss with respect to the logits, computed
    here in closed form (no backward hook), in float64 and without gradient. The new statistics
    are ``pos_grad + dP`` and ``neg_grad + dG``; in distributed training, sum each batch's share
    over the ranks first (the reference all-reduces it).

    Args:
        input, target, pos_grad, neg_grad, gamma, mu, alpha, weight: As :func:`eqlv2_loss`.

    Returns:
        ``(dP, dG)``, each float64 of shape ``(C,)`` on the input's device; zeros for an empty batch.

    Raises:
        ValueError, TypeError: As :func:`eqlv2_loss`.

    Examples:
        >>> import torch, losskit
        >>> logits, labels = torch.zeros(2, 3), torch.tensor([0, 2])  # a class-0 sample and a background one
        >>> # weights 1 (no statistics): |sigma(0) - t| = 0.5 for every term
        >>> losskit.eqlv2_gradient_sums(logits, labels, pos_grad=torch.zeros(2), neg_grad=torch.zeros(2))
        (tensor([0.5000, 0.0000], dtype=torch.float64), tensor([0.5000, 1.0000], dtype=torch.float64))

    References:
        Tan et al., CVPR 2021 (Eq. 4-6); the authors' ``EQLv2.collect_grad``.
    """
    gamma = check_number("gamma", gamma, low=0.0)
    mu = check_number("mu", mu)
    alpha = check_number("alpha", alpha, low=0.0)
    num_classes = _prepare_eqlv2(input, target, pos_grad, neg_grad, weight)
    with torch.no_grad():
        x = input.detach().double()
        pos_w, neg_w = _eqlv2_class_weights(pos_grad, neg_grad, gamma, mu, alpha, x)
        onehot = TF.one_hot(target.long(), num_classes + 1).to(torch.float64)
        # |sigma(x) - t|: sigma(-x) for the positive, sigma(x) for a negative; exact in both tails
        magnitude = torch.sigmoid(torch.where(onehot > 0, -x, x))
        per_sample = torch.ones_like(x[:, :1]) if weight is None else torch.broadcast_to(
            weight.detach().to(x.device, torch.float64), target.shape).unsqueeze(1)
        positive = (magnitude * onehot * per_sample).sum(0) * pos_w
        negative = (magnitude * (1 - onehot) * per_sample).sum(0) * neg_w
    return positive[:num_classes], negative[:num_classes]

__all__ = [
    "distribution_focal_loss",
    "eqlv2_gradient_sums",
    "eqlv2_loss",
    "gaussian_focal_loss",
    "ghmc_loss",
    "ghmr_loss",
    "quality_focal_loss",
    "seesaw_loss",
    "varifocal_loss",
]
