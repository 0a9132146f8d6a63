"""The IoU family of axis-aligned boxes: the one geometry of a pair of boxes (:class:`PairGeometry`),
the similarities built on it, and :func:`box_iou` and :func:`box_iou_3d`."""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from losskit._core.checks import check_one_of
from losskit._core.numerics import float_compute_dtype as _compute_dtype
from losskit.boxes._checks import (
    AXIS_ALIGNED_FORMATS,
    _check_box_tensor,
    _check_fmt,
    _resolve_eps,
    _result_dtype,
    check_boxes,
)
from losskit.boxes.formats import _product, _to_xyxy

__all__ = ["IOU_KINDS", "box_iou", "box_iou_3d"]

IOU_KINDS: tuple[str, ...] = ("iou", "giou", "diou", "ciou", "eiou", "siou")
IOU_KINDS_3D: tuple[str, ...] = ("iou", "giou")

Kind = Literal["iou", "giou", "diou", "ciou", "eiou", "siou"]


# --- the one geometry of a pair of boxes ------------------------------------------------------


class PairGeometry(NamedTuple):
    """What every IoU-family measure needs of a pair of axis-aligned boxes (any dimension D).

    Shapes broadcast like the two inputs; ``(..., D)`` entries hold one value per axis.
    """

    size1: Tensor  # (..., D) side lengths of the first boxes
    size2: Tensor  # (..., D) side lengths of the second boxes
    inter: Tensor  # (...) intersection area (volume)
    union: Tensor  # (...) union area
    iou: Tensor  # (...) inter / union, 0 for a degenerate union
    enclose: Tensor | None  # (..., D) sides of the smallest enclosing box
    offset: Tensor | None  # (..., D) centre of the second box minus centre of the first
    miss: Tensor | None = None  # (...) 1 - iou, to full relative precision (losses; see pair_geometry)
    hull_gap: Tensor | None = None  # (...) enclosing area minus union, the same way (GIoU losses)


def ratio(num: Tensor, den: Tensor, eps: float) -> Tensor:
    """``num / den`` where ``den > eps``, else 0 with a zero gradient (no ``0 / 0`` anywhere)."""
    # Written without torch.where and clamp, whose backward passes are several times slower on
    # CPUs than relu's: the floored denominator keeps the discarded quotient finite, and the mask
    # zeroes both its value and its gradient.
    return num / (torch.relu(den - eps) + eps) * (den > eps)


def safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x > 0``, 0 with a zero gradient for ``x <= 0`` (the square root's slope at 0
    is infinite), and NaN for NaN: the test is ``x <= 0``, which NaN fails, so NaN is never 0."""
    zero = x <= 0
    return torch.where(zero, 0.0, torch.sqrt(torch.where(zero, 1.0, x)))


def _outside(size: Tensor, beyond_hi: Tensor, beyond_lo: Tensor) -> Tensor:
    """Per axis, the part of a box's side outside the other box, ``size - inner``, formed from the
    coordinates' differences (``beyond_hi``, ``beyond_lo`` >= 0): exact for overlapping boxes, and
    all of the side where the boxes are apart. (``torch.minimum``: a relu form of the minimum
    would subtract the large side from itself.)"""
    return torch.minimum(size, beyond_hi + beyond_lo)


def _area_beyond(big: Tensor, small: Tensor, extra: Tensor) -> Tensor:
    """``prod(big) - prod(small)`` for sides ``big = small + extra`` (``extra >= 0``), as a sum of
    non-negative terms: ``sum_k prod(big[:k]) extra[k] prod(small[k+1:])``."""
    parts_big, parts_small, parts_extra = big.unbind(-1), small.unbind(-1), extra.unbind(-1)
    total = None
    for k, part in enumerate(parts_extra):
        term = part
        for j in range(k):
            term = term * parts_big[j]
        for j in range(k + 1, len(parts_small)):
            term = term * parts_small[j]
        total = term if total is None else total + term
    return total


def _value_of(exact: Tensor, plain: Tensor) -> Tensor:
    """``exact``'s value with ``plain``'s gradient, for two forms of one quantity.

    The exact sums of areas keep the digits of a close prediction's loss, but autograd through
    them gives, at an exact tie of two coordinates, a derivative that depends on the order of the
    axes in the sum; the plain form's (``1 - IoU``, hull minus union) is well conditioned and at
    a tie follows the overlap's rule, as the closed-form gradient of :mod:`losskit._core.iou_grad`
    does. ``plain - plain`` is exactly 0, so the value is ``exact``'s to the last bit.
    """
    return exact.detach() + (plain - plain.detach())


def pair_geometry(boxes1: Tensor, boxes2: Tensor, eps: float, *, kind: str = "diou",
                  exact_miss: bool = False) -> PairGeometry:
    """Intersection, union, IoU and, as far as ``kind`` needs them, enclosing box and centre offset.

    ``kind="iou"`` stops at the IoU, ``"giou"`` adds the enclosing box, any other kind adds the
    centre offset too: what is not computed costs neither time nor memory.

    ``exact_miss=True`` also gives ``miss = 1 - IoU`` (and, with ``"giou"``, ``hull_gap``, the
    enclosing area minus the union) as sums of non-negative areas formed from the differences of
    the coordinates. ``1 - IoU`` itself keeps few digits of a close prediction's loss: in float32,
    a loss of 5e-4 with 1.6e-3 relative error for 40-pixel boxes. The losses ask for it; the
    similarities (metrics, assigners) do not need it.

    ``boxes1`` and ``boxes2`` are corner boxes (``xyxy``, or ``xyzxyz`` in 3-D) in a floating
    dtype that broadcast against each other; nothing is validated here.
    """
    d = boxes1.shape[-1] // 2
    lo1, hi1, lo2, hi2 = boxes1[..., :d], boxes1[..., d:], boxes2[..., :d], boxes2[..., d:]
    size1, size2 = hi1 - lo1, hi2 - lo2
    # min and max written with relu, and the enclosing box from the overlap (max + min = a + b):
    # the backward of torch.minimum/maximum (compare, then masked fills) cost more than the rest of
    # the loss, and relu's is the cheapest elementwise backward there is. At exact ties the
    # gradient goes to boxes2's coordinate instead of being split.
    above, below = torch.relu(hi2 - hi1), torch.relu(lo1 - lo2)  # boxes2 beyond boxes1, per side
    inner_hi = hi2 - above  # min(hi1, hi2)
    inner_lo = lo2 + below  # max(lo1, lo2)
    overlap = inner_hi - inner_lo  # negative along an axis where the boxes are apart
    inner = torch.relu(overlap)
    inter = _product(inner)
    union = _product(size1) + _product(size2) - inter
    iou = ratio(inter, union, eps)
    miss = hull_gap = None
    if exact_miss:
        beyond_hi, beyond_lo = torch.relu(hi1 - hi2), torch.relu(lo2 - lo1)  # boxes1 beyond boxes2
        out1 = _outside(size1, beyond_hi, beyond_lo)
        out2 = _outside(size2, above, below)
        only1 = _area_beyond(size1, inner, out1)  # area1 - inter
        only2 = _area_beyond(size2, inner, out2)  # area2 - inter
        exact_union = inter + only1 + only2
        miss = ratio(only1 + only2, exact_union, eps) + (exact_union <= eps)  # 1 for a degenerate union
        miss = _value_of(miss, 1 - iou)
    if kind == "iou":
        return PairGeometry(size1, size2, inter, union, iou, None, None, miss)
    enclose = size1 + size2 - overlap  # max(hi1, hi2) - min(lo1, lo2), as max + min = a + b
    if exact_miss and kind == "giou":
        # hull - union = (hull - area1) - (area2 - inter); the hull's sides are size1 + above + below
        hull_gap = _value_of(_area_beyond(enclose, size1, above + below) - only2, _product(enclose) - union)
    # ((lo2 - lo1) + (hi2 - hi1)) / 2: differences of close coordinates first, which are exact
    offset = None if kind == "giou" else ((lo2 - lo1) + (hi2 - hi1)) / 2
    return PairGeometry(size1, size2, inter, union, iou, enclose, offset, miss, hull_gap)


def _aspect_angle(size: Tensor, eps: float) -> Tensor:
    """``atan(w / h)`` as ``atan2(w, h)`` (fine at ``h = 0``); pi/4 with zero gradient for a point box."""
    w, h = size[..., 0], size[..., 1]
    point = w * w + h * h <= eps
    return torch.atan2(torch.where(point, 1.0, w), torch.where(point, 1.0, h))


def ciou_alpha(g: PairGeometry, v: Tensor, eps: float, *, alpha_gate: float | None, alpha_no_grad: bool,
               miss: Tensor | None = None) -> Tensor:
    r"""CIoU's trade-off :math:`\alpha = v / (1 - IoU + v)`, optionally gated on IoU and detached
    (``miss``: an exact ``1 - IoU`` to use)."""
    alpha = ratio(v, (1 - g.iou if miss is None else miss) + v, eps)
    if alpha_gate is not None:
        alpha = torch.where(g.iou > alpha_gate, alpha, 0.0)
    return alpha.detach() if alpha_no_grad else alpha


def _penalty(g: PairGeometry, kind: str, eps: float, *, alpha_gate: float | None, alpha_no_grad: bool,
             theta: float, miss: Tensor | None = None) -> Tensor | None:
    """What ``kind`` subtracts from the IoU (None for the plain IoU); GIoU's from ``g.hull_gap``
    when the geometry has it."""
    if kind == "iou":
        return None
    if kind == "giou":
        hull = _product(g.enclose)
        return ratio(hull - g.union if g.hull_gap is None else g.hull_gap, hull, eps)
    centre = ratio(g.offset.square().sum(-1), g.enclose.square().sum(-1), eps)  # rho^2 / c^2
    if kind == "diou":
        return centre
    if kind == "ciou":
        v = (4 / math.pi**2) * (_aspect_angle(g.size2, eps) - _aspect_angle(g.size1, eps)).square()
        return centre + ciou_alpha(g, v, eps, alpha_gate=alpha_gate, alpha_no_grad=alpha_no_grad, miss=miss) * v
    if kind == "eiou":
        return centre + ratio((g.size1 - g.size2).square(), g.enclose.square(), eps).sum(-1)
    return _siou_cost(g, eps, theta)  # siou


def iou_family(g: PairGeometry, kind: str, eps: float, *, alpha_gate: float | None = None,
               alpha_no_grad: bool = True, theta: float = 4.0) -> Tensor:
    """The IoU-family similarity of ``kind`` from a :class:`PairGeometry` (see :func:`box_iou`)."""
    penalty = _penalty(g, kind, eps, alpha_gate=alpha_gate, alpha_no_grad=alpha_no_grad, theta=theta)
    return g.iou if penalty is None else g.iou - penalty


def iou_family_loss(g: PairGeometry, kind: str, eps: float, *, alpha_gate: float | None = None,
                    alpha_no_grad: bool = True, theta: float = 4.0) -> Tensor:
    """``1 - iou_family(g, kind, ...)``, exact near 0: from ``g.miss`` (``pair_geometry(...,
    exact_miss=True)``) instead of ``1 - IoU``, which keeps few digits of a close prediction's loss."""
    penalty = _penalty(g, kind, eps, alpha_gate=alpha_gate, alpha_no_grad=alpha_no_grad, theta=theta, miss=g.miss)
    return g.miss if penalty is None else g.miss + penalty


def _siou_cost(g: PairGeometry, eps: float, theta: float) -> Tensor:
    r"""SIoU's (distance cost + shape cost) / 2 (Gevorgyan 2022).

    The angle cost :math:`\Lambda = 1 - 2\sin^2(\arcsin(|d_y| / \sigma) - \pi/4)` equals
    :math:`\sin 2\alpha = 2 |d_x d_y| / \sigma^2`, written so here: no square root, no arcsin, and 0
    (with a zero gradient) for coincident centres, :math:`\sigma = 0`.
    """
    dx, dy = g.offset[..., 0], g.offset[..., 1]
    angle = ratio(2 * (dx * dy).abs(), dx * dx + dy * dy, eps)
    gamma = 2 - angle
    rho = ratio(g.offset.square(), g.enclose.square(), eps)  # ((d_x / c_w)^2, (d_y / c_h)^2)
    distance = (-torch.expm1(-gamma.unsqueeze(-1) * rho)).sum(-1)  # 1 - e^-x, exact for small x
    omega = ratio((g.size1 - g.size2).abs(), torch.maximum(g.size1, g.size2), eps)
    shape = (-torch.expm1(-omega)).pow(theta).sum(-1)
    return (distance + shape) / 2


# --- public similarity functions --------------------------------------------------------------


def _pair_up(boxes1: Tensor, boxes2: Tensor, aligned: bool) -> tuple[Tensor, Tensor]:
    """Broadcast for aligned pairs, or insert the (N, 1) x (1, M) dimensions for pairwise ones."""
    if aligned:
        lead1, lead2 = boxes1.shape[:-1], boxes2.shape[:-1]
    else:
        for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
            if boxes.dim() < 2:
                raise ValueError(f"pairwise (aligned=False) needs {name} of shape (..., N, K), got shape "
                                 f"{tuple(boxes.shape)}")
        lead1, lead2 = boxes1.shape[:-2], boxes2.shape[:-2]
        boxes1, boxes2 = boxes1.unsqueeze(-2), boxes2.unsqueeze(-3)
    try:
        torch.broadcast_shapes(lead1, lead2)
    except RuntimeError:
        what = "box dimensions" if aligned else "leading (batch) dimensions"
        raise ValueError(f"boxes2's {what} {tuple(lead2)} do not broadcast with boxes1's {tuple(lead1)}"
                         f" (aligned={aligned})") from None
    return boxes1, boxes2


def _prepare_pair(boxes1: Tensor, boxes2: Tensor, fmt: str, aligned: bool, eps: float | None,
                  ) -> tuple[Tensor, Tensor, float, torch.dtype]:
    boxes1 = _check_box_tensor("boxes1", boxes1, fmt)
    boxes2 = _check_box_tensor("boxes2", boxes2, fmt)
    check_boxes("boxes1", boxes1, fmt)
    check_boxes("boxes2", boxes2, fmt)
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    eps = _resolve_eps(eps, dtype)
    compute = _compute_dtype(dtype)
    b1, b2 = _pair_up(boxes1.to(compute), boxes2.to(compute), aligned)
    return b1, b2, eps, _result_dtype(dtype)


def box_iou(boxes1: Tensor, boxes2: Tensor, *, kind: Kind = "iou", aligned: bool = False, fmt: str = "xyxy",
            eps: float | None = None) -> Tensor:
    r"""IoU-family similarity of axis-aligned boxes: IoU, GIoU, DIoU, CIoU, EIoU or SIoU.

    One function for the whole family, pairwise (``(..., N, M)``, for assigners and metrics) or
    aligned (``(..., N)``, for losses); each loss of :mod:`losskit.functional` is ``1 -`` one of
    these. With :math:`I` the intersection, :math:`U` the union, :math:`C` the smallest enclosing
    box (sides :math:`c_w, c_h`, squared diagonal :math:`c^2`), :math:`\rho` the distance between
    the centres (:math:`d_x, d_y`), and :math:`w, h` the sides (the second box's with :math:`^{gt}`):

    .. math::

        \mathrm{IoU} = \frac{I}{U}, \qquad
        \mathrm{GIoU} = \mathrm{IoU} - \frac{|C| - U}{|C|}, \qquad
        \mathrm{DIoU} = \mathrm{IoU} - \frac{\rho^2}{c^2}, \qquad
        \mathrm{CIoU} = \mathrm{DIoU} - \alpha v,

        v = \frac{4}{\pi^2}\Big(\arctan\frac{w^{gt}}{h^{gt}} - \arctan\frac{w}{h}\Big)^2, \qquad
        \alpha = \frac{v}{1 - \mathrm{IoU} + v}, \qquad
        \mathrm{EIoU} = \mathrm{DIoU} - \frac{(w - w^{gt})^2}{c_w^2} - \frac{(h - h^{gt})^2}{c_h^2},

        \mathrm{SIoU} = \mathrm{IoU} - \tfrac12\Big(\sum_{t=x,y} \big(1 - e^{-(2 - \Lambda)(d_t / c_t)^2}\big)
            + \sum_{t=w,h} \big(1 - e^{-\omega_t}\big)^{\theta}\Big), \qquad
        \Lambda = \sin 2\alpha_c = \frac{2 |d_x d_y|}{\rho^2}, \qquad
        \omega_w = \frac{|w - w^{gt}|}{\max(w, w^{gt})}.

    IoU is in [0, 1]; GIoU and DIoU in (-1, 1]; CIoU in (-1.5, 1]; EIoU (three penalties, each
    below 1) and SIoU (costs up to about 1.16 for :math:`\theta = 4`) can go below -1. SIoU
    uses :math:`\theta = 4` and the paper's sign (its distance cost is in [0, 2)). CIoU's
    :math:`\alpha` is treated as a constant under autograd, as in :func:`losskit.ciou_loss`'s
    default. Degenerate pairs (zero-area boxes) follow the rule of the module docstring: a ratio
    with a denominator at most ``eps`` is 0, so two zero-area boxes have IoU 0 even when identical.

    Args:
        boxes1: Boxes of shape ``(..., N, 4)``.
        boxes2: Boxes of shape ``(..., M, 4)`` (pairwise) or broadcastable to ``boxes1`` (aligned).
        kind: ``"iou"``, ``"giou"``, ``"diou"``, ``"ciou"``, ``"eiou"`` or ``"siou"``.
        aligned: Compare box ``i`` with box ``i`` instead of every pair.
        fmt: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``.
        eps: Degenerate-denominator threshold; ``None`` picks :func:`default_eps` of the dtype.

    Shape:
        Pairwise: ``(..., N, 4)`` and ``(..., M, 4)`` to ``(..., N, M)`` (leading dimensions
        broadcast). Aligned: ``(..., N, 4)`` and ``(..., N, 4)`` to ``(..., N)``.

    Returns:
        The similarity, in the boxes' floating dtype (float32 for integer boxes; half and
        bfloat16 are computed in float32).

    Raises:
        ValueError: For an unknown ``kind`` or ``fmt``, shapes that do not fit, or (value check)
            a box with ``x2 < x1`` or ``y2 < y1``.

    Examples:
        >>> import torch
        >>> from losskit.boxes import box_iou
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]])
        >>> box_iou(a, b)  # a quarter-size box inside; a diagonal neighbour touching a corner
        tensor([[0.2500, 0.0000]])
        >>> box_iou(a, b, kind="giou")  # second pair: 0 - (9 - 5) / 9
        tensor([[ 0.2500, -0.4444]])
        >>> box_iou(b, b.flip(0), kind="diou", aligned=True)  # 0 - rho^2 / c^2 = 0 - 8 / 18 per pair
        tensor([-0.4444, -0.4444])

    References:
        Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019 (GIoU). Zheng et al.,
        "Distance-IoU Loss", AAAI 2020 (DIoU, CIoU). Zhang et al., "Focal and Efficient IOU Loss",
        Neurocomputing 2022 (EIoU). Gevorgyan, "SIoU Loss", arXiv:2205.12740 (SIoU). Pairwise and
        aligned forms as torchvision's ``box_iou`` family and mmdetection's ``bbox_overlaps``.
    """
    check_one_of("kind", kind, IOU_KINDS)
    fmt = _check_fmt(fmt, AXIS_ALIGNED_FORMATS)
    b1, b2, eps, out_dtype = _prepare_pair(boxes1, boxes2, fmt, aligned, eps)
    g = pair_geometry(_to_xyxy(b1, fmt), _to_xyxy(b2, fmt), eps, kind=kind)
    return iou_family(g, kind, eps).to(out_dtype)


def box_iou_3d(boxes1: Tensor, boxes2: Tensor, *, kind: Literal["iou", "giou"] = "iou", aligned: bool = False,
               eps: float | None = None) -> Tensor:
    r"""IoU or GIoU of 3-D axis-aligned boxes ``(x1, y1, z1, x2, y2, z2)``.

    The same geometry as :func:`box_iou` with volumes for areas:
    :math:`\mathrm{IoU} = |A \cap B| / |A \cup B|`, :math:`\mathrm{GIoU} = \mathrm{IoU} - (|C| - |A \cup B|) / |C|`
    with :math:`C` the smallest enclosing box.

    Args:
        boxes1: Boxes of shape ``(..., N, 6)``.
        boxes2: Boxes of shape ``(..., M, 6)`` (pairwise) or broadcastable to ``boxes1`` (aligned).
        kind: ``"iou"`` or ``"giou"``.
        aligned: Compare box ``i`` with box ``i`` instead of every pair.
        eps: Degenerate-denominator threshold; ``None`` picks :func:`default_eps` of the dtype.

    Shape:
        Pairwise ``(..., N, M)``; aligned ``(..., N)``.

    Returns:
        The similarity in the boxes' floating dtype.

    Raises:
        ValueError: For an unknown ``kind``, shapes that do not fit, or (value check) an inverted box.

    Examples:
        >>> import torch
        >>> from losskit.boxes import box_iou_3d
        >>> cube = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0]])
        >>> box_iou_3d(cube, torch.tensor([[1.0, 0.0, 0.0, 3.0, 2.0, 2.0]]))  # overlap 4 / union 12
        tensor([[0.3333]])

    References:
        MONAI ``box_pair_giou`` (2-D and 3-D boxes, the ``xyzxyz`` order).
    """
    check_one_of("kind", kind, IOU_KINDS_3D)
    b1, b2, eps, out_dtype = _prepare_pair(boxes1, boxes2, "xyzxyz", aligned, eps)
    g = pair_geometry(b1, b2, eps, kind=kind)
    return iou_family(g, kind, eps).to(out_dtype)
