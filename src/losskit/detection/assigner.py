r"""Task-aligned label assignment (TOOD), computed on candidate pairs only.

An assigner decides which anchors learn which object. The task-aligned assigner ranks the anchors
inside an object by how well the detector already does there, classification and localization
together, and keeps the best few. Every quantity lives on a *(object, anchor) candidate pair*, an
anchor whose point lies inside the object, so this implementation lists those pairs and works on
them alone: memory grows with the number of real candidates, not with
``images x max objects x anchors`` as in dense implementations, and 0 or thousands of objects per
image run the same code on CPU and GPU with the same result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from losskit._core.checks import check_bool, check_int, check_number, check_one_of
from losskit.boxes import box_convert, iou_family, pair_geometry
from losskit.detection.anchors import AnchorGrid

__all__ = ["Assignment", "TaskAlignedAssigner"]

OVERLAPS = ("ciou", "iou")


@dataclass
class Assignment:
    """What a label assigner decided, per anchor of every image (``B`` images, ``A`` anchors).

    Attributes:
        fg_mask: ``(B, A)`` bool, the anchors assigned to an object (foreground).
        target_gt: ``(B, A)`` long, the row of the assigned object in the target table, -1 for background.
        target_labels: ``(B, A)`` long, the assigned object's class (``num_classes`` for background).
        target_boxes: ``(B, A, 4)`` the assigned object's ``xyxy`` box in pixels (0 for background).
        target_scores: ``(B, A)`` the soft classification target of the assigned class (0 for
            background): the anchor's alignment, rescaled so that each object's best anchor gets
            that object's best overlap.
        alignment: ``(B, A)`` the anchor's alignment metric with its object (0 for background).
    """

    fg_mask: Tensor
    target_gt: Tensor
    target_labels: Tensor
    target_boxes: Tensor
    target_scores: Tensor
    alignment: Tensor

    def dense_scores(self, num_classes: int) -> Tensor:
        """The ``(B, A, num_classes)`` soft one-hot targets, as dense assigners return them."""
        out = self.target_scores.new_zeros((*self.target_scores.shape, num_classes + 1))
        out.scatter_(-1, self.target_labels.unsqueeze(-1), self.target_scores.unsqueeze(-1))
        return out[..., :num_classes]

    @property
    def num_foreground(self) -> Tensor:
        """Foreground anchors per image, ``(B,)``."""
        return self.fg_mask.sum(-1)


@dataclass
class CandidatePairs:
    """(object, anchor) pairs with what the predictions say there; the input of the assignment proper.

    ``gt`` indexes the target table, ``anchor`` the anchors of the object's image; each object's
    pairs must come in increasing anchor order (ties in the ranking go to the lower anchor).
    ``score`` is the predicted probability of the object's class at the anchor and ``pred_box``
    the predicted ``xyxy`` box there, in the same units as the object boxes.
    """

    gt: Tensor
    anchor: Tensor
    score: Tensor
    pred_box: Tensor


class TaskAlignedAssigner:
    r"""Task-aligned assignment of anchors to objects (TOOD), memory-bounded, with YOLO26's options.

    For an object :math:`g` and an anchor :math:`a` whose point lies inside it (by more than
    ``eps``; with ``small_object_size``, inside the box enlarged to that size, see below), the
    alignment metric is

    .. math::
        t_{ga} = s_{ga}^{\alpha}\, u_{ga}^{\beta}, \qquad
        u_{ga} = \max\big(0, \mathrm{CIoU}(b_g, \hat b_a)\big)\ \text{(or the IoU)},

    with :math:`s_{ga}` the predicted probability of :math:`g`'s class at :math:`a`. Then:

    1. each object keeps its ``topk`` candidates with the largest :math:`t > 0`;
    2. an anchor kept by several objects goes to the object, among all those it is a candidate
       of, with the largest overlap :math:`u` (ties: the first object of the table);
    3. with ``topk2`` (YOLO26's one-to-one branch: ``topk=7, topk2=1``), each object then keeps
       only its ``topk2`` anchors with the largest :math:`t`;
    4. the target score of the assigned class at an anchor is
       :math:`t_{ga} \cdot \max_{a'} u_{ga'} / (\max_{a'} t_{ga'} + \epsilon)` over the object's
       final anchors: each object's best anchor learns that object's best overlap.

    Ties in the ranking are broken among candidates only, towards the lower anchor index: the
    result does not depend on the device. Top-k never picks an anchor whose metric is 0 (it would
    get a zero target and zero weight in every loss term); such an anchor can still become
    foreground through step 2, when the object it goes to predicts probability 0 there, as in
    YOLOv8.

    **Ultralytics' top-k** (``dense_topk=True``). Ultralytics ranks each object's whole row of
    anchors with ``torch.topk`` (anchors outside the object count as metric 0), so an object with
    fewer than ``topk`` positive candidates also takes metric-0 anchors, in the order
    ``torch.topk`` gives equal values (on the CPU: among the first anchors of the row for rows of
    at least ``64 * topk`` anchors, from an introselect otherwise; CUDA has its own order).
    Those inside the object become foreground with target score 0, and they count as claims in
    step 2: an anchor that one object kept with a positive metric and another took with metric 0
    goes to the candidate object of largest overlap, which may be a third object. That moves
    targets and changes the loss (up to 1.4e-4 of the total and 6e-4 of a component in the
    crowded scenes measured). With ``dense_topk=True`` the selection (and ``topk2``'s) runs
    ``torch.topk`` on the same rows, objects in chunks, and reproduces Ultralytics on the same
    device (measured on the CPU); a contested anchor whose candidates all have overlap 0 goes to
    the first object of its image, as there.

    **Small objects** (STAL, YOLO26): with ``small_object_size=m``, for candidate selection only,
    a box side shorter than ``m`` pixels is widened to ``m`` about the box centre, so objects
    smaller than the stride still reach anchors; the metric and the losses use the real box.

    Args:
        topk: Candidates kept per object.
        num_classes: Number of classes (background gets label ``num_classes``).
        alpha: Exponent of the classification score.
        beta: Exponent of the overlap.
        overlap: ``"ciou"`` (YOLOv8/Ultralytics: CIoU clamped at 0) or ``"iou"`` (TOOD).
        small_object_size: STAL's minimum side in pixels for candidate selection, or ``None``.
        topk2: Anchors each object keeps after conflicts are resolved (one-to-one: 1), or ``None``.
        eps: Margin of the inside test and the division guard of step 4.
        dense_topk: Select with ``torch.topk`` over each object's dense row of anchors, as Ultralytics
            does (see above), instead of among positive candidates with ties to the lower anchor.

    Examples:
        >>> import torch
        >>> from losskit.detection import TaskAlignedAssigner, AnchorGrid
        >>> grid = AnchorGrid(sizes=((4, 4),), strides=(8.0,))
        >>> points, _ = grid.points()
        >>> pred_boxes = torch.cat([points * 8 - 6, points * 8 + 6], -1).expand(1, -1, -1)  # 12 px boxes
        >>> scores = torch.full((1, 16, 2), 0.5)
        >>> out = TaskAlignedAssigner(topk=3, num_classes=2)(
        ...     scores, pred_boxes, grid, gt_boxes=torch.tensor([[2.0, 2.0, 14.0, 14.0]]),
        ...     gt_labels=torch.tensor([1]), batch_idx=torch.tensor([0]))
        >>> # Anchors 0, 1, 4, 5 lie inside and tie exactly (by symmetry): the lower indices win. The
        >>> # best anchor's target is the best overlap, CIoU = 64/224 - 32/512 = 0.2232.
        >>> out.fg_mask.nonzero()[:, 1].tolist(), round(out.target_scores[0, 0].item(), 4)
        ([0, 1, 4], 0.2232)

    References:
        Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021. YOLOv8 (Ultralytics)
        for CIoU as the overlap and ``topk=10, alpha=0.5, beta=6``; YOLO26 (Ultralytics 8.4) for STAL
        and the one-to-one ``topk2``.
    """

    def __init__(self, topk: int = 10, num_classes: int = 80, alpha: float = 0.5, beta: float = 6.0, *,
                 overlap: str = "ciou", small_object_size: float | None = None, topk2: int | None = None,
                 eps: float = 1e-9, dense_topk: bool = False) -> None:
        for name, value in (("topk", topk), ("num_classes", num_classes)) + ((("topk2", topk2),) if topk2 else ()):
            check_int(name, value, low=1)
        check_one_of("overlap", overlap, OVERLAPS)
        self.topk, self.topk2, self.num_classes = topk, topk2, num_classes
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.beta = check_number("beta", beta, low=0.0)
        self.overlap = overlap
        self.small_object_size = (None if small_object_size is None
                                  else check_number("small_object_size", small_object_size, low=0.0))
        self.eps = check_number("eps", eps, low=0.0)
        check_bool("dense_topk", dense_topk)
        self.dense_topk = dense_topk

    def __repr__(self) -> str:
        return (f"TaskAlignedAssigner(topk={self.topk}, num_classes={self.num_classes}, alpha={self.alpha}, "
                f"beta={self.beta}, overlap={self.overlap!r}, small_object_size={self.small_object_size}, "
                f"topk2={self.topk2}, eps={self.eps}, dense_topk={self.dense_topk})")

    # --- dense convenience ---------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, pred_scores: Tensor, pred_boxes: Tensor, anchors: AnchorGrid | Tensor, gt_boxes: Tensor,
                 gt_labels: Tensor, batch_idx: Tensor) -> Assignment:
        """Assign from dense predictions.

        Args:
            pred_scores: ``(B, A, C)`` predicted class probabilities (after the sigmoid).
            pred_boxes: ``(B, A, 4)`` predicted ``xyxy`` boxes, in pixels.
            anchors: An :class:`AnchorGrid`, or ``(A, 2)`` anchor points in pixels (then the inside
                test runs over all anchors, objects in chunks).
            gt_boxes: ``(M, 4)`` object boxes, ``xyxy`` pixels.
            gt_labels: ``(M,)`` classes.
            batch_idx: ``(M,)`` image of each object.

        Returns:
            The :class:`Assignment`.
        """
        _check_dense_inputs(pred_scores, pred_boxes, anchors, gt_boxes, gt_labels, batch_idx, self.num_classes)
        num_images, num_anchors = pred_scores.shape[:2]
        gt, anchor = self.candidates(anchors, gt_boxes)
        image = batch_idx.long()[gt]
        pairs = CandidatePairs(gt, anchor, pred_scores[image, anchor, gt_labels.long()[gt]],
                               pred_boxes[image, anchor])
        return self.assign(pairs, gt_boxes, gt_labels, batch_idx, num_images, num_anchors)

    def candidates(self, anchors: AnchorGrid | Tensor, gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
        """``(gt, anchor)`` for every anchor point inside an object box (STAL-enlarged if set)."""
        boxes = self._selection_boxes(gt_boxes)
        if isinstance(anchors, AnchorGrid):
            return anchors.inside(boxes, self.eps)
        return _inside_points(anchors.to(boxes.dtype), boxes, self.eps)

    def _selection_boxes(self, boxes: Tensor) -> Tensor:
        if self.small_object_size is None:
            return boxes
        # Through centre and size for every box, as Ultralytics does, so boxes that are not
        # enlarged still go through the same rounding and the inside test agrees bit for bit.
        centred = box_convert(boxes, "xyxy", "cxcywh")
        size = centred[:, 2:]
        centred[:, 2:] = torch.where(size < self.small_object_size, torch.full_like(size, self.small_object_size),
                                     size)
        return box_convert(centred, "cxcywh", "xyxy")

    # --- the assignment proper -----------------------------------------------------------------

    @torch.no_grad()
    def assign(self, pairs: CandidatePairs, gt_boxes: Tensor, gt_labels: Tensor, batch_idx: Tensor,
               num_images: int, num_anchors: int) -> Assignment:
        """Assign from candidate pairs (see :class:`CandidatePairs`); the dense outputs are ``(B, A)``."""
        gt_labels, batch_idx = gt_labels.long(), batch_idx.long()
        gt, anchor = pairs.gt, pairs.anchor
        overlap = self._overlap(gt_boxes[gt].to(pairs.pred_box.dtype), pairs.pred_box)
        metric = pairs.score.to(overlap.dtype).pow(self.alpha) * overlap.pow(self.beta)
        slot = batch_idx[gt] * num_anchors + anchor  # (image, anchor) as one index
        slots = num_images * num_anchors

        if self.dense_topk:
            gt, slot, metric, overlap, final = self._dense_selection(gt, anchor, slot, metric, overlap, batch_idx,
                                                                     num_images, num_anchors)
        else:
            keep = _top_per_group(gt, metric, self.topk) & (metric > 0)
            final = _resolve_conflicts(keep, slot, gt, overlap, slots)
            if self.topk2 is not None:
                final &= _top_per_group(gt, torch.where(final, metric, -1.0), self.topk2)

        gt, slot, metric, overlap = gt[final], slot[final], metric[final], overlap[final]
        best_overlap = _group_max(overlap, gt, len(gt_boxes))
        best_metric = _group_max(metric, gt, len(gt_boxes))
        score = metric * best_overlap[gt] / (best_metric[gt] + self.eps)

        shape = (num_images, num_anchors)
        out = Assignment(
            fg_mask=torch.zeros(shape, dtype=torch.bool, device=gt_boxes.device),
            target_gt=torch.full(shape, -1, dtype=torch.long, device=gt_boxes.device),
            target_labels=torch.full(shape, self.num_classes, dtype=torch.long, device=gt_boxes.device),
            target_boxes=gt_boxes.new_zeros((*shape, gt_boxes.shape[-1])),
            target_scores=score.new_zeros(shape),
            alignment=metric.new_zeros(shape),
        )
        out.fg_mask.view(-1)[slot] = True
        out.target_gt.view(-1)[slot] = gt
        out.target_labels.view(-1)[slot] = gt_labels[gt]
        out.target_boxes.view(-1, gt_boxes.shape[-1])[slot] = gt_boxes[gt]
        out.target_scores.view(-1)[slot] = score
        out.alignment.view(-1)[slot] = metric
        return out

    def _dense_selection(self, gt: Tensor, anchor: Tensor, slot: Tensor, metric: Tensor, overlap: Tensor,
                         batch_idx: Tensor, num_images: int, num_anchors: int) -> tuple[Tensor, ...]:
        """Steps 1-3 as Ultralytics takes them: ``torch.topk`` over each object's dense row of anchors.

        Returns ``(gt, slot, metric, overlap, final)`` over the pairs, with a pair of metric and
        overlap 0 added for each contested anchor whose candidates all have overlap 0: it goes to
        the first object of its image, candidate or not (Ultralytics' argmax over its padded table).
        """
        first_gt = _first_row_of_image(batch_idx, num_images)
        num_gt, slots = len(batch_idx), num_images * num_anchors
        keep = _DenseRows(gt, anchor, num_gt, num_anchors).top(metric, self.topk)
        final = _resolve_conflicts(keep, slot, gt, overlap, slots, first_gt[batch_idx[gt]])
        orphan = _unresolved(keep, final, slot, slots)
        if len(orphan):
            zeros = metric.new_zeros(len(orphan))
            gt, anchor = torch.cat((gt, first_gt[orphan // num_anchors])), torch.cat((anchor, orphan % num_anchors))
            slot, metric, overlap = torch.cat((slot, orphan)), torch.cat((metric, zeros)), torch.cat((overlap, zeros))
            final = torch.cat((final, torch.ones_like(orphan, dtype=torch.bool)))
        if self.topk2 is not None:
            final &= _DenseRows(gt, anchor, num_gt, num_anchors).top(torch.where(final, metric, 0.0), self.topk2)
        return gt, slot, metric, overlap, final

    def _overlap(self, gt_boxes: Tensor, pred_boxes: Tensor) -> Tensor:
        """Per pair, CIoU (or IoU) clamped at 0; float32 at least (the metric raises it to the 6th power)."""
        dtype = torch.promote_types(pred_boxes.dtype, torch.float32)
        kind = "iou" if self.overlap == "iou" else "ciou"
        g = pair_geometry(gt_boxes.to(dtype), pred_boxes.to(dtype), 1e-7, kind=kind)
        return iou_family(g, kind, 1e-7).clamp(min=0)


def _check_dense_inputs(pred_scores: Tensor, pred_boxes: Tensor, anchors: AnchorGrid | Tensor, gt_boxes: Tensor,
                        gt_labels: Tensor, batch_idx: Tensor, num_classes: int) -> None:
    if pred_scores.dim() != 3 or pred_scores.shape[-1] != num_classes:
        raise ValueError(f"pred_scores must have shape (B, A, num_classes={num_classes}), got "
                         f"{tuple(pred_scores.shape)}")
    b, a = pred_scores.shape[:2]
    if pred_boxes.shape != (b, a, 4):
        raise ValueError(f"pred_boxes must have shape (B, A, 4) = {(b, a, 4)}, got {tuple(pred_boxes.shape)}")
    count = anchors.num_anchors if isinstance(anchors, AnchorGrid) else (anchors.shape[0] if anchors.dim() == 2 else -1)
    if count != a:
        raise ValueError(f"anchors describe {count} anchor points, the predictions {a}")
    m = gt_boxes.shape[0]
    if gt_boxes.shape != (m, 4) or gt_labels.shape != (m,) or batch_idx.shape != (m,):
        raise ValueError(f"gt_boxes (M, 4), gt_labels (M,) and batch_idx (M,) must agree, got {tuple(gt_boxes.shape)}, "
                         f"{tuple(gt_labels.shape)} and {tuple(batch_idx.shape)}")


# --- group operations over pairs --------------------------------------------------------------


def _top_per_group(group: Tensor, value: Tensor, k: int) -> Tensor:
    """Mask of the ``k`` largest ``value`` per ``group``; ties go to the earlier pair (stable sorts)."""
    by_value = torch.sort(value, descending=True, stable=True).indices
    order = by_value[torch.sort(group[by_value], stable=True).indices]  # by group, then value, then position
    sorted_group = group[order]
    first = torch.searchsorted(sorted_group, sorted_group, right=False)  # start of each pair's group
    rank = torch.arange(len(order), device=group.device) - first
    mask = torch.zeros_like(value, dtype=torch.bool)
    mask[order] = rank < k
    return mask


def _group_max(value: Tensor, group: Tensor, groups: int) -> Tensor:
    return value.new_zeros(groups).scatter_reduce(0, group, value, reduce="amax", include_self=True)


def _resolve_conflicts(keep: Tensor, slot: Tensor, gt: Tensor, overlap: Tensor, slots: int,
                       first_gt: Tensor | None = None) -> Tensor:
    """Give an anchor kept by several objects to its highest-overlap candidate object.

    The choice runs over every object the anchor is a candidate of, kept or not (as YOLOv8 does);
    equal overlaps go to the first object of the table. ``first_gt`` (per pair, the first row of
    its image), where given, takes an anchor whose candidates all have overlap 0 (possible only
    when metric-0 picks count as claims), as Ultralytics' argmax over its padded table does; if
    that object is not a candidate of the anchor, no pair wins (see :func:`_unresolved`).
    """
    claims = torch.zeros(slots, dtype=torch.long, device=slot.device).index_add_(
        0, slot, keep.long())
    contested = claims[slot] > 1
    if not bool(contested.any()):  # the common case: nothing to resolve
        return keep
    best = _group_max(torch.where(contested, overlap, -1.0), slot, slots)
    is_best = contested & (overlap == best[slot])
    if first_gt is not None:
        is_best &= (best[slot] > 0) | (gt == first_gt)
    first = torch.full((slots,), torch.iinfo(torch.long).max, dtype=torch.long, device=gt.device)
    first = first.scatter_reduce(0, slot[is_best], gt[is_best], reduce="amin", include_self=True)
    winner = is_best & (gt == first[slot])
    return torch.where(contested, winner, keep)


def _unresolved(keep: Tensor, final: Tensor, slot: Tensor, slots: int) -> Tensor:
    """The slots that several pairs claimed (``keep``) and none won (``final``)."""
    claims = torch.zeros(slots, dtype=torch.long, device=slot.device).index_add_(0, slot, keep.long())
    won = torch.zeros(slots, dtype=torch.long, device=slot.device).index_add_(0, slot, final.long())
    return ((claims > 1) & (won == 0)).nonzero().squeeze(1)


def _first_row_of_image(batch_idx: Tensor, num_images: int) -> Tensor:
    """``(num_images,)`` the first row of each image in the target table (the row count if none)."""
    rows = torch.arange(len(batch_idx), device=batch_idx.device)
    first = torch.full((num_images,), len(batch_idx), dtype=torch.long, device=batch_idx.device)
    return first.scatter_reduce(0, batch_idx, rows, reduce="amin", include_self=True)


class _DenseRows:
    """Each object's dense row of anchors (a value at its candidate pairs, 0 elsewhere), for ``torch.topk``.

    Rows are built a chunk of objects at a time, so memory stays at ``chunk_elements`` values
    whatever the number of objects; ``torch.topk`` treats every row alone, so the picks do not
    depend on the chunking.
    """

    def __init__(self, gt: Tensor, anchor: Tensor, num_gt: int, num_anchors: int,
                 chunk_elements: int = 1 << 20) -> None:
        self.gt, self.anchor, self.num_gt, self.num_anchors = gt, anchor, num_gt, num_anchors
        self.by_gt = torch.sort(gt, stable=True).indices
        self.key, self.by_key = torch.sort(gt * num_anchors + anchor)  # every pair's (object, anchor), sorted
        self.rows_per_chunk = max(1, chunk_elements // max(num_anchors, 1))
        starts = torch.arange(0, num_gt + 1, self.rows_per_chunk, device=gt.device)
        self.bounds = torch.searchsorted(gt[self.by_gt], starts).tolist() + [len(gt)]

    def top(self, value: Tensor, k: int) -> Tensor:
        """Mask of the pairs ``torch.topk(row, k)`` picks in their object's row."""
        picked = torch.zeros(len(value), dtype=torch.bool, device=value.device)
        k = min(k, self.num_anchors)
        if not len(value) or k == 0:
            return picked
        for chunk, start in enumerate(range(0, self.num_gt, self.rows_per_chunk)):
            stop = min(start + self.rows_per_chunk, self.num_gt)
            pairs = self.by_gt[self.bounds[chunk]:self.bounds[chunk + 1]]
            rows = value.new_zeros((stop - start, self.num_anchors))
            rows[self.gt[pairs] - start, self.anchor[pairs]] = value[pairs]
            top = torch.topk(rows, k, dim=-1).indices
            key = (torch.arange(start, stop, device=value.device)[:, None] * self.num_anchors + top).flatten()
            at = torch.searchsorted(self.key, key).clamp(max=len(self.key) - 1)
            found = self.key[at] == key  # a picked anchor outside the object is no pair: dropped
            picked[self.by_key[at[found]]] = True
        return picked


def _inside_points(points: Tensor, boxes: Tensor, eps: float, chunk_elements: int = 1 << 22,
                   ) -> tuple[Tensor, Tensor]:
    """``(box, point)`` pairs with the point strictly inside the box, objects in chunks (bounded memory)."""
    per_chunk = max(1, chunk_elements // max(len(points), 1))
    boxes_out, points_out = [], []
    for start in range(0, len(boxes), per_chunk):
        b = boxes[start:start + per_chunk, None]
        inside = ((points[:, 0] - b[..., 0] > eps) & (points[:, 1] - b[..., 1] > eps)
                  & (b[..., 2] - points[:, 0] > eps) & (b[..., 3] - points[:, 1] > eps))
        box, point = inside.nonzero(as_tuple=True)
        boxes_out.append(box + start)
        points_out.append(point)
    if not boxes_out:
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return empty, empty
    return torch.cat(boxes_out), torch.cat(points_out)

