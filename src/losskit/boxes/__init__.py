r"""Box formats and IoU-family geometry, shared by the box losses and the label assigners.

**Formats** (the last dimension of a box tensor):

========== ========================================== ==================================
fmt        values                                     note
========== ========================================== ==================================
``xyxy``   x1, y1, x2, y2                             corners; Pascal VOC, torchvision
``xywh``   x1, y1, w, h                               top-left corner and size (COCO)
``cxcywh`` cx, cy, w, h                               centre and size (YOLO, DETR)
``xywhr``  cx, cy, w, h, angle                        rotated, **centre** and angle in
                                                      radians (Ultralytics OBB); alias
                                                      ``cxcywhr``
``xyxyxyxy`` x1, y1, ..., x4, y4                      the 4 corners of a rotated box
``xyzxyz`` x1, y1, z1, x2, y2, z2                     3-D axis-aligned (MONAI)
``xyzwlhr`` x, y, z, w, l, h, yaw                      3-D with yaw: **centre**, width,
                                                      length along the heading, height,
                                                      yaw about +z (nuScenes' ``wlh``)
========== ========================================== ==================================

torchvision's rotated ``XYWHR`` is *not* ``xywhr`` here: it starts at a corner and takes degrees.
A rotated box ``(cx, cy, w, h, a)`` has its ``w`` side along the direction
:math:`(\cos a, \sin a)`; its corners, in order, are the local points :math:`(-w/2, -h/2)`,
:math:`(w/2, -h/2)`, :math:`(w/2, h/2)`, :math:`(-w/2, h/2)` rotated by ``a`` and moved to the
centre (for ``a = 0`` and image axes: top-left, top-right, bottom-right, bottom-left).

**Pairwise and aligned.** :func:`box_iou` compares every box of ``boxes1`` ``(..., N, 4)`` with
every box of ``boxes2`` ``(..., M, 4)`` (``aligned=False``, result ``(..., N, M)``, what an assigner
needs) or box ``i`` with box ``i`` (``aligned=True``, result ``(..., N)``, what a loss needs), from
the same code: the pairwise form only inserts the two broadcast dimensions.

**Degenerate boxes and eps.** A zero width or height is valid; ``x2 < x1`` is an error (a value
check, see :func:`losskit.set_checks`). Every ratio whose numerator vanishes with its denominator
(the IoU of two zero-area boxes, the centre-distance term of two coincident points, the angle of
two coincident centres) is computed by a guarded division: a denominator at most ``eps`` gives
the ratio 0 with a zero gradient, any larger one gives the exact ratio. So values for real boxes
do not depend on ``eps`` at all (torchvision and Ultralytics add ``eps`` to the denominators,
which moves results by about ``eps / area``), and degenerate pairs give finite values and finite
(zero) gradients instead of ``0 / 0``. ``eps`` is also the floor of a logarithm's argument
(:func:`losskit.iou_loss` with ``mode="log"``). Default (:func:`default_eps`): ``1e-7`` for float32
and float64 (the torchvision/Ultralytics value) and ``1e-6`` for float16 and bfloat16. Half
inputs are computed in float32, so the larger value is not needed to represent ``eps`` (the
yolov5 failure of an fp16 ``1e-9`` that underflows cannot happen here). It is about what half
inputs can resolve: float16's step near 1 is 9.8e-4 (bfloat16's 7.8e-3), so a box one step wide
and high has an area of about 1e-6; pairs below that are rounding noise and count as degenerate
instead of producing ratios of noise. The log-IoU floor then caps the loss at 13.8 (mmdetection's
``eps=1e-6``) instead of 16.1.

**Dtypes.** Half, bfloat16 and integer boxes are computed in float32; float32 and float64 as they
are. Results have the input's floating dtype (float32 for integer boxes).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from losskit import _polygon
from losskit._core.checks import check_number, check_one_of, check_tensor, checks_enabled
from losskit._core.numerics import LOW_PRECISION as _LOW_PRECISION
from losskit._core.numerics import float_compute_dtype as _compute_dtype

__all__ = [
    "AXIS_ALIGNED_FORMATS",
    "IOU_KINDS",
    "ROTATED_FORMATS",
    "box_area",
    "box_convert",
    "box_iou",
    "box_iou_3d",
    "box_to_distance",
    "check_boxes",
    "default_eps",
    "distance_to_box",
    "kitti_to_xyzwlhr",
    "normalize_angle",
    "nuscenes_to_xyzwlhr",
    "probiou",
    "rotated_box_iou",
    "rotated_box_iou_3d",
]

AXIS_ALIGNED_FORMATS: tuple[str, ...] = ("xyxy", "xywh", "cxcywh")
ROTATED_FORMATS: tuple[str, ...] = ("xywhr", "cxcywhr", "xyxyxyxy")
IOU_KINDS: tuple[str, ...] = ("iou", "giou", "diou", "ciou", "eiou", "siou")
IOU_KINDS_3D: tuple[str, ...] = ("iou", "giou")
ROTATED_IOU_KINDS: tuple[str, ...] = ("iou", "giou", "diou")
_WIDTH = {"xyxy": 4, "xywh": 4, "cxcywh": 4, "xywhr": 5, "cxcywhr": 5, "xyxyxyxy": 8, "xyzxyz": 6, "xyzwlhr": 7}
PROBIOU_BOUND = 100.0  # B_D is clamped to [0, 100]: exp(-100) is 0 to float32 and float64 alike

Kind = Literal["iou", "giou", "diou", "ciou", "eiou", "siou"]


def default_eps(dtype: torch.dtype) -> float:
    """The default ``eps`` of the box functions for boxes of ``dtype`` (see the module docstring).

    Examples:
        >>> default_eps(torch.float32), default_eps(torch.float16)
        (1e-07, 1e-06)
    """
    return 1e-6 if dtype in _LOW_PRECISION else 1e-7


def _resolve_eps(eps: float | None, dtype: torch.dtype) -> float:
    if eps is None:
        return default_eps(dtype)
    return check_number("eps", eps, low=0.0)


def _result_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype.is_floating_point else torch.float32


def _check_box_tensor(name: str, boxes: object, fmt: str) -> Tensor:
    boxes = check_tensor(name, boxes)
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"{name} must hold real box coordinates, got dtype {boxes.dtype}")
    width = _WIDTH[fmt]
    if boxes.dim() == 0 or boxes.shape[-1] != width:
        raise ValueError(f"{name} must have shape (..., {width}) for fmt={fmt!r}, got shape {tuple(boxes.shape)}")
    return boxes


def _check_fmt(fmt: object, choices: tuple[str, ...], name: str = "fmt") -> str:
    check_one_of(name, fmt, choices)
    return "xywhr" if fmt == "cxcywhr" else fmt  # type: ignore[return-value]


def check_boxes(name: str, boxes: Tensor, fmt: str = "xyxy", *, finite: bool = False) -> None:
    """Value check: every box has non-negative width and height (``x1 <= x2``, ``y1 <= y2``).

    Zero width or height is valid. Runs only while value checks are on (it needs a device sync).
    With ``finite=True`` (the box losses) NaN and infinite coordinates are rejected too, in the
    same sync: a bounded loss (NWD, ProbIoU, the IoU family) can be finite at an infinite box while
    its gradient is NaN. Without it NaN passes here. Corner boxes (``xyxyxyxy``) have no order to
    check.

    Raises:
        ValueError: naming ``name``, the format, how many boxes are invalid and the first one.
    """
    if fmt == "xyxyxyxy" or not checks_enabled() or boxes.numel() == 0:
        return
    if fmt in ("xyxy", "xyzxyz"):
        d = boxes.shape[-1] // 2
        size = boxes[..., d:] - boxes[..., :d]
        rule = "x1 <= x2, y1 <= y2" + (", z1 <= z2" if d == 3 else "")
    elif fmt == "xyzwlhr":
        size = boxes[..., 3:6]
        rule = "w >= 0, l >= 0, h >= 0"
    else:
        size = boxes[..., 2:4]
        rule = "w >= 0, h >= 0"
    inverted = (size < 0).any(-1)
    bad = inverted | ~torch.isfinite(boxes).all(-1) if finite else inverted
    if not bool(bad.any()):
        return
    flat = bad.reshape(-1)
    first = int(flat.nonzero()[0])
    example = [round(v, 6) for v in boxes.reshape(-1, boxes.shape[-1])[first].tolist()]
    if finite and not bool(torch.isfinite(boxes.reshape(-1, boxes.shape[-1])[first]).all()):
        raise ValueError(
            f"{name} has {int(flat.sum())} of {flat.numel()} boxes with NaN or infinite coordinates (first at "
            f"flat index {first}: {example}). Fix the upstream computation, or switch value checks off with "
            "losskit.set_checks(False)"
        )
    raise ValueError(
        f"{name} has {int(flat.sum())} of {flat.numel()} boxes with negative width or height for fmt={fmt!r} "
        f"(first at flat index {first}: {example}); boxes need {rule} (zero size is "
        "allowed). Check the format (xyxy, xywh = x1, y1, w, h as COCO, cxcywh), or switch value checks off "
        "with losskit.set_checks(False)"
    )


# --- format conversion ------------------------------------------------------------------------


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    if fmt == "xyxy":
        return boxes
    a, b, w, h = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((a, b, a + w, b + h), -1)
    return torch.stack((a - w / 2, b - h / 2, a + w / 2, b + h / 2), -1)  # cxcywh


def _from_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    if fmt == "xyxy":
        return boxes
    x1, y1, x2, y2 = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), -1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), -1)  # cxcywh


def _rotated_to_corners(boxes: Tensor) -> Tensor:
    cx, cy, w, h, angle = boxes.unbind(-1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    wx, wy = w / 2 * cos, w / 2 * sin  # half the w side, along (cos, sin)
    hx, hy = -h / 2 * sin, h / 2 * cos  # half the h side, along (-sin, cos)
    corners = [(cx - wx - hx, cy - wy - hy), (cx + wx - hx, cy + wy - hy),
               (cx + wx + hx, cy + wy + hy), (cx - wx + hx, cy - wy + hy)]
    return torch.stack([c for point in corners for c in point], -1)


def _corners_to_rotated(corners: Tensor) -> Tensor:
    p = corners.unflatten(-1, (4, 2))
    centre = p.mean(-2)
    w_side = ((p[..., 1, :] - p[..., 0, :]) + (p[..., 2, :] - p[..., 3, :])) / 2  # corner 1 -> 2, and 4 -> 3
    h_side = ((p[..., 3, :] - p[..., 0, :]) + (p[..., 2, :] - p[..., 1, :])) / 2  # corner 1 -> 4, and 2 -> 3
    w = torch.linalg.vector_norm(w_side, dim=-1)
    h = torch.linalg.vector_norm(h_side, dim=-1)
    angle = torch.atan2(w_side[..., 1], w_side[..., 0])
    return torch.stack((centre[..., 0], centre[..., 1], w, h, angle), -1)


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    r"""Convert boxes between formats.

    Axis-aligned formats (``xyxy``, ``xywh``, ``cxcywh``) convert among themselves and to the
    rotated ones (angle 0); rotated formats (``xywhr``/``cxcywhr``, ``xyxyxyxy``) convert among
    themselves. Rotated to axis-aligned is refused: it would lose the angle (take the min and max
    of the ``xyxyxyxy`` corners for the enclosing box). Corners to ``xywhr`` takes the centre as
    the corners' mean, ``w`` and the angle from the side corner 1 -> corner 2 and ``h`` from corner
    1 -> corner 4 (each averaged with its opposite side), so any cyclic order of a rectangle's
    corners describes the same rectangle; the angle comes back in :math:`(-\pi, \pi]`.

    Half, bfloat16 and integer boxes are converted in float32 (so ``x1 + x2`` cannot overflow
    float16 or wrap around uint8, and ``cx - w/2`` of integers is not floored); the result has the
    input's floating dtype, float32 for integer input.

    Args:
        boxes: Boxes of shape ``(..., 4)`` (``(..., 5)`` for ``xywhr``, ``(..., 8)`` for corners).
        in_fmt: The format of ``boxes``.
        out_fmt: The format wanted.

    Shape:
        ``(..., K_in)`` to ``(..., K_out)``.

    Returns:
        A new tensor of converted boxes.

    Raises:
        ValueError: For an unknown format, a last dimension that does not fit ``in_fmt``, or a
            rotated-to-axis-aligned conversion.

    Examples:
        >>> import torch
        >>> from losskit.boxes import box_convert
        >>> box_convert(torch.tensor([[10, 20, 30, 40]]), "xyxy", "cxcywh")  # int -> float32
        tensor([[20., 30., 20., 20.]])
        >>> box_convert(torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0]]), "xywhr", "xyxyxyxy")
        tensor([[-2., -1.,  2., -1.,  2.,  1., -2.,  1.]])

    References:
        torchvision ``ops.box_convert`` (same axis-aligned names; its integer and float16 overflow,
        pytorch/vision #8887 and #9594, cannot happen here); Ultralytics' ``xywhr`` for rotated boxes.
    """
    formats = (*AXIS_ALIGNED_FORMATS, *ROTATED_FORMATS)
    src = _check_fmt(in_fmt, formats, "in_fmt")
    dst = _check_fmt(out_fmt, formats, "out_fmt")
    boxes = _check_box_tensor("boxes", boxes, src)
    if src in ROTATED_FORMATS and dst in AXIS_ALIGNED_FORMATS:
        raise ValueError(f"cannot convert rotated boxes ({in_fmt!r}) to the axis-aligned format {out_fmt!r} "
                         "without losing the angle; convert to 'xyxyxyxy' and take the corners' min and max "
                         "for the enclosing box")
    x = boxes.to(_compute_dtype(boxes.dtype))
    if src in AXIS_ALIGNED_FORMATS:
        xyxy = _to_xyxy(x, src)
        if dst in AXIS_ALIGNED_FORMATS:
            out = _from_xyxy(xyxy, dst)
        else:
            out = torch.cat((_from_xyxy(xyxy, "cxcywh"), torch.zeros_like(xyxy[..., :1])), -1)
            out = _rotated_to_corners(out) if dst == "xyxyxyxy" else out
    elif src == dst:
        out = x
    else:
        out = _rotated_to_corners(x) if dst == "xyxyxyxy" else _corners_to_rotated(x)
    return out.to(_result_dtype(boxes.dtype), copy=out is boxes)


def _product(values: Tensor) -> Tensor:
    """Product over the last dimension, written out (``Tensor.prod``'s backward syncs on zeros)."""
    parts = values.unbind(-1)
    out = parts[0]
    for part in parts[1:]:
        out = out * part
    return out


def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    r"""Area of each box (volume for ``xyzxyz``).

    Args:
        boxes: Boxes in ``fmt``.
        fmt: Any format of this module, including ``xyzxyz``; corners (``xyxyxyxy``) use the
            shoelace formula.

    Shape:
        ``(..., K)`` to ``(...)``.

    Returns:
        The areas, in the input's floating dtype (float32 for integer boxes).

    Raises:
        ValueError: For an unknown format, a wrong last dimension, or (value check) a box with
            negative width or height.

    Examples:
        >>> import torch
        >>> from losskit.boxes import box_area
        >>> box_area(torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0]]))  # 2 * 3, and a zero width
        tensor([6., 0.])
    """
    fmt = _check_fmt(fmt, (*AXIS_ALIGNED_FORMATS, *ROTATED_FORMATS, "xyzxyz"))
    boxes = _check_box_tensor("boxes", boxes, fmt)
    check_boxes("boxes", boxes, fmt)
    x = boxes.to(_compute_dtype(boxes.dtype))
    if fmt in ("xyxy", "xyzxyz"):
        d = x.shape[-1] // 2
        area = _product(x[..., d:] - x[..., :d])
    elif fmt == "xyxyxyxy":
        px, py = x[..., 0::2], x[..., 1::2]
        area = (px * py.roll(-1, -1) - px.roll(-1, -1) * py).sum(-1).abs() / 2
    else:
        area = x[..., 2] * x[..., 3]
    return area.to(_result_dtype(boxes.dtype))


# --- boxes as distances from a point (anchor-free detection heads) ----------------------------


def distance_to_box(points: Tensor, distance: Tensor, *, fmt: str = "xyxy") -> Tensor:
    r"""Boxes from points and their distances to the four sides (``ltrb``), as anchor-free heads predict.

    .. math::
        (x_1, y_1, x_2, y_2) = (p_x - l,\; p_y - t,\; p_x + r,\; p_y + b)

    Args:
        points: Anchor points ``(..., 2)`` (x, y).
        distance: Distances ``(..., 4)``: left, top, right, bottom, in the points' units.
        fmt: Output format, ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``.

    Shape:
        ``(..., 2)`` and ``(..., 4)`` (broadcasting) to ``(..., 4)``.

    Returns:
        The boxes. Negative distances are passed through (a box with ``x2 < x1``): this is a
        decoder, the losses check their boxes.

    Examples:
        >>> import torch
        >>> from losskit.boxes import distance_to_box
        >>> distance_to_box(torch.tensor([[4.5, 2.5]]), torch.tensor([[1.0, 2.0, 3.0, 0.5]]))
        tensor([[3.5000, 0.5000, 7.5000, 3.0000]])

    References:
        FCOS (Tian et al., ICCV 2019); Ultralytics ``dist2bbox(distance, anchor_points)`` (its
        ``xywh=True`` is ``fmt="cxcywh"`` here; note the argument order: points first, as in
        :func:`box_to_distance`).
    """
    fmt = _check_fmt(fmt, AXIS_ALIGNED_FORMATS)
    lt, rb = distance.chunk(2, -1)
    return _from_xyxy(torch.cat((points - lt, points + rb), -1), fmt)


def box_to_distance(points: Tensor, boxes: Tensor, *, max_distance: float | None = None) -> Tensor:
    r"""Distances ``ltrb`` from points to the sides of ``xyxy`` boxes, the inverse of :func:`distance_to_box`.

    .. math::
        (l, t, r, b) = (p_x - x_1,\; p_y - y_1,\; x_2 - p_x,\; y_2 - p_y)

    Args:
        points: Anchor points ``(..., 2)``.
        boxes: ``xyxy`` boxes ``(..., 4)``.
        max_distance: If given, clamp the distances to ``[0, max_distance]`` (a point outside its
            box gets 0 on the far sides). A distribution head with :math:`n` bins reaches
            :math:`n - 1`; Ultralytics clamps to ``reg_max - 1 - 0.01``.

    Shape:
        ``(..., 2)`` and ``(..., 4)`` (broadcasting) to ``(..., 4)``.

    Returns:
        The distances.

    Examples:
        >>> import torch
        >>> from losskit.boxes import box_to_distance
        >>> box_to_distance(torch.tensor([[4.5, 2.5]]), torch.tensor([[3.5, 0.5, 7.5, 3.0]]))
        tensor([[1.0000, 2.0000, 3.0000, 0.5000]])

    References:
        Ultralytics ``bbox2dist(anchor_points, bbox, reg_max)``, whose clamp is
        ``max_distance=reg_max - 0.01`` here.
    """
    lo, hi = boxes.chunk(2, -1)
    distance = torch.cat((points - lo, hi - points), -1)
    if max_distance is not None:
        distance = distance.clamp(0.0, check_number("max_distance", max_distance, low=0.0))
    return distance


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


def _adjugate_form(dx: Tensor, dy: Tensor, boxes: Tensor) -> Tensor:
    r""":math:`d^\top \operatorname{adj}(\Sigma) d` for a box's covariance, in the box's frame:
    :math:`(h^2 (d \cdot u)^2 + w^2 (d \cdot v)^2) / 12` with :math:`u` along ``w``, :math:`v` across
    it (the adjugate of a 2x2 matrix is linear, so that of a sum is the sum of these)."""
    _, _, w, h, angle = boxes.unbind(-1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    along, across = dx * cos + dy * sin, dy * cos - dx * sin
    return (h * h * along * along + w * w * across * across) / 12


def _det_of_sum(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    r""":math:`\det(\Sigma_1 + \Sigma_2) = \det\Sigma_1 + \det\Sigma_2 + \operatorname{tr}(\operatorname{adj}
    \Sigma_1 \, \Sigma_2)`, every term non-negative (the last one in box 1's frame, with the
    angle :math:`\delta` between the boxes)."""
    _, _, w1, h1, angle1 = boxes1.unbind(-1)
    _, _, w2, h2, angle2 = boxes2.unbind(-1)
    turn = angle2 - angle1
    cos_sq, sin_sq = torch.cos(turn) ** 2, torch.sin(turn) ** 2
    var_w1, var_h1, var_w2, var_h2 = w1 * w1, h1 * h1, w2 * w2, h2 * h2  # 12 times the variances
    cross = var_h1 * (var_w2 * cos_sq + var_h2 * sin_sq) + var_w1 * (var_w2 * sin_sq + var_h2 * cos_sq)
    return (var_w1 * var_h1 + var_w2 * var_h2 + cross) / 144


def bhattacharyya(boxes1: Tensor, boxes2: Tensor, eps: float) -> Tensor:
    r"""Bhattacharyya distance of the boxes' Gaussians, clamped to ``[0, 100]`` (see :func:`probiou`).

    A pair with a box of area at most ``eps`` (a degenerate Gaussian) gets the bound, 100, with a
    zero gradient: its true distance is infinite.

    Both terms are written as sums of non-negative terms, so float32 keeps their digits for similar
    boxes (where the covariance term vanishes to second order) and for very different ones (a thin
    box against a small one, where the entries of :math:`\Sigma_1 + \Sigma_2` and the determinant
    ratio cancel). With :math:`\delta` the angle between the boxes, the covariance term is

    .. math::

        \tfrac12 \ln\frac{\det\Sigma}{\sqrt{\det\Sigma_1\det\Sigma_2}}
        = \tfrac12 \operatorname{log1p}\frac{(w_1h_1 - w_2h_2)^2 + \cos^2\delta\,(h_1w_2 - w_1h_2)^2
          + \sin^2\delta\,(h_1h_2 - w_1w_2)^2}{4\,w_1h_1w_2h_2},

    each difference taken from differences of the sides, and the centre term uses
    :math:`\det(\Sigma_1 + \Sigma_2)` and :math:`\operatorname{adj}(\Sigma_1 + \Sigma_2)` in each
    box's frame.
    """
    _, _, w1, h1, angle1 = boxes1.unbind(-1)
    _, _, w2, h2, angle2 = boxes2.unbind(-1)
    area1, area2 = w1 * h1, w2 * h2
    # A pair with a NaN coordinate is not degenerate: the NaN goes on to the result instead of
    # becoming the bound.
    degenerate = ((area1 <= eps) | (area2 <= eps)) & ~torch.isnan(boxes1.sum(-1) + boxes2.sum(-1))
    dx, dy = boxes2[..., 0] - boxes1[..., 0], boxes2[..., 1] - boxes1[..., 1]
    det_sum = torch.where(degenerate, 1.0, _det_of_sum(boxes1, boxes2))
    quad = (_adjugate_form(dx, dy, boxes1) + _adjugate_form(dx, dy, boxes2)) / det_sum  # d^T (2 S)^-1 d
    turn = angle2 - angle1
    size = w1 * (h1 - h2) + h2 * (w1 - w2)  # w1 h1 - w2 h2
    skew = h1 * (w2 - w1) + w1 * (h1 - h2)  # h1 w2 - w1 h2
    turned = h1 * (h2 - w1) + w1 * (h1 - w2)  # h1 h2 - w1 w2: small for the same box turned a quarter
    excess = ((size * size + torch.cos(turn) ** 2 * skew * skew + torch.sin(turn) ** 2 * turned * turned)
              / (4 * torch.where(degenerate, 1.0, area1 * area2)))
    distance = (quad / 4 + torch.log1p(excess) / 2).clamp(0.0, PROBIOU_BOUND)
    return torch.where(degenerate, PROBIOU_BOUND, distance)


def hellinger(distance: Tensor) -> Tensor:
    """Hellinger distance from a Bhattacharyya distance: ``sqrt(1 - exp(-B))`` (``expm1``-accurate)."""
    return safe_sqrt(-torch.expm1(-distance))


def probiou(boxes1: Tensor, boxes2: Tensor, *, aligned: bool = False, eps: float | None = None) -> Tensor:
    r"""ProbIoU of rotated boxes: one minus the Hellinger distance of their Gaussians.

    Each ``xywhr`` box becomes the Gaussian with its centre and the covariance of the uniform
    density on it, :math:`\Sigma = R_\theta \operatorname{diag}(w^2/12, h^2/12) R_\theta^\top`. The
    Bhattacharyya distance of two Gaussians and the Hellinger distance follow in closed form, and
    ProbIoU is a smooth stand-in for the rotated IoU that needs no polygon clipping:

    .. math::

        B_D = \tfrac18 (\mu_1 - \mu_2)^\top \Sigma^{-1} (\mu_1 - \mu_2)
            + \tfrac12 \ln\frac{\det \Sigma}{\sqrt{\det\Sigma_1 \det\Sigma_2}},
        \qquad \Sigma = \tfrac12(\Sigma_1 + \Sigma_2),

        \mathrm{ProbIoU} = 1 - \sqrt{1 - e^{-B_D}}.

    :math:`B_D` is clamped to [0, 100] (as Ultralytics does; :math:`e^{-100}` is 0 to every float
    dtype in use). ProbIoU is 1 for identical boxes (Ultralytics adds ``eps`` inside the square root,
    which leaves :math:`1 - \sqrt{\varepsilon} \approx 0.9997` there) and 0 for a box of area at most
    ``eps``. It is symmetric, invariant to moving both boxes, and to scaling both uniformly.

    Args:
        boxes1: Rotated boxes ``(cx, cy, w, h, angle)``, angle in radians, shape ``(..., N, 5)``.
        boxes2: Shape ``(..., M, 5)`` (pairwise) or broadcastable to ``boxes1`` (aligned).
        aligned: Compare box ``i`` with box ``i`` instead of every pair.
        eps: Area at or below which a box counts as degenerate; ``None`` picks :func:`default_eps`.

    Shape:
        Pairwise ``(..., N, M)``; aligned ``(..., N)``.

    Returns:
        ProbIoU in [0, 1], in the boxes' floating dtype.

    Raises:
        ValueError: For shapes that do not fit, or (value check) a negative width or height.

    Examples:
        >>> import torch
        >>> from losskit.boxes import probiou
        >>> box = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0]])
        >>> turned = torch.tensor([[0.0, 0.0, 2.0, 4.0, torch.pi / 2]])  # the same rectangle
        >>> probiou(box, torch.cat([box, turned, box + torch.tensor([4.0, 0, 0, 0, 0])]))
        tensor([[1.0000, 1.0000, 0.1186]])

    References:
        Llerena et al., "Gaussian Bounding Boxes and Probabilistic Intersection-over-Union for
        Object Detection", arXiv:2106.06072 (2021). Ultralytics ``probiou`` (the clamp to 100).
    """
    b1, b2, eps, out_dtype = _prepare_pair(boxes1, boxes2, "xywhr", aligned, eps)
    distance = bhattacharyya(b1, b2, eps)
    # 1 - sqrt(1 - e^-B) written without the subtraction: it keeps the digits of a small ProbIoU.
    return (torch.exp(-distance) / (1 + hellinger(distance))).to(out_dtype)


# --- rotated and 3-D boxes with yaw: exact polygon geometry -----------------------------------


def normalize_angle(angle: Tensor, period: float = math.pi) -> Tensor:
    r"""Angles wrapped into ``[-period / 2, period / 2)``.

    A rectangle turned by :math:`\pi` is the same rectangle, so every rotated measure here
    (:func:`rotated_box_iou`, :func:`probiou`, the Gaussian losses) is :math:`\pi`-periodic in each
    angle and needs no normalized input; this makes the representation unique (for labels, or to
    compare angles). The yaw of a 3-D box is a heading, so wrap it with ``period=2 * math.pi``.
    The geometry does not wrap angles itself: ``cos`` and ``sin`` of the given angle are more
    exact than those of a wrapped copy that has lost the low bits of :math:`\pi`.

    Examples:
        >>> normalize_angle(torch.tensor([math.pi / 2, math.pi, -3 * math.pi / 4]))
        tensor([-1.5708,  0.0000,  0.7854])
    """
    half = period / 2
    return torch.remainder(angle + half, period) - half


def _check_rotated(name: str, boxes: Tensor, fmt: str) -> None:
    """Value check of rotated boxes: sizes as :func:`check_boxes`, and a finite angle in every row."""
    check_boxes(name, boxes, fmt)
    if not checks_enabled() or boxes.numel() == 0:
        return
    bad = ~torch.isfinite(boxes[..., -1])
    if bool(bad.any()):
        flat = bad.reshape(-1)
        first = int(flat.nonzero()[0])
        row = boxes.reshape(-1, boxes.shape[-1])[first].tolist()
        raise ValueError(f"{name} has {int(flat.sum())} of {flat.numel()} boxes with a NaN or infinite angle "
                         f"(first at row {first} of the flattened boxes: {row}); angles are radians, any "
                         "finite value (normalize_angle wraps them)")


def _rect(boxes: Tensor, fmt: str) -> _polygon.Rect:
    """The rectangle of ``xywhr`` boxes, or the bird's-eye-view rectangle of ``xyzwlhr`` boxes
    (length along the heading)."""
    if fmt == "xywhr":
        cx, cy, w, h, angle = boxes.unbind(-1)
        return _polygon.rect(cx, cy, w, h, angle)
    x, y, _, w, length, _, yaw = boxes.unbind(-1)
    return _polygon.rect(x, y, length, w, yaw)


def _rotated_pair(boxes1: Tensor, boxes2: Tensor, fmt: str, aligned: bool, eps: float | None,
                  ) -> tuple[Tensor, Tensor, float, torch.dtype]:
    """Checked, paired boxes in float64, moved so that ``boxes2``'s centre is the origin.

    float64 because a close pair's ``1 - IoU`` is a difference of areas: float32 keeps about 4e-4 of
    it for 30-pixel boxes 5e-3 pixels apart. The move keeps the digits of large coordinates.
    """
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        _check_rotated(name, _check_box_tensor(name, boxes, fmt), fmt)
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    eps = _resolve_eps(eps, dtype)
    b1, b2 = _pair_up(boxes1.to(torch.float64), boxes2.to(torch.float64), aligned)
    centre = 3 if fmt == "xyzwlhr" else 2
    origin = torch.cat((b2[..., :centre].detach(), torch.zeros_like(b2[..., centre:])), -1)
    return b1 - origin, b2 - origin, eps, _result_dtype(dtype)


def rotated_iou_terms(boxes1: Tensor, boxes2: Tensor, fmt: str, kind: str, eps: float) -> tuple[Tensor, Tensor]:
    """``(IoU, penalty)`` of paired float64 ``xywhr`` or ``xyzwlhr`` boxes; the similarity of ``kind``
    is ``IoU - penalty`` (penalty 0 for ``"iou"``). See :func:`rotated_box_iou`."""
    r1, r2 = _rect(boxes1, fmt), _rect(boxes2, fmt)
    inter = _polygon.intersection_area(r1, r2, _RELATIVE_TOLERANCE)
    area1, area2 = boxes1[..., 2] * boxes1[..., 3], boxes2[..., 2] * boxes2[..., 3]
    if fmt == "xyzwlhr":
        bottom1, top1 = boxes1[..., 2] - boxes1[..., 5] / 2, boxes1[..., 2] + boxes1[..., 5] / 2
        bottom2, top2 = boxes2[..., 2] - boxes2[..., 5] / 2, boxes2[..., 2] + boxes2[..., 5] / 2
        overlap = torch.minimum(top1, top2) - torch.maximum(bottom1, bottom2)
        inter = inter * torch.relu(overlap)
        area1 = _product(boxes1[..., 3:6])
        area2 = _product(boxes2[..., 3:6])
        height = torch.maximum(top1, top2) - torch.minimum(bottom1, bottom2)
    union = area1 + area2 - inter
    iou = ratio(inter, union, eps)
    if kind == "iou":
        return iou, torch.zeros_like(iou)
    hull, diameter = _polygon.hull_area_and_diameter(r1, r2)
    if fmt == "xyzwlhr":
        hull, diameter = hull * height, diameter + height.square()
    if kind == "giou":
        return iou, ratio(hull - union, hull, eps)
    centres = 3 if fmt == "xyzwlhr" else 2
    rho = (boxes1[..., :centres] - boxes2[..., :centres]).square().sum(-1)
    return iou, ratio(rho, diameter, eps)


# Candidates of the intersection polygon within this fraction of the pair's size of the other box
# count as inside: float64 rounding of corners (about 1e-16 of it) must not drop the shared
# corners of coincident or touching boxes; an extra point this close moves the area by 1e-10.
_RELATIVE_TOLERANCE = 1e-10


def rotated_box_iou(boxes1: Tensor, boxes2: Tensor, *, kind: Literal["iou", "giou", "diou"] = "iou",
                    aligned: bool = False, eps: float | None = None) -> Tensor:
    r"""Exact IoU, GIoU or DIoU of rotated boxes ``(cx, cy, w, h, angle)``, by polygon clipping.

    The intersection of two rectangles is a convex polygon of at most 8 vertices, found among the
    corners of each box inside the other and the crossings of their edges, and measured with the
    shoelace formula (see :mod:`losskit._polygon`): the exact rotated IoU, differentiable in
    every coordinate, for all pairs at once. GIoU and DIoU come from the same code, with the
    **convex hull** of the two boxes as the enclosing shape, the "smallest enclosing convex
    object" of the GIoU paper (mmrotate's ``ConvexGIoULoss`` also uses the convex hull; some
    rotated GIoU codes use an enclosing rectangle instead, which gives larger penalties):

    .. math::

        \mathrm{IoU} = \frac{|A \cap B|}{|A \cup B|}, \qquad
        \mathrm{GIoU} = \mathrm{IoU} - \frac{|H| - |A \cup B|}{|H|}, \qquad
        \mathrm{DIoU} = \mathrm{IoU} - \frac{\rho^2}{d^2},

    with :math:`H` the convex hull of both boxes, :math:`\rho` the distance between the centres
    and :math:`d` the hull's diameter (the longest distance between two corners). For
    axis-aligned boxes :func:`box_iou`'s enclosing *box* is larger than the hull and its diagonal
    at least :math:`d`, so GIoU and DIoU differ from :func:`box_iou`'s there; the IoU is the same.
    All three are invariant to moving, turning and uniformly scaling both boxes, and
    :math:`\pi`-periodic in each angle.

    The polygon work is done in float64 (a close pair's :math:`1 - \mathrm{IoU}` is a difference
    of areas that float32 resolves to about 4e-4 relative), after moving both boxes so that the
    second box's centre is the origin; the result has the boxes' dtype. Zero-area boxes are valid:
    ratios with a denominator at most ``eps`` are 0, as in :func:`box_iou`.

    Args:
        boxes1: Rotated boxes, angle in radians, shape ``(..., N, 5)``.
        boxes2: Shape ``(..., M, 5)`` (pairwise) or broadcastable to ``boxes1`` (aligned).
        kind: ``"iou"``, ``"giou"`` or ``"diou"``.
        aligned: Compare box ``i`` with box ``i`` instead of every pair.
        eps: Degenerate-denominator threshold; ``None`` picks :func:`default_eps` of the dtype.

    Shape:
        Pairwise ``(..., N, 5)`` and ``(..., M, 5)`` to ``(..., N, M)``; aligned ``(..., N)``.

    Returns:
        The similarity, in the boxes' floating dtype (float32 for integer boxes).

    Raises:
        ValueError: For an unknown ``kind``, shapes that do not fit, or (value checks) a negative
            width or height, or a NaN or infinite angle (naming the row).

    Examples:
        >>> import math, torch
        >>> from losskit.boxes import rotated_box_iou
        >>> square = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]])
        >>> diamond = torch.tensor([[0.0, 0.0, 2.0, 2.0, math.pi / 4]])  # an octagon of area 8 (sqrt 2 - 1) in common
        >>> rotated_box_iou(square, diamond)  # 3.3137 / (8 - 3.3137)
        tensor([[0.7071]])
        >>> shifted = torch.tensor([[2.0, 0.0, 2.0, 2.0, 0.0]])  # touching along an edge: hull = union
        >>> rotated_box_iou(square, torch.cat([square, shifted]), kind="giou")
        tensor([[1., 0.]])

    References:
        Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019 (the enclosing convex
        object). Zheng et al., "Distance-IoU Loss", AAAI 2020. Zhou et al., "IoU Loss for 2D/3D
        Object Detection", 3DV 2019 (rotated IoU by polygon clipping). The same IoU as mmcv's
        ``box_iou_rotated`` and shapely's polygon intersection (the tests' reference).
    """
    check_one_of("kind", kind, ROTATED_IOU_KINDS)
    b1, b2, eps, out_dtype = _rotated_pair(boxes1, boxes2, "xywhr", aligned, eps)
    iou, penalty = rotated_iou_terms(b1, b2, "xywhr", kind, eps)
    return (iou - penalty).to(out_dtype)


def rotated_box_iou_3d(boxes1: Tensor, boxes2: Tensor, *, kind: Literal["iou", "giou", "diou"] = "iou",
                       aligned: bool = False, eps: float | None = None) -> Tensor:
    r"""Exact IoU, GIoU or DIoU of 3-D boxes with yaw ``(x, y, z, w, l, h, yaw)``.

    A box is its centre, its width ``w`` across the heading, its length ``l`` along the heading
    :math:`(\cos\psi, \sin\psi, 0)` and its height ``h`` along :math:`z`; the yaw :math:`\psi`
    turns about :math:`+z`, counter-clockwise seen from above (nuScenes' box and ``wlh``; see
    :func:`kitti_to_xyzwlhr` and :func:`nuscenes_to_xyzwlhr`). The intersection is the
    bird's-eye-view intersection of :func:`rotated_box_iou` times the overlap of the heights; the
    enclosing shape of GIoU is the BEV convex hull times the enclosing height, and DIoU's
    :math:`d^2` is that prism's squared diameter (the BEV hull's plus the enclosing height's
    square), with :math:`\rho` the 3-D distance of the centres:

    .. math::

        |A \cap B| = |A_{bev} \cap B_{bev}| \cdot \big[\min(z^{top}) - \max(z^{bottom})\big]_+, \qquad
        \mathrm{IoU} = \frac{|A \cap B|}{|A| + |B| - |A \cap B|}.

    Args:
        boxes1: Boxes of shape ``(..., N, 7)``.
        boxes2: Shape ``(..., M, 7)`` (pairwise) or broadcastable to ``boxes1`` (aligned).
        kind: ``"iou"``, ``"giou"`` or ``"diou"``.
        aligned: Compare box ``i`` with box ``i`` instead of every pair.
        eps: Degenerate-denominator threshold; ``None`` picks :func:`default_eps` of the dtype.

    Shape:
        Pairwise ``(..., N, 7)`` and ``(..., M, 7)`` to ``(..., N, M)``; aligned ``(..., N)``.

    Returns:
        The similarity, in the boxes' floating dtype.

    Raises:
        ValueError: For an unknown ``kind``, shapes that do not fit, or (value checks) a negative
            size, or a NaN or infinite yaw (naming the row).

    Examples:
        >>> import math, torch
        >>> from losskit.boxes import rotated_box_iou_3d
        >>> car = torch.tensor([[0.0, 0.0, 1.0, 2.0, 4.0, 2.0, 0.0]])
        >>> turned = torch.tensor([[0.0, 0.0, 1.5, 2.0, 4.0, 2.0, math.pi / 2]])  # BEV 2 x 2 in common, height 1.5
        >>> rotated_box_iou_3d(car, turned)  # 4 * 1.5 / (16 + 16 - 6)
        tensor([[0.2308]])

    References:
        Zhou et al., "IoU Loss for 2D/3D Object Detection", 3DV 2019; Caesar et al., "nuScenes",
        CVPR 2020 (box convention); mmdetection3d's rotated 3-D IoU (BEV overlap times height).
    """
    check_one_of("kind", kind, ROTATED_IOU_KINDS)
    b1, b2, eps, out_dtype = _rotated_pair(boxes1, boxes2, "xyzwlhr", aligned, eps)
    iou, penalty = rotated_iou_terms(b1, b2, "xyzwlhr", kind, eps)
    return (iou - penalty).to(out_dtype)


def kitti_to_xyzwlhr(boxes: Tensor) -> Tensor:
    r"""KITTI camera-frame labels ``(x, y, z, h, w, l, ry)`` to ``xyzwlhr`` boxes in a z-up frame.

    KITTI's object labels live in the rectified camera frame (x right, y **down**, z forward);
    ``(x, y, z)`` is the centre of the box's **bottom** face, the dimensions are ordered height,
    width, length, and ``ry`` turns about the camera's y axis, 0 facing the camera's x axis. The
    result is in the frame x forward, y left, z up (:math:`x' = z`, :math:`y' = -x`,
    :math:`z' = -y`, the orientation of KITTI's LiDAR frame, without the calibration between the
    sensors) with the centre moved up to the box's middle and the yaw
    :math:`\psi = -r_y - \pi/2` wrapped into :math:`[-\pi, \pi)`.

    Examples:
        >>> import torch
        >>> from losskit.boxes import kitti_to_xyzwlhr
        >>> kitti_to_xyzwlhr(torch.tensor([[1.0, 1.6, 10.0, 1.5, 1.6, 3.9, 0.0]]))  # facing the camera's right
        tensor([[10.0000, -1.0000, -0.8500,  1.6000,  3.9000,  1.5000, -1.5708]])

    References:
        Geiger et al., "Vision meets Robotics: The KITTI Dataset", IJRR 2013 (object label format).
    """
    boxes = _check_box_tensor("boxes", boxes, "xyzwlhr")
    x, y, z, h, w, length, ry = boxes.unbind(-1)
    yaw = normalize_angle(-ry - math.pi / 2, 2 * math.pi)
    return torch.stack((z, -x, -y + h / 2, w, length, h, yaw), -1)


def nuscenes_to_xyzwlhr(center: Tensor, wlh: Tensor, yaw: Tensor) -> Tensor:
    r"""nuScenes boxes (``center``, ``wlh``, yaw) to ``xyzwlhr``: the same convention, one tensor.

    A nuScenes ``Box`` has its centre (the box's middle), ``wlh`` = width, length (along the
    heading, the box's own x axis) and height, and an orientation quaternion; for upright boxes
    that is the yaw :math:`\psi` about +z (``Box.orientation.yaw_pitch_roll[0]``). This is exactly
    :func:`rotated_box_iou_3d`'s convention, so the conversion only stacks the parts (with the yaw
    wrapped into :math:`[-\pi, \pi)`).

    Examples:
        >>> import torch
        >>> from losskit.boxes import nuscenes_to_xyzwlhr
        >>> nuscenes_to_xyzwlhr(torch.tensor([[5.0, 2.0, 1.0]]), torch.tensor([[1.9, 4.6, 1.7]]), torch.tensor([0.5]))
        tensor([[5.0000, 2.0000, 1.0000, 1.9000, 4.6000, 1.7000, 0.5000]])

    References:
        Caesar et al., "nuScenes: A multimodal dataset for autonomous driving", CVPR 2020;
        nuscenes-devkit ``Box`` (``center``, ``wlh``, ``orientation``).
    """
    for name, value, width in (("center", center, 3), ("wlh", wlh, 3)):
        if check_tensor(name, value).dim() == 0 or value.shape[-1] != width:
            raise ValueError(f"{name} must have shape (..., {width}), got shape {tuple(value.shape)}")
    yaw = check_tensor("yaw", yaw)
    return torch.cat((center, wlh, normalize_angle(yaw, 2 * math.pi).unsqueeze(-1).to(center.dtype)), -1)
