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

===========================  ==========================================================
MONAI 1.6.1                  losskit
===========================  ==========================================================
``BoundaryLoss()``           ``boundary_loss(x, t, include_background=True)``
``HausdorffDTLoss(alpha=a)`` ``hausdorff_dt_loss(x, t, alpha=a)``
``SoftclDiceLoss()``         ``cldice_loss(x, t, include_background=True, pool_classes=True)``
===========================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from losskit._core.checks import check_bool, check_number, check_tensor
from losskit._core.dense import dense_target, drop_background, probabilities
from losskit._core.reduction import Reduction, check_reduction, reduce_for
from losskit.segmentation import inside_outside_distances, signed_distance_map, soft_skeleton

__all__ = ["boundary_loss", "cldice_loss", "hausdorff_dt_loss"]


def _prepare(input: Tensor, target: Tensor, activation: str | None, include_background: bool,
             reduction: str, normalizer: object) -> tuple[Tensor, Tensor]:
    """Probabilities and float labels ``(N, C', *spatial)``, background dropped when asked."""
    check_reduction(reduction, normalizer)
    check_bool("include_background", include_background)
    probs = probabilities(input, activation)
    prepared = dense_target(input, target, ignore_index=None, compute_dtype=probs.dtype)
    num_classes = input.shape[1]
    probs = drop_background(probs, include_background)
    if prepared.dense is not None:
        labels = drop_background(prepared.dense, include_background)
    else:
        first = 0 if include_background else 1
        classes = torch.arange(first, num_classes, device=input.device)
        classes = classes.view(1, -1, *([1] * (input.dim() - 2)))
        labels = (prepared.index.unsqueeze(1) == classes).to(probs.dtype)
    return probs, labels


def _per_unit_mean(x: Tensor) -> Tensor:
    """Mean over the spatial dims: ``(N, C', *spatial) -> (N, C')``."""
    return x.flatten(2).mean(-1) if x.shape[2:].numel() else x.new_zeros(x.shape[:2])



def boundary_loss(
    input: Tensor,
    target: Tensor,
    *,
    activation: str | None = "softmax",
    include_background: bool = False,
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

    Args:
        input: Logits ``(N, C, *spatial)`` (probabilities with ``activation=None``).
        target: Class indices ``(N, *spatial)`` or ``(N, 1, *spatial)``, or one-hot / soft labels
            with ``input``'s shape (thresholded at 0.5 for the map).
        activation: ``"softmax"`` (default) over dim 1, ``"sigmoid"``, or ``None``.
        include_background: Keep channel 0. Default ``False``, as Kervadec et al.'s code (which
            applies the loss to the foreground classes); MONAI 1.6.1 ``BoundaryLoss`` defaults to ``True``.
        distance_map: Precomputed signed maps, ``(N, C, *spatial)`` (channel 0 is dropped when
            ``include_background=False``) or already ``(N, C', *spatial)``; used as given, detached.
        spacing: Voxel size for the maps computed here (ignored with ``distance_map``).
        weight: Weights broadcastable to ``(N, C')`` (e.g. one per kept class, ``(C',)``).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this instead.

    Shape:
        ``reduction="none"``: ``(N, C')``, one value per (sample, kept class), where
        ``C' = C - 1`` unless ``include_background``.

    Returns:
        The loss in the input's dtype. Empty input gives 0 with a gradient.

    Raises:
        ValueError: Bad shapes (naming ``input``, ``target`` or ``distance_map``) or options.
        TypeError: Non-tensor or integer ``input``/``distance_map``.

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[[[4.0, 4.0, -4.0, -4.0]], [[-4.0, -4.0, 4.0, 4.0]]]])  # (1, 2, 1, 4)
        >>> target = torch.tensor([[[0, 0, 1, 1]]])
        >>> # class 1's signed distance map is [2, 1, 0, -1], its probabilities about [0, 0, 1, 1]:
        >>> losskit.boundary_loss(logits, target)  # mean(p * phi) = (3 * 0.000335 - 0.99966) / 4
        tensor(-0.2497)

    References:
        Kervadec et al., "Boundary loss for highly unbalanced segmentation", MIDL 2019; Medical
        Image Analysis 67 (2021). MONAI 1.6.1 ``BoundaryLoss`` computes the same map (and, with
        ``include_background=True``, the same loss) with scipy in a Python loop over samples and classes.
    """
    probs, labels = _prepare(input, target, activation, include_background, reduction, normalizer)
    if distance_map is None:
        with torch.no_grad():
            mask = (labels > 0.5).flatten(0, 1)
            phi = signed_distance_map(mask, spacing=spacing, dtype=torch.float64 if probs.dtype == torch.float64
                                      else torch.float32).view(probs.shape).to(probs.dtype)
    else:
        check_tensor("distance_map", distance_map)
        if not distance_map.is_floating_point():
            raise TypeError(f"distance_map must be a floating-point tensor, got dtype {distance_map.dtype}")
        allowed = {tuple(input.shape), tuple(probs.shape)}
        if tuple(distance_map.shape) not in allowed:
            raise ValueError(f"distance_map must have input's shape {tuple(input.shape)} or, without the "
                             f"background channel, {tuple(probs.shape)}; got {tuple(distance_map.shape)}")
        phi = distance_map.detach().to(probs.dtype)
        if phi.shape != probs.shape:
            phi = phi[:, 1:]
    return reduce_for(_per_unit_mean(probs * phi), input, target, reduction, weight=weight, normalizer=normalizer)


def hausdorff_dt_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float = 2.0,
    activation: str | None = "softmax",
    include_background: bool = False,
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
    ``HausdorffDTLoss.distance_field`` (per (sample, class)).

    Args:
        input: Logits ``(N, C, *spatial)`` (probabilities with ``activation=None``).
        target: Class indices ``(N, *spatial)`` or ``(N, 1, *spatial)``, or one-hot / soft labels
            with ``input``'s shape.
        alpha: Exponent of the distances, >= 0 (default 2, as the paper and MONAI).
        activation: ``"softmax"`` (default) over dim 1, ``"sigmoid"``, or ``None``.
        include_background: Keep channel 0 (default ``False``, as MONAI).
        spacing: Voxel size for the distance transforms (default 1).
        weight: Weights broadcastable to ``(N, C')``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this instead.

    Shape:
        ``reduction="none"``: ``(N, C')`` (MONAI returns ``(N, C', 1, ..., 1)``).

    Returns:
        The loss in the input's dtype, >= 0. Empty input gives 0 with a gradient.

    Raises:
        ValueError: Bad shapes or options, naming the argument.

    Examples:
        >>> import torch, losskit
        >>> logits = torch.tensor([[[[4.0, 4.0, -4.0, -4.0]], [[-4.0, -4.0, 4.0, 4.0]]]])
        >>> losskit.hausdorff_dt_loss(logits, torch.tensor([[[0, 0, 1, 1]]]))  # (p - t)^2 ~ 1e-7
        tensor(5.6227e-07)

    References:
        Karimi and Salcudean, "Reducing the Hausdorff Distance in Medical Image Segmentation with
        Convolutional Neural Networks", IEEE TMI 39(2), 2019. MONAI 1.6.1 ``HausdorffDTLoss``.
    """
    alpha = check_number("alpha", alpha, low=0.0)
    probs, labels = _prepare(input, target, activation, include_background, reduction, normalizer)
    dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        masks = torch.cat([probs.detach() > 0.5, labels > 0.5]).flatten(0, 1)
        d_fg, d_bg, interface = inside_outside_distances(masks, spacing=spacing, dtype=dtype)
        # On each voxel one of the two is 0; inf only where the mask has no interface (then 0).
        field = torch.where(interface, d_fg + d_bg, d_fg.new_zeros(()))
        field = field.view(2, *probs.shape).to(probs.dtype)
        distance = field[0] ** alpha + field[1] ** alpha
    loss = _per_unit_mean((probs - labels) ** 2 * distance)
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


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
    (MONAI 1.6.1's aggregation). Gradients flow through both ``S(p)`` and ``p``.

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
        weight: Weights broadcastable to the natural unit.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this instead.

    Shape:
        ``reduction="none"``: ``(N, C')`` per (sample, kept class); ``(N,)`` with ``pool_classes``.

    Returns:
        The loss in the input's dtype. Empty input gives 0 with a gradient.

    Raises:
        ValueError: Bad shapes or options (``iterations``, ``smooth``, ``eps``), naming the argument.

    Examples:
        >>> import torch, losskit
        >>> target = torch.zeros(1, 6, 6, dtype=torch.long); target[:, 2:4, :] = 1  # a horizontal bar
        >>> perfect = (torch.nn.functional.one_hot(target, 2).movedim(-1, 1) * 20.0 - 10.0)
        >>> losskit.cldice_loss(perfect, target)  # a near-perfect prediction: loss near 0
        tensor(4.9949e-05)

    References:
        Shit et al., "clDice - a Novel Topology-Preserving Loss Function for Tubular Structure
        Segmentation", CVPR 2021. MONAI 1.6.1 ``SoftclDiceLoss``.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    smooth = check_number("smooth", smooth, low=0.0)
    eps = check_number("eps", eps, low=0.0)
    check_bool("pool_classes", pool_classes)
    check_tensor("input", input)
    if input.dim() not in (4, 5):
        raise ValueError(f"input must have shape (N, C, H, W) or (N, C, D, H, W) for clDice, got "
                         f"{tuple(input.shape)}")
    probs, labels = _prepare(input, target, activation, include_background, reduction, normalizer)
    skel_pred = soft_skeleton(probs, iterations)
    skel_true = soft_skeleton(labels, iterations)  # differentiable too, for targets that carry a gradient
    dims = tuple(range(1 if pool_classes else 2, probs.dim()))
    tprec = ((skel_pred * labels).sum(dims) + smooth) / (skel_pred.sum(dims) + smooth)
    tsens = ((skel_true * probs).sum(dims) + smooth) / (skel_true.sum(dims) + smooth)
    loss = 1 - 2 * tprec * tsens / (tprec + tsens + eps)
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)
