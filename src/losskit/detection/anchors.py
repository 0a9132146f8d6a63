"""Anchor points of a feature pyramid and the decoding of distribution (DFL) box heads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from losskit.boxes import box_to_distance, distance_to_box

__all__ = ["AnchorGrid", "bbox2dist", "dfl_decode", "dist2bbox", "make_anchors"]

# The names detection code already knows (Ultralytics, YOLOv6, PP-YOLOE); points come first in both,
# as in losskit.boxes.
dist2bbox = distance_to_box
bbox2dist = box_to_distance


def _level_size(shape: object, level: int) -> tuple[int, int]:
    """(H, W) of a level given as a feature map ``(B, C, H, W)`` or as its ``(H, W)``."""
    if isinstance(shape, Tensor) and shape.dim() >= 3:
        return int(shape.shape[-2]), int(shape.shape[-1])
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"feature_shapes[{level}] must be a feature map (B, C, H, W) or an (H, W) pair, "
                         f"got {shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"feature_shapes[{level}] must have H, W >= 1, got {(h, w)}")
    return h, w


def make_anchors(feature_shapes: Sequence[object], strides: Sequence[float], offset: float = 0.5, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 ) -> tuple[Tensor, Tensor]:
    r"""Cell-centre anchor points of every level of a feature pyramid, in grid units, and their strides.

    Level :math:`i` with an :math:`H_i \times W_i` map contributes the points
    :math:`(x + o, y + o)` for every cell, row by row (``y`` outer, ``x`` inner), which is the
    order of ``feature_map.flatten(2)``; levels are concatenated in order. Multiply the points by
    the strides for pixels.

    Args:
        feature_shapes: Per level, a feature map ``(B, C, H, W)`` or its ``(H, W)``.
        strides: Per level, the stride in pixels.
        offset: Where in its cell a point sits; 0.5 is the centre.
        dtype: dtype of the outputs (a feature map's own dtype when maps are given).
        device: Device of the outputs (a feature map's own device when maps are given).

    Shape:
        Returns ``(A, 2)`` points and ``(A, 1)`` strides with :math:`A = \sum_i H_i W_i`.

    Returns:
        ``(points, strides)``.

    Raises:
        ValueError: Different numbers of levels and strides, or a malformed level.

    Examples:
        >>> from losskit.detection import make_anchors
        >>> points, strides = make_anchors([(2, 2), (1, 1)], strides=[8, 16])
        >>> points.tolist(), strides.flatten().tolist()
        ([[0.5, 0.5], [1.5, 0.5], [0.5, 1.5], [1.5, 1.5], [0.5, 0.5]], [8.0, 8.0, 8.0, 8.0, 16.0])

    References:
        FCOS / YOLOv8 anchor points (Ultralytics ``make_anchors(feats, strides, 0.5)``).
    """
    feature_shapes, strides = list(feature_shapes), [float(s) for s in strides]
    if len(feature_shapes) != len(strides) or not strides:
        raise ValueError(f"feature_shapes and strides need one entry per level, got {len(feature_shapes)} "
                         f"and {len(strides)}")
    first = feature_shapes[0]
    if isinstance(first, Tensor) and first.dim() >= 3:
        dtype = first.dtype if first.is_floating_point() else dtype
        device = first.device if device is None else device
    points, stride_column = [], []
    for level, (shape, stride) in enumerate(zip(feature_shapes, strides, strict=True)):
        h, w = _level_size(shape, level)
        xs = torch.arange(w, dtype=dtype, device=device) + offset
        ys = torch.arange(h, dtype=dtype, device=device) + offset
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x, grid_y), -1).reshape(-1, 2))
        stride_column.append(torch.full((h * w, 1), stride, dtype=dtype, device=device))
    return torch.cat(points), torch.cat(stride_column)


def dfl_decode(logits: Tensor, reg_max: int) -> Tensor:
    r"""Expected side distances of a distribution (DFL) box head: :math:`\sum_k k\,\mathrm{softmax}(x)_k`.

    Args:
        logits: ``(..., 4 * reg_max)``: for each side in ``ltrb`` order, ``reg_max`` bin logits.
            With ``reg_max=1`` the head regresses the distances directly and they are returned as given.
        reg_max: Bins per side (16 for YOLOv8, 1 for YOLO26's direct regression).

    Shape:
        ``(..., 4 * reg_max)`` to ``(..., 4)``, in bin (grid) units.

    Returns:
        The distances, in ``[0, reg_max - 1]`` for ``reg_max > 1``.

    Examples:
        >>> import torch
        >>> from losskit.detection import dfl_decode
        >>> dfl_decode(torch.zeros(1, 4 * 3), reg_max=3)  # uniform over bins 0, 1, 2
        tensor([[1., 1., 1., 1.]])

    References:
        Li et al., "Generalized Focal Loss", NeurIPS 2020 (the integral of the distribution).
    """
    if reg_max < 1 or logits.shape[-1] != 4 * reg_max:
        raise ValueError(f"logits must have a last dimension of 4 * reg_max = {4 * reg_max}, got shape "
                         f"{tuple(logits.shape)}")
    if reg_max == 1:
        return logits
    bins = torch.arange(reg_max, dtype=logits.dtype, device=logits.device)
    return logits.unflatten(-1, (4, reg_max)).softmax(-1) @ bins


@dataclass(frozen=True)
class AnchorGrid:
    """The anchor points of a feature pyramid, kept as a grid so that the points inside a box can be listed.

    Listing them from the box's extent costs memory in proportion to the points found, where
    testing every point against every box costs ``boxes x anchors``.

    Attributes:
        sizes: ``(H, W)`` of each level.
        strides: Stride of each level, in pixels.
        offset: Position of a point in its cell (0.5: the centre).
    """

    sizes: tuple[tuple[int, int], ...]
    strides: tuple[float, ...]
    offset: float = 0.5

    @property
    def num_anchors(self) -> int:
        return sum(h * w for h, w in self.sizes)

    @property
    def level_starts(self) -> list[int]:
        """Index of each level's first anchor in the concatenated order of :func:`make_anchors`."""
        starts, total = [], 0
        for h, w in self.sizes:
            starts.append(total)
            total += h * w
        return starts

    def points(self, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
               ) -> tuple[Tensor, Tensor]:
        """``(points, strides)`` as :func:`make_anchors` gives them (grid units)."""
        return make_anchors(self.sizes, self.strides, self.offset, dtype=dtype, device=device)

    def inside(self, boxes: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        r"""Every (box, anchor) pair whose point lies strictly inside the box, by more than ``eps``.

        Args:
            boxes: ``(M, 4)`` ``xyxy`` boxes in pixels.
            eps: The margin: :math:`p_x - x_1 > \epsilon`, :math:`x_2 - p_x > \epsilon` and
                likewise in y, with the point :math:`p = (i + o) \cdot s` in pixels.

        Returns:
            ``(box_index, anchor_index)``, level by level, and within a level by box then anchor;
            so each box's anchors come in increasing anchor order. One host sync per level (the
            number of pairs decides the output size).
        """
        boxes_out, anchors_out = [], []
        for (h, w), stride, start in zip(self.sizes, self.strides, self.level_starts, strict=True):
            box, anchor = self._inside_level(boxes, h, w, stride, eps)
            boxes_out.append(box)
            anchors_out.append(anchor + start)
        return torch.cat(boxes_out), torch.cat(anchors_out)

    def _inside_level(self, boxes: Tensor, h: int, w: int, stride: float, eps: float) -> tuple[Tensor, Tensor]:
        # The cells that can hold a point inside each box, from its extent (one more on each side
        # than strictly needed, against rounding); then the exact test on those cells only.
        span = boxes / stride - self.offset
        first = span[:, :2].floor().clamp(min=0).long()
        last = torch.minimum(span[:, 2:].ceil().long(), torch.tensor([w - 1, h - 1], device=boxes.device))
        extent = (last - first + 1).clamp(min=0)  # (M, 2): columns, rows
        counts = extent[:, 0] * extent[:, 1]
        box = torch.repeat_interleave(torch.arange(len(boxes), device=boxes.device), counts)
        k = torch.arange(len(box), device=boxes.device) - (torch.cumsum(counts, 0) - counts)[box]
        cols = extent[box, 0]
        ix, iy = first[box, 0] + k % cols.clamp(min=1), first[box, 1] + k // cols.clamp(min=1)
        # The point exactly as make_anchors(...) * stride computes it, so the test agrees bit for bit.
        px = (ix.to(boxes.dtype) + self.offset) * stride
        py = (iy.to(boxes.dtype) + self.offset) * stride
        x1, y1, x2, y2 = boxes[box].unbind(-1)
        keep = (px - x1 > eps) & (py - y1 > eps) & (x2 - px > eps) & (y2 - py > eps)
        return box[keep], (iy * w + ix)[keep]
