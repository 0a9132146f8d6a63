r"""Task-aligned assignment for rotated (oriented) boxes: ProbIoU overlaps and the rotated inside test.

The assignment proper (top-k, conflicts, ``topk2``, soft targets) is
:class:`~losskit.detection.TaskAlignedAssigner`'s, on candidate pairs; only the two geometric
parts change: which anchors are candidates of a rotated box, and the overlap of a predicted
rotated box with an object.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losskit.boxes import probiou
from losskit.detection.anchors import AnchorGrid
from losskit.detection.assigner import Assignment, CandidatePairs, TaskAlignedAssigner

__all__ = ["RotatedTaskAlignedAssigner", "rotated_corners"]


def rotated_corners(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Three corners ``a, b, d`` of ``xywhr`` boxes, with :math:`b - a` along the height side and
    :math:`d - a` along the width side.

    With :math:`u = \tfrac w2 (\cos\theta, \sin\theta)` and :math:`v = \tfrac h2 (-\sin\theta, \cos\theta)`:
    :math:`a = c + u + v`, :math:`b = c + u - v`, :math:`d = c - u + v` (the fourth is :math:`c - u - v`),
    each ``(..., 2)``; computed in this order so that the inside test agrees bit for bit with
    Ultralytics' corners.

    Examples:
        >>> import torch
        >>> a, b, d = rotated_corners(torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0]]))
        >>> a.tolist(), b.tolist(), d.tolist()
        ([[2.0, 1.0]], [[2.0, -1.0]], [[-2.0, 1.0]])
    """
    centre, w, h, angle = boxes[..., :2], boxes[..., 2:3], boxes[..., 3:4], boxes[..., 4:5]
    cos, sin = torch.cos(angle), torch.sin(angle)
    u = torch.cat((w / 2 * cos, w / 2 * sin), -1)
    v = torch.cat((-h / 2 * sin, h / 2 * cos), -1)
    return centre + u + v, centre + u - v, centre - u + v


def _inside_rotated(points: Tensor, boxes: Tensor) -> Tensor:
    r"""Per pair, whether the point lies in the closed rectangle: :math:`0 \le (p - a)\cdot(b - a) \le |b - a|^2`
    and likewise along :math:`d - a` (Ultralytics' rule: edges included, no margin)."""
    a, b, d = rotated_corners(boxes)
    ab, ad = b - a, d - a
    apx, apy = points[..., 0] - a[..., 0], points[..., 1] - a[..., 1]
    along_ab = apx * ab[..., 0] + apy * ab[..., 1]
    along_ad = apx * ad[..., 0] + apy * ad[..., 1]
    return ((along_ab >= 0) & (along_ab <= (ab * ab).sum(-1))
            & (along_ad >= 0) & (along_ad <= (ad * ad).sum(-1)))


class RotatedTaskAlignedAssigner(TaskAlignedAssigner):
    r"""Task-aligned assignment of anchors to rotated objects (YOLOv8-OBB / YOLO26-OBB).

    As :class:`TaskAlignedAssigner` (metric :math:`t = s^\alpha u^\beta`, top-k, conflicts to the
    largest overlap, ``topk2``, soft targets), with boxes as ``xywhr`` pixels (angle in radians) and:

    - **candidates**: an anchor point is a candidate of an object when it lies in the closed rotated
      rectangle (edges included), as Ultralytics' rotated assigner tests it;
    - **STAL** (``small_object_size=m``): for candidate selection only, a side shorter than ``m``
      pixels becomes ``m`` (width and height separately, about the centre, at the same angle);
    - **overlap**: :math:`u = \max(0, \mathrm{ProbIoU})` (:func:`losskit.boxes.probiou`) of the object
      and the predicted box; the ``overlap`` option is not used.

    Candidate pairs are listed from each box's axis-aligned extent on the anchor grid, so memory
    grows with the candidates, not with objects times anchors.

    The result's ``target_boxes`` are ``(B, A, 5)`` ``xywhr`` pixels.

    Examples:
        >>> import torch
        >>> from losskit.detection import AnchorGrid, RotatedTaskAlignedAssigner
        >>> grid = AnchorGrid(sizes=((4, 4),), strides=(8.0,))
        >>> points, _ = grid.points()
        >>> pred = torch.cat([points * 8, torch.full((16, 2), 12.0), torch.zeros(16, 1)], -1)[None]
        >>> out = RotatedTaskAlignedAssigner(topk=3, num_classes=1)(
        ...     torch.full((1, 16, 1), 0.5), pred, grid,
        ...     gt_boxes=torch.tensor([[16.0, 12.0, 24.0, 6.0, 0.0]]),  # a flat box over one row of anchors
        ...     gt_labels=torch.tensor([0]), batch_idx=torch.tensor([0]))
        >>> # Anchors 4-7 (x = 4, 12, 20, 28) are candidates, the two on the box's ends included (closed
        >>> # rectangle); 5 and 6 overlap best, then 4 and 7 tie and the lower anchor wins.
        >>> out.fg_mask.nonzero()[:, 1].tolist()
        [4, 5, 6]

    References:
        Feng et al., "TOOD", ICCV 2021; Llerena et al., "Gaussian Bounding Boxes and Probabilistic
        Intersection-over-Union", arXiv:2106.06072. Ultralytics ``RotatedTaskAlignedAssigner`` (8.4.190)
        for the inside rule, STAL and ProbIoU as the overlap.
    """

    @torch.no_grad()
    def __call__(self, pred_scores: Tensor, pred_boxes: Tensor, anchors: AnchorGrid | Tensor, gt_boxes: Tensor,
                 gt_labels: Tensor, batch_idx: Tensor) -> Assignment:
        """Assign from dense predictions: ``pred_scores (B, A, C)``, ``pred_boxes (B, A, 5)`` and
        ``gt_boxes (M, 5)`` ``xywhr`` pixels, ``gt_labels (M,)``, ``batch_idx (M,)``; ``anchors`` an
        :class:`AnchorGrid` or ``(A, 2)`` points in pixels."""
        b, a = pred_scores.shape[:2] if pred_scores.dim() == 3 else (-1, -1)
        if pred_scores.dim() != 3 or pred_scores.shape[-1] != self.num_classes or pred_boxes.shape != (b, a, 5):
            raise ValueError(f"pred_scores must be (B, A, num_classes={self.num_classes}) and pred_boxes (B, A, 5), "
                             f"got {tuple(pred_scores.shape)} and {tuple(pred_boxes.shape)}")
        m = gt_boxes.shape[0]
        if gt_boxes.shape != (m, 5) or gt_labels.shape != (m,) or batch_idx.shape != (m,):
            raise ValueError(f"gt_boxes (M, 5), gt_labels (M,) and batch_idx (M,) must agree, got "
                             f"{tuple(gt_boxes.shape)}, {tuple(gt_labels.shape)} and {tuple(batch_idx.shape)}")
        gt, anchor = self.candidates(anchors, gt_boxes)
        image = batch_idx.long()[gt]
        pairs = CandidatePairs(gt, anchor, pred_scores[image, anchor, gt_labels.long()[gt]],
                               pred_boxes[image, anchor])
        return self.assign(pairs, gt_boxes, gt_labels, batch_idx, b, a)

    def candidates(self, anchors: AnchorGrid | Tensor, gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
        """``(gt, anchor)`` for every anchor point in a rotated object box (STAL-enlarged if set), each
        object's anchors in increasing order."""
        boxes = self._selection_boxes(gt_boxes)
        if isinstance(anchors, AnchorGrid):
            points = torch.cat(anchors.points(dtype=boxes.dtype, device=boxes.device), -1)
            points = points[:, :2] * points[:, 2:]  # pixels, as make_anchors(...) * stride
            gt, anchor = anchors.inside(_extent(boxes), 0.0)  # a superset: the corners' extent, widened
        else:
            points = anchors.to(boxes.dtype)
            gt = torch.arange(len(boxes), device=boxes.device).repeat_interleave(len(points))
            anchor = torch.arange(len(points), device=boxes.device).repeat(len(boxes))
        keep = _inside_rotated(points[anchor], boxes[gt])
        gt, anchor = gt[keep], anchor[keep]
        order = torch.sort(gt * max(len(points), 1) + anchor).indices  # by object, then anchor
        return gt[order], anchor[order]

    def _selection_boxes(self, boxes: Tensor) -> Tensor:
        if self.small_object_size is None:
            return boxes
        size = boxes[:, 2:4]
        grown = torch.where(size < self.small_object_size, torch.full_like(size, self.small_object_size), size)
        return torch.cat((boxes[:, :2], grown, boxes[:, 4:]), -1)

    def _overlap(self, gt_boxes: Tensor, pred_boxes: Tensor) -> Tensor:
        """Per pair, ProbIoU clamped at 0, in float32 at least. Only squared sides enter the Gaussian, so a
        predicted box of negative side (a raw-distance head) counts by its magnitude."""
        dtype = torch.promote_types(pred_boxes.dtype, torch.float32)
        pred = pred_boxes.to(dtype)
        pred = torch.cat((pred[:, :2], pred[:, 2:4].abs(), pred[:, 4:]), -1)
        # in float64: the float32 covariance term cancels for boxes of very different sizes
        # (see losskit.detection.obb._exact_probiou)
        return probiou(gt_boxes.double(), pred.double(), aligned=True, eps=1e-7).to(dtype).clamp(min=0)


def _extent(boxes: Tensor) -> Tensor:
    """``xyxy`` extent of rotated boxes, widened by a pixel so that rounding cannot drop a candidate."""
    a, b, d = rotated_corners(boxes)
    c = b + d - a
    corners = torch.stack((a, b, c, d), -2)
    return torch.cat((corners.amin(-2) - 1, corners.amax(-2) + 1), -1)
