"""Box format conversion, areas, and boxes as distances from points (anchor-free detection heads)."""

from __future__ import annotations

import torch
from torch import Tensor

from losskit._core.checks import check_number
from losskit._core.numerics import float_compute_dtype as _compute_dtype
from losskit.boxes._checks import (
    AXIS_ALIGNED_FORMATS,
    ROTATED_FORMATS,
    _check_box_tensor,
    _check_fmt,
    _result_dtype,
    check_boxes,
)

__all__ = ["box_area", "box_convert", "box_to_distance", "distance_to_box"]

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
