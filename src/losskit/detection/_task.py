"""What the YOLO segmentation and pose criteria share: per-branch inputs, an assigner whose overlap
a task may replace, and the result assembled from the detection terms and the task's own terms.

The detection terms (box, cls, dfl or l1) and the assignment come from :mod:`losskit.detection.yolo`
unchanged; a task adds per-image columns computed from the foreground the assignment picked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from losskit.detection.anchors import AnchorGrid
from losskit.detection.assigner import Assignment, CandidatePairs, TaskAlignedAssigner
from losskit.detection.yolo import (
    BRANCHES,
    DetectionLossResult,
    YOLOLoss,
    _branch_loss,
    _Levels,
    _prepare_targets,
    _Targets,
)
from losskit.distributed import global_normalizer

__all__: list[str] = []

PairOverlap = Callable[[CandidatePairs, Tensor], Tensor]
CandidateFilter = Callable[[AnchorGrid, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


class TaskAssigner(TaskAlignedAssigner):
    """A task-aligned assigner whose per-pair overlap and candidate list a task may replace.

    ``pair_overlap(pairs, box_overlap)`` returns the overlap of every candidate pair from the box
    overlap (CIoU clamped at 0) the plain assigner would use; ``candidate_filter(grid, boxes, gt,
    anchor)`` thins the candidate pairs. Both are set for one forward pass and cleared after it.
    """

    pair_overlap: PairOverlap | None = None
    candidate_filter: CandidateFilter | None = None

    def candidates(self, anchors: AnchorGrid | Tensor, gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
        gt, anchor = super().candidates(anchors, gt_boxes)
        if self.candidate_filter is not None and isinstance(anchors, AnchorGrid):
            gt, anchor = self.candidate_filter(anchors, gt_boxes, gt, anchor)
        return gt, anchor

    @torch.no_grad()
    def assign(self, pairs: CandidatePairs, gt_boxes: Tensor, gt_labels: Tensor, batch_idx: Tensor,
               num_images: int, num_anchors: int) -> Assignment:
        self._pairs = pairs
        try:
            return super().assign(pairs, gt_boxes, gt_labels, batch_idx, num_images, num_anchors)
        finally:
            self._pairs = None

    def _overlap(self, gt_boxes: Tensor, pred_boxes: Tensor) -> Tensor:
        box_overlap = super()._overlap(gt_boxes, pred_boxes)
        if self.pair_overlap is None or getattr(self, "_pairs", None) is None:
            return box_overlap
        return self.pair_overlap(self._pairs, box_overlap)


@dataclass
class Branch:
    """One branch's inputs: the per-level maps and the task's flat per-anchor tensors."""

    levels: _Levels
    extras: dict[str, Tensor]


def within_image_rank(image: Tensor, num_images: int) -> Tensor:
    """Each target row's position among the rows of its image, in table order (Ultralytics' per-image index).

    >>> within_image_rank(torch.tensor([0, 1, 0, 1, 1]), 2).tolist()
    [0, 0, 1, 1, 2]
    """
    order = torch.sort(image, stable=True).indices
    counts = torch.bincount(image, minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(image)
    rank[order] = torch.arange(len(image), device=image.device) - starts[image[order]]
    return rank


def per_image_sum(values: Tensor, image: Tensor, num_images: int) -> Tensor:
    """Sum of per-row values ``(N,)`` by image, accumulated in float64, returned in their dtype (``(B,)``)."""
    out = torch.zeros(num_images, dtype=torch.float64, device=values.device)
    return out.index_add(0, image, values.double()).to(values.dtype)


class TaskLoss(YOLOLoss):
    """The detection criterion with a task's terms added (see :class:`YOLOSegmentLoss`, :class:`YOLOPoseLoss`).

    Subclasses define ``task_names`` (their components, in Ultralytics' order of loss items),
    ``extra_keys`` (the per-anchor tensors a branch's dict carries besides ``"maps"``),
    ``_check_targets``, ``_prepare_branch`` (set the assigner hooks) and ``_task_terms`` (per-image
    columns).
    """

    extra_keys: tuple[str, ...] = ()
    optional_keys: tuple[str, ...] = ()

    def __init__(self, num_classes: int, *, assigner_class: type[TaskAlignedAssigner] = TaskAssigner,
                 **options) -> None:
        super().__init__(num_classes, **options)
        self.assigners = {name: _rebuild(a, assigner_class) for name, a in self.assigners.items()}

    @property
    def detection_names(self) -> tuple[str, str, str]:
        return super().component_names

    def forward(self, preds: Mapping, targets: Mapping[str, Tensor]) -> DetectionLossResult:
        branch_preds = self._branch_dicts(preds)
        results: dict[str, DetectionLossResult] = {}
        exact: dict[str, Tensor] = {}
        prepared = task_targets = None
        for name, branch_pred in branch_preds.items():
            branch = self._branch(branch_pred, name)
            if prepared is None:
                prepared = _prepare_targets(targets, branch.levels.num_images, self.num_classes,
                                            branch.levels.image_size, self.clip_boxes)
                task_targets = self._check_targets(targets, prepared, branch)
            assigner = self.assigners[name]
            self._prepare_branch(assigner, branch, prepared, task_targets)
            try:
                detection, assignment = _branch_loss(branch.levels, prepared, assigner, self)
            finally:
                assigner.pair_overlap = assigner.candidate_filter = None
            task = self._task_terms(branch, prepared, task_targets, assignment)
            per_image = self._order(detection, task)
            if self.scale_by_batch:
                per_image = per_image * branch.levels.num_images
            exact[name] = per_image
            results[name] = self._result(per_image, assignment, branch.levels.maps[0].dtype)
        if not self.end2end:
            return results["one2many"]
        weights = self.branch_weights
        per_image = sum(weights[name] * exact[name] for name in results)
        return self._result(per_image, results["one2one"].assignment,
                            branch_preds["one2one"]["maps"][0].dtype, branches=results)

    def _count_normalizer(self, count: int, dtype: torch.dtype, device: torch.device) -> Tensor | float:
        """``max(count, 1)``; with ``distributed=True`` the count summed over the ranks, over the world size
        (:func:`losskit.distributed.global_normalizer`): every rank must call it, with or without objects."""
        if self.distributed:
            return global_normalizer(torch.tensor(float(count), dtype=dtype, device=device), min_count=1.0)
        return float(max(count, 1))

    # --- hooks --------------------------------------------------------------------------------

    def _order(self, detection: Tensor, task: Tensor) -> Tensor:
        raise NotImplementedError

    def _check_targets(self, targets: Mapping[str, Tensor], prepared: _Targets, branch: Branch) -> object:
        raise NotImplementedError

    def _prepare_branch(self, assigner: TaskAssigner, branch: Branch, prepared: _Targets, task_targets) -> None:
        """Set the assigner's hooks for this branch (nothing by default)."""

    def _task_terms(self, branch: Branch, prepared: _Targets, task_targets, assignment: Assignment) -> Tensor:
        raise NotImplementedError

    # --- inputs -------------------------------------------------------------------------------

    def _branch_dicts(self, preds: object) -> dict[str, Mapping]:
        keys = ("maps", *self.extra_keys)
        if not self.end2end:
            if isinstance(preds, Mapping) and set(BRANCHES) <= set(preds):
                raise ValueError("preds has 'one2many' and 'one2one': build the criterion with end2end=True")
            return {"one2many": self._need_keys(preds, keys, "preds")}
        if not isinstance(preds, Mapping) or set(preds) != set(BRANCHES):
            found = f" with keys {sorted(preds)}" if isinstance(preds, Mapping) else ""
            raise ValueError("with end2end=True, preds must be a dict {'one2many': {...}, 'one2one': {...}}, "
                             f"got {type(preds).__name__}{found}")
        return {name: self._need_keys(preds[name], keys, f"preds['{name}']") for name in BRANCHES}

    @staticmethod
    def _need_keys(value: object, keys: Sequence[str], what: str) -> Mapping:
        if not isinstance(value, Mapping) or not set(keys) <= set(value):
            found = f" with keys {sorted(value)}" if isinstance(value, Mapping) else ""
            raise ValueError(f"{what} must be a dict with keys {list(keys)}, got {type(value).__name__}{found}")
        return value

    def _branch(self, pred: Mapping, name: str) -> Branch:
        levels = _Levels(pred["maps"], self.strides, self.reg_max, self.num_classes)
        extras = {k: pred[k] for k in (*self.extra_keys, *self.optional_keys) if pred.get(k) is not None}
        for key, value in extras.items():
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise ValueError(f"preds['{key}'] must be a floating tensor, got {type(value).__name__}")
            if value.shape[0] != levels.num_images or value.device != levels.maps[0].device:
                raise ValueError(f"preds['{key}'] has batch size {value.shape[0]} on {value.device}; the maps have "
                                 f"{levels.num_images} on {levels.maps[0].device}")
        return Branch(levels, extras)


def flat_per_anchor(value: Tensor, key: str, channels: int, num_anchors: int) -> Tensor:
    """``(B, channels, A)`` checked, as Ultralytics' heads concatenate their per-level outputs."""
    if value.dim() != 3 or value.shape[1] != channels or value.shape[2] != num_anchors:
        raise ValueError(f"preds['{key}'] must have shape (B, {channels}, A={num_anchors}) (levels concatenated, "
                         f"row-major within a level), got {tuple(value.shape)}")
    return value


def _rebuild(assigner: TaskAlignedAssigner, cls: type[TaskAlignedAssigner]) -> TaskAlignedAssigner:
    out = cls(assigner.topk, assigner.num_classes, assigner.alpha, assigner.beta, overlap=assigner.overlap,
              small_object_size=assigner.small_object_size, topk2=assigner.topk2, eps=assigner.eps,
              dense_topk=assigner.dense_topk)
    return out
