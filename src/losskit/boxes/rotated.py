"""Rotated boxes and 3-D boxes with yaw: exact IoU, GIoU and DIoU by polygon clipping
(:mod:`losskit._polygon`), angle wrapping, and the KITTI and nuScenes box conventions."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from losskit import _polygon
from losskit._core.checks import check_one_of, check_tensor, checks_enabled
from losskit.boxes._checks import _check_box_tensor, _resolve_eps, _result_dtype, check_boxes
from losskit.boxes.axis_aligned import _pair_up, ratio
from losskit.boxes.formats import _product

__all__ = ["kitti_to_xyzwlhr", "normalize_angle", "nuscenes_to_xyzwlhr", "rotated_box_iou", "rotated_box_iou_3d"]

ROTATED_IOU_KINDS: tuple[str, ...] = ("iou", "giou", "diou")


def normalize_angle(angle: Tensor, period: float = math.pi, *, low: float | None = None) -> Tensor:
    r"""Angles brought into ``[low, low + period)`` by whole periods (``low`` defaults to ``-period / 2``).

    A rectangle turned by :math:`\pi` is the same rectangle, so every rotated measure here
    (:func:`rotated_box_iou`, :func:`probiou`, the Gaussian losses) is :math:`\pi`-periodic in each
    angle and needs no normalized input; this makes the representation unique (for labels, or to
    compare angles). The yaw of a 3-D box is a heading, so wrap it with ``period=2 * math.pi``;
    Ultralytics' oriented-box data uses :math:`[-\pi/4, 3\pi/4)`: ``low=-math.pi / 4``. Angles
    already in range come back unchanged, bit for bit. The geometry does not wrap angles itself:
    ``cos`` and ``sin`` of the given angle are more exact than those of a wrapped copy that has lost
    the low bits of :math:`\pi`.

    Examples:
        >>> normalize_angle(torch.tensor([math.pi / 2, math.pi, -3 * math.pi / 4]))
        tensor([-1.5708,  0.0000,  0.7854])
        >>> normalize_angle(torch.tensor([0.5, -1.0, 3.0], dtype=torch.float64), low=-math.pi / 4).tolist() == [
        ...     0.5, -1.0 + math.pi, 3.0 - math.pi]
        True
    """
    low = -period / 2 if low is None else low
    turns = torch.floor((angle - low) / period)
    return torch.where(turns == 0, angle, angle - turns * period)


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
