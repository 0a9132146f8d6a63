"""Distance-map and skeleton segmentation losses: boundary (Kervadec), Hausdorff-DT (Karimi), clDice (Shit).

All three take logits ``(N, C, *spatial)`` with ``activation="softmax" | "sigmoid" | None`` and
class-index or one-hot / soft targets, prepared by :mod:`losskit._core.dense`; their natural unit
is one value per (sample, class). The distance maps come from :mod:`losskit.segmentation`: exact,
batched and computed in torch on the input's device, without gradient (they are functions of
binary masks). ``include_background`` defaults to ``False`` for all three: channel 0 is dropped
after the activation, as in the reference code of Kervadec et al. and Shit et al. and in MONAI's
HausdorffDTLoss (MONAI's BoundaryLoss and SoftclDiceLoss default to ``True``).

To reproduce MONAI 1.6.1 (``softmax=True, to_onehot_y=True`` in MONAI; losskit's defaults
otherwise):

=======================================  ======================================================================
MONAI 1.6.1                              losskit
=======================================  ======================================================================
``BoundaryLoss()``                       ``boundary_loss(x, t, include_background=True)``
``BoundaryLoss(batch=True)``             ``boundary_loss(x, t, include_background=True, aggregate="batch")``
``HausdorffDTLoss(alpha=a)``             ``hausdorff_dt_loss(x, t, alpha=a)``
``HausdorffDTLoss(batch=True)``          ``hausdorff_dt_loss(x, t, aggregate="batch")``
``LogHausdorffDTLoss(reduction="none")`` ``hausdorff_dt_loss(x, t, log=True, reduction="none")``
``LogHausdorffDTLoss()``                 ``torch.log1p(hausdorff_dt_loss(x, t))`` (the log of the mean)
``SoftclDiceLoss()``                     ``cldice_loss(x, t, include_background=True, pool_classes=True)``
=======================================  ======================================================================

MONAI returns ``(N, C', 1, ..., 1)`` for the Hausdorff-DT losses with ``reduction="none"`` and
``(C',)`` for ``BoundaryLoss(batch=True, reduction="none")``; losskit's units are ``(N, C')`` and
``(1, C')``. ``ignore_index`` (index targets) has no MONAI counterpart; see each docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from losskit._core.checks import check_bool, check_int, check_number, check_one_of, check_tensor
from losskit._core.dense import dense_target, drop_background, miss, probabilities_and_misses
from losskit._core.docs import shared_docs
from losskit._core.numerics import compute_dtype, ignored_without_gradient, safe_divide
from losskit._core.reduction import Reduction, check_reduction, reduce_for
from losskit.functional.segmentation import AGGREGATES
from losskit.segmentation import inside_outside_distances, signed_distance_map, soft_skeleton

__all__ = ["boundary_loss", "cldice_loss", "hausdorff_dt_loss"]


@dataclass
class _Dense:
    """Probabilities and labels ``(N, C', *spatial)``, the ignore mask, and how units are pooled."""

    probs: Tensor
    misses: Tensor  # 1 - probs, each to full precision
    labels: Tensor  # 0 for every class at ignored voxels
    valid: Tensor | None  # (N, 1, *spatial) bool, False where ignored; None when nothing is ignored
    pooled: bool  # aggregate="batch" on a non-empty batch (an empty one stays (0, ...), as RegionStats.pooled)

    def masked(self, x: Tensor) -> Tensor:
        """``x`` with every ignored voxel set to 0, whatever it held."""
        return x if self.valid is None else torch.where(self.valid, x, x.new_zeros(()))

    def sum(self, x: Tensor, *, classes: bool = False) -> Tensor:
        """Sum over the valid voxels: ``(N, C')`` (``(N,)`` with ``classes``), ``(1, ...)`` when pooled."""
        total = self.masked(x).sum(tuple(range(1 if classes else 2, x.dim())))
        return total.sum(0, keepdim=True) if self.pooled else total

    def count(self, dtype: torch.dtype, *, classes: bool = False) -> Tensor:
        """Valid voxels per unit, broadcastable to :meth:`sum` (needs ``valid``)."""
        return self.sum(self.valid.to(dtype), classes=classes)

    def mean(self, x: Tensor) -> Tensor:
        """Mean over the valid voxels of each unit; 0 (with a gradient) for a unit without any."""
        if self.valid is None and not self.pooled:
            return _per_unit_mean(x)
        if self.valid is None:
            return safe_divide(self.sum(x), x.shape[0] * math.prod(x.shape[2:]))
        return self.sum(x) / self.count(x.dtype).clamp_min(torch.finfo(x.dtype).tiny)


def _prepare(input: Tensor, target: Tensor, *, activation: str | None, include_background: bool, aggregate: str,
             ignore_index: int | None, reduction: str, normalizer: object) -> _Dense:
    """Validate the options; probabilities and float labels, background dropped when asked."""
    check_reduction(reduction, normalizer)
    check_bool("include_background", include_background)
    check_one_of("aggregate", aggregate, AGGREGATES)
    # The target first: it checks that input is floating (integer logits have no softmax).
    prepared = dense_target(input, target, ignore_index=ignore_index, compute_dtype=compute_dtype(input.dtype))
    valid = None if prepared.valid is None else prepared.valid.unsqueeze(1)
    # Ignored voxels may hold NaN: their gradient is 0.
    probs, misses = probabilities_and_misses(ignored_without_gradient(input, valid), activation)
    num_classes = input.shape[1]
    probs, misses = drop_background(probs, include_background), drop_background(misses, include_background)
    if prepared.dense is not None:
        labels = drop_background(prepared.dense, include_background)
    else:
        first = 0 if include_background else 1
        classes = torch.arange(first, num_classes, device=input.device)
        classes = classes.view(1, -1, *([1] * (input.dim() - 2)))
        hits = prepared.index.unsqueeze(1) == classes
        labels = (hits if valid is None else hits & valid).to(probs.dtype)  # ignored: no class at all
    return _Dense(probs, misses, labels, valid, aggregate == "batch" and input.shape[0] > 0)


def _per_unit_mean(x: Tensor) -> Tensor:
    """Mean over the spatial dims: ``(N, C', *spatial) -> (N, C')``."""
    # Without voxels the sum of nothing, 0, still connected to x so that backward works.
    return x.flatten(2).mean(-1) if x.shape[2:].numel() else x.flatten(2).sum(-1)


_MASKED_MEAN = r"""
    With ``ignore_index``, an ignored voxel is "not this class" in every mask the maps are computed
    from (on the full grid), it contributes to no sum, and the mean runs over the sample's valid
    voxels :math:`v_n(x) \in \{0, 1\}` (over the batch's with ``aggregate="batch"``):

    .. math::

        \ell_{n,c} = \frac{\sum_x v_n(x)\, f_{n,c}(x)}{\max\left(\sum_x v_n(x),\ \tau\right)},\qquad
        \ell_{c}^{\text{batch}} = \frac{\sum_n \sum_x v_n(x)\, f_{n,c}(x)}{\max\left(\sum_n \sum_x v_n(x),\ \tau\right)}

    with :math:`f` the summand above and ``tau = torch.finfo(dtype).tiny``. The logits of ignored
    voxels neither change the loss nor get a gradient, and a sample with every voxel ignored
    gives 0 (a unit that still counts in ``"mean"``; give it ``weight=0`` to leave it out). With
    nothing ignored and samples of one size, the batch mean is the mean of the per-sample values
    (MONAI's ``batch=True``)."""

_doc = shared_docs(MASKED_MEAN=_MASKED_MEAN)


@_doc
def boundary_loss(
    input: Tensor,
    target: Tensor,
    *,
    activation: str | None = "softmax",
    include_background: bool = False,
    aggregate: str = "per_sample",
    ignore_index: int | None = None,
    distance_map: Tensor | None = None,
    spacing: float | Sequence[float] | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Kervadec's boundary loss: the mean of ``p_c * phi_c``, with ``phi_c`` the target's signed distance map.

    The map is negative inside class ``c`` and grows with the distance outside it, so the loss
    rewards probability deep inside the object and penalises probability far from it: a
    region-integral form of a distance between the predicted and true boundaries, which stays
    informative for very small structures where region overlaps (Dice) are tiny. It is not
    non-negative; it is usually combined with a region loss (``losskit.build("dice + 0.01*boundary")``).

    .. math::

        \\ell_{n,c} = \\frac{1}{|\\Omega|} \\sum_{x \\in \\Omega} p_{n,c}(x)\\, \\phi_{n,c}(x),\\qquad
        \\phi = \\text{signed\\_distance\\_map}(t_{n,c} > 0.5)

    with :func:`losskit.segmentation.signed_distance_map` (``-(d - 1)`` inside, ``+d`` outside, 0
    for a class absent from the sample or filling it). The map is computed without gradient, in
    torch, on the input's device; pass ``distance_map=`` to use maps precomputed offline (for
    instance on whole volumes, with their voxel spacing, before cropping patches: a patch's own
    map is wrong near its border and for patches without foreground).

{MASKED_MEAN}

    Args:
        input: Logits ``(N, C, *spatial)`` (probabilities with ``activation=None``).
        target: Class indices ``(N, *spatial)`` or ``(N, 1, *spatial)``, or one-hot / soft labels
            with ``input``'s shape (thresholded at 0.5 for the map).
        activation: ``"softmax"`` (default) over dim 1, ``"sigmoid"``, or ``None``.
        include_background: Keep channel 0. Default ``False``, as Kervadec et al.'s code (which
            applies the loss to the foreground classes); MONAI 1.6.1 ``BoundaryLoss`` defaults to ``True``.
        aggregate: ``"per_sample"`` (default; one mean per sample and class) or ``"batch"`` (one
            mean per class over every valid voxel of the batch; MONAI's ``batch=True``).
        ignore_index: Index-target value whose voxels count in no sum and in no mean (index
            targets only; mask one-hot targets with ``weight=`` instead).
        distance_map: Precomputed signed maps, ``(N, C, *spatial)`` (channel 0 is dropped when
            ``include_background=False``) or already ``(N, C', *spatial)``; used as given, detached.
            With ``ignore_index`` their values at ignored voxels are not read.
        spacing: Voxel size for the maps computed here (ignored with ``distance_map``).
        weight: Weights broadcastable to the natural unit (e.g. one per kept class, ``(C',)``).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this instead.

    Shape:
        ``reduction="none"``: ``(N, C')``, one value per (sample, kept class), where
        ``C' = C - 1`` unless ``include_background``; ``(1, C')`` with ``aggregate="batch"``
        (``(0, C')`` if N = 0; MONAI returns ``(C',)``).

    Returns:
        The loss in the input's dtype. Empty input, or a sample with every voxel ignored, gives 0
        with a gradient.

    Raises:
        ValueError: Bad shapes (naming ``input``, ``target`` or ``distance_map``) or options
            (``aggregate``; ``ignore_index`` with a floating target).
        TypeError: Non-tensor or integer ``input``/``distance_map``, a non-int ``ignore_index``.

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[[[4.0, 4.0, -4.0, -4.0]], [[-4.0, -4.0, 4.0, 4.0]]]])  # (1, 2, 1, 4)
        >>> target = torch.tensor([[[0, 0, 1, 1]]])
        >>> # class 1's signed distance map is [2, 1, 0, -1], its probabilities about [0, 0, 1, 1]:
        >>> losskit.boundary_loss(logits, target)  # mean(p * phi) = (3 * 0.000335 - 0.99966) / 4
        tensor(-0.2497)
        >>> # The first voxel ignored: the same map, averaged over the 3 valid voxels:
        >>> losskit.boundary_loss(logits, torch.tensor([[[-1, 0, 1, 1]]]), ignore_index=-1)
        tensor(-0.3331)

    References:
        Kervadec et al., "Boundary loss for highly unbalanced segmentation", MIDL 2019; Medical
        Image Analysis 67 (2021). MONAI 1.6.1 ``BoundaryLoss`` computes the same map (and, with
        ``include_background=True``, the same loss) with scipy in a Python loop over samples and classes.
    """
    d = _prepare(input, target, activation=activation, include_background=include_background,
                 aggregate=aggregate, ignore_index=ignore_index, reduction=reduction, normalizer=normalizer)
    if distance_map is None:
        with torch.no_grad():
            mask = (d.labels > 0.5).flatten(0, 1)
            phi = signed_distance_map(mask, spacing=spacing, dtype=torch.float64 if d.probs.dtype == torch.float64
                                      else torch.float32).view(d.probs.shape).to(d.probs.dtype)
    else:
        phi = _given_map(distance_map, input, d.probs)
    loss = d.mean(d.probs * d.masked(phi))  # masking phi too keeps anything it holds there out of the gradient
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


def _given_map(distance_map: Tensor, input: Tensor, probs: Tensor) -> Tensor:
    """A precomputed ``distance_map`` checked, detached and cut to the kept channels."""
    check_tensor("distance_map", distance_map)
    if not distance_map.is_floating_point():
        raise TypeError(f"distance_map must be a floating-point tensor, got dtype {distance_map.dtype}")
    allowed = {tuple(input.shape), tuple(probs.shape)}
    if tuple(distance_map.shape) not in allowed:
        raise ValueError(f"distance_map must have input's shape {tuple(input.shape)} or, without the "
                         f"background channel, {tuple(probs.shape)}; got {tuple(distance_map.shape)}")
    phi = distance_map.detach().to(probs.dtype)
    return phi if phi.shape == probs.shape else phi[:, 1:]


@_doc
def hausdorff_dt_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float = 2.0,
    log: bool = False,
    activation: str | None = "softmax",
    include_background: bool = False,
    aggregate: str = "per_sample",
    ignore_index: int | None = None,
    spacing: float | Sequence[float] | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Karimi and Salcudean's Hausdorff-distance loss from distance transforms (HD-DT).

    The squared error between probability and label is weighted by how far each voxel lies from
    the predicted and the true boundaries, so errors far from either boundary (the ones that make
    the Hausdorff distance large) dominate.

    .. math::

        \\ell_{n,c} = \\frac{1}{|\\Omega|} \\sum_{x} (p(x) - t(x))^2 \\left(d_p(x)^\\alpha + d_t(x)^\\alpha\\right)

    where ``d_m = edt(m) + edt(~m)`` is each voxel's distance to the other side of mask ``m``'s
    boundary (to the nearest background voxel inside, to the nearest foreground voxel outside),
    for ``m = p > 0.5`` (the thresholded prediction) and ``m = t > 0.5``; ``d_m = 0`` when ``m`` is
    empty or full. Both maps are computed without gradient. This is exactly MONAI 1.6.1
    ``HausdorffDTLoss.distance_field`` (per (sample, class)). ``log=True`` returns
    :math:`\\log(1 + \\ell)` per natural unit (MONAI's ``LogHausdorffDTLoss`` with ``reduction="none"``).

{MASKED_MEAN}
    Here that means both masks: an ignored voxel is outside ``t > 0.5`` and outside the thresholded
    prediction ``p > 0.5`` whatever ``p`` is there, so its logits cannot move the maps either.

    Args:
        input: Logits ``(N, C, *spatial)`` (probabilities with ``activation=None``).
        target: Class indices ``(N, *spatial)`` or ``(N, 1, *spatial)``, or one-hot / soft labels
            with ``input``'s shape.
        alpha: Exponent of the distances, >= 0 (default 2, as the paper and MONAI).
        log: Return ``log1p`` of each natural unit (default ``False``). MONAI's
            ``LogHausdorffDTLoss()`` with its default ``reduction="mean"`` takes the log *after*
            averaging: that is ``torch.log1p(hausdorff_dt_loss(x, t))``, not ``log=True``.
        activation: ``"softmax"`` (default) over dim 1, ``"sigmoid"``, or ``None``.
        include_background: Keep channel 0 (default ``False``, as MONAI).
        aggregate: ``"per_sample"`` (default) or ``"batch"`` (one mean per class over every valid
            voxel of the batch; MONAI's ``batch=True``).
        ignore_index: Index-target value whose voxels count in no sum and in no mean (index
            targets only).
        spacing: Voxel size for the distance transforms (default 1).
        weight: Weights broadcastable to the natural unit.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this instead.

    Shape:
        ``reduction="none"``: ``(N, C')`` (MONAI returns ``(N, C', 1, ..., 1)``); ``(1, C')`` with
        ``aggregate="batch"`` (``(0, C')`` if N = 0).

    Returns:
        The loss in the input's dtype, >= 0. Empty input, or a sample with every voxel ignored,
        gives 0 with a gradient.

    Raises:
        ValueError: Bad shapes or options (``alpha``, ``aggregate``; ``ignore_index`` with a
            floating target), naming the argument.
        TypeError: A non-bool ``log``, a non-int ``ignore_index``.

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[[[4.0, 4.0, -4.0, -4.0]], [[-4.0, -4.0, 4.0, 4.0]]]])
        >>> losskit.hausdorff_dt_loss(logits, torch.tensor([[[0, 0, 1, 1]]]))  # (p - t)^2 ~ 1e-7
        tensor(5.6230e-07)
        >>> x = torch.randn(2, 3, 8, 8); t = torch.randint(3, (2, 8, 8))
        >>> losskit.hausdorff_dt_loss(x, t, aggregate="batch", log=True, reduction="none").shape
        torch.Size([1, 2])

    References:
        Karimi and Salcudean, "Reducing the Hausdorff Distance in Medical Image Segmentation with
        Convolutional Neural Networks", IEEE TMI 39(2), 2019. MONAI 1.6.1 ``HausdorffDTLoss`` and
        ``LogHausdorffDTLoss``.
    """
    alpha = check_number("alpha", alpha, low=0.0)
    check_bool("log", log)
    d = _prepare(input, target, activation=activation, include_background=include_background,
                 aggregate=aggregate, ignore_index=ignore_index, reduction=reduction, normalizer=normalizer)
    dtype = torch.float64 if d.probs.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        predicted = d.probs.detach() > 0.5
        predicted = predicted if d.valid is None else predicted & d.valid
        # One mask set after the other: the working set of one distance transform at a time.
        distance = _distance_field(predicted, spacing, dtype, alpha)
        distance += _distance_field(d.labels > 0.5, spacing, dtype, alpha)
    loss = d.mean(miss(d.probs, d.misses, d.labels) ** 2 * distance.to(d.probs.dtype))
    loss = torch.log1p(loss) if log else loss
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


def _distance_field(mask: Tensor, spacing: float | Sequence[float] | None, dtype: torch.dtype,
                    alpha: float) -> Tensor:
    """``(edt(m) + edt(~m)) ** alpha`` of masks ``(N, C', *spatial)``, 0 before the power for a
    mask without interface (MONAI's ``distance_field``)."""
    d_fg, d_bg, interface = inside_outside_distances(mask.flatten(0, 1), spacing=spacing, dtype=dtype)
    # On each voxel one of the two is 0; inf only where the mask has no interface (then 0).
    field = d_fg.add_(d_bg).masked_fill_(~interface, 0.0)
    return field.pow_(alpha).view(mask.shape)


def cldice_loss(
    input: Tensor,
    target: Tensor,
    *,
    iterations: int = 3,
    smooth: float = 1.0,
    eps: float = 1e-4,
    pool_classes: bool = False,
    activation: str | None = "softmax",
    include_background: bool = False,
    aggregate: str = "per_sample",
    ignore_index: int | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Soft clDice (Shit et al. 2021): a Dice of topology precision and sensitivity via soft skeletons.

    Topology precision is the fraction of the predicted soft skeleton that lies inside the true
    mask; topology sensitivity the fraction of the true skeleton covered by the prediction. Their
    harmonic mean rewards connected, complete tubular structures (vessels, roads, neurites) that
    plain Dice barely notices.

    .. math::

        T_{prec} = \\frac{\\sum S(p)\\, t + s}{\\sum S(p) + s},\\quad
        T_{sens} = \\frac{\\sum S(t)\\, p + s}{\\sum S(t) + s},\\quad
        \\ell = 1 - \\frac{2\\, T_{prec} T_{sens}}{T_{prec} + T_{sens} + \\epsilon}

    with :func:`losskit.segmentation.soft_skeleton` ``S`` (``iterations`` erosions), sums over
    space per (sample, class), or over classes and space per sample with ``pool_classes=True``
    (MONAI 1.6.1's aggregation); ``aggregate="batch"`` adds the batch to every sum. Gradients
    flow through both ``S(p)`` and ``p``. Denominators are floored at ``torch.finfo(dtype).tiny``.

    With ``ignore_index`` (valid voxels :math:`v(x) \\in \\{0, 1\\}`), ignored voxels are
    "not this class" in both images the skeletons are taken of, :math:`S(v\\, p)` and
    :math:`S(v\\, t)` (computed on the full grid), and the four sums run over valid voxels only:
    :math:`\\sum v\\, S(vp)\\, t`, :math:`\\sum v\\, S(vp)`, :math:`\\sum v\\, S(vt)\\, p`,
    :math:`\\sum v\\, S(vt)`. The logits of ignored voxels then neither change the loss nor get a
    gradient, and a unit with no valid voxel (a sample with every voxel ignored) is 0.

    Args:
        input: Logits ``(N, C, H, W)`` or ``(N, C, D, H, W)`` (probabilities with ``activation=None``).
        target: Class indices or one-hot / soft labels with ``input``'s shape.
        iterations: Skeleton iterations, a non-negative integer (default 3, as the paper and MONAI).
        smooth: Added to numerator and denominator of both ratios (default 1, MONAI's
            ``smooth_nr = smooth_dr``); it makes a sample where a class is absent score 0 loss.
        eps: Added to the harmonic mean's denominator (default 1e-4, MONAI's ``smooth``).
        pool_classes: Sum over classes too and return one value per sample (MONAI 1.6.1).
        activation: ``"softmax"`` (default) over dim 1, ``"sigmoid"``, or ``None``.
        include_background: Keep channel 0. Default ``False`` as in Shit et al.'s code (which
            skips channel 0); MONAI 1.6.1 ``SoftclDiceLoss`` defaults to ``True``.
        aggregate: ``"per_sample"`` (default) or ``"batch"`` (the sums run over the batch too).
        ignore_index: Index-target value whose voxels count in no sum (index targets only).
        weight: Weights broadcastable to the natural unit.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this instead.

    Shape:
        ``reduction="none"``: ``(N, C')`` per (sample, kept class); ``(N,)`` with ``pool_classes``.
        With ``aggregate="batch"``: ``(1, C')``, or ``(1,)`` with ``pool_classes`` (``(0, C')`` /
        ``(0,)`` if N = 0).

    Returns:
        The loss in the input's dtype. Empty input, or a sample with every voxel ignored, gives 0
        with a gradient.

    Raises:
        ValueError: Bad shapes or options (``iterations``, ``smooth``, ``eps``, ``aggregate``;
            ``ignore_index`` with a floating target), naming the argument.
        TypeError: A non-bool ``pool_classes``, a non-int ``ignore_index``.

    Examples:
        >>> import torch, losskit
        >>> target = torch.zeros(1, 6, 6, dtype=torch.long); target[:, 2:4, :] = 1  # a horizontal bar
        >>> perfect = (torch.nn.functional.one_hot(target, 2).movedim(-1, 1) * 20.0 - 10.0)
        >>> losskit.cldice_loss(perfect, target)  # a near-perfect prediction: loss near 0
        tensor(4.9998e-05)
        >>> losskit.cldice_loss(perfect, torch.full_like(target, -1), ignore_index=-1)  # all ignored
        tensor(0.)

    References:
        Shit et al., "clDice - a Novel Topology-Preserving Loss Function for Tubular Structure
        Segmentation", CVPR 2021. MONAI 1.6.1 ``SoftclDiceLoss``.
    """
    check_int("iterations", iterations, low=0)
    smooth = check_number("smooth", smooth, low=0.0)
    eps = check_number("eps", eps, low=0.0)
    check_bool("pool_classes", pool_classes)
    check_tensor("input", input)
    if input.dim() not in (4, 5):
        raise ValueError(f"input must have shape (N, C, H, W) or (N, C, D, H, W) for clDice, got "
                         f"{tuple(input.shape)}")
    d = _prepare(input, target, activation=activation, include_background=include_background,
                 aggregate=aggregate, ignore_index=ignore_index, reduction=reduction, normalizer=normalizer)
    skel_pred = soft_skeleton(d.masked(d.probs), iterations)
    skel_true = soft_skeleton(d.labels, iterations)  # differentiable too, for targets that carry a gradient
    tiny = torch.finfo(d.probs.dtype).tiny

    def ratio(overlap: Tensor, missed: Tensor, skeleton: Tensor) -> tuple[Tensor, Tensor]:
        """(overlap + smooth) / (skeleton + smooth) and 1 minus it, from the missed part's own sum."""
        denominator = (d.sum(skeleton, classes=pool_classes) + smooth).clamp_min(tiny)
        hit = (d.sum(overlap, classes=pool_classes) + smooth) / denominator
        return hit, d.sum(missed, classes=pool_classes) / denominator

    tprec, tprec_miss = ratio(skel_pred * d.labels, skel_pred * (1 - d.labels), skel_pred)
    tsens, tsens_miss = ratio(skel_true * d.probs, skel_true * d.misses, skel_true)
    # 1 - 2 a b / (a + b + eps) = (a (1 - b) + b (1 - a) + eps) / (a + b + eps): near convergence a
    # and b are close to 1 and the left side cancels; the right one keeps every digit.
    loss = (tprec * tsens_miss + tsens * tprec_miss + eps) / (tprec + tsens + eps).clamp_min(tiny)
    if d.valid is not None:
        loss = torch.where(d.count(loss.dtype, classes=pool_classes) > 0, loss, loss.new_zeros(()))
    elif not input.shape[2:].numel():  # no voxel at all: 0, like a unit whose voxels are all ignored
        loss = loss * 0
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)
