r"""The YOLO-style detection criterion: task-aligned assignment, then IoU, DFL (or L1) and BCE terms.

What a YOLOv8/YOLO11/YOLO26 head trains with, as one standalone module: it takes the head's
per-level maps and the usual target table, assigns anchors to objects
(:class:`~losskit.detection.TaskAlignedAssigner`), and returns the total with its named components,
per-image losses and the assignment.

**Memory.** Assignment works on candidate pairs (anchor inside object), so crowded images cost
memory in proportion to their real candidates. The classification term is computed without a
dense target tensor (binary cross-entropy against a one-hot soft target is
:math:`\mathrm{softplus}(x) - x\,y`, and :math:`y` is nonzero only at foreground anchors), and the
gradient of all three terms is written straight into the gradient of each feature map.

**Host syncs.** Listing candidate pairs and foreground anchors sizes tensors by data, so a forward
pass synchronizes with the device a few times (as every YOLO criterion does); it is not meant for
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from losskit._core.checks import check_bool, check_int, check_number, check_one_of, checks_enabled
from losskit._core.registry import register_class
from losskit.boxes import IOU_KINDS, box_convert, box_to_distance, distance_to_box, iou_family, pair_geometry
from losskit.detection.anchors import AnchorGrid, dfl_decode
from losskit.detection.assigner import Assignment, CandidatePairs, TaskAlignedAssigner
from losskit.distributed import global_normalizer
from losskit.functional.detection import distribution_focal_loss

__all__ = ["DetectionLossResult", "YOLOLoss", "one_to_many_weight"]

BRANCHES = ("one2many", "one2one")


def one_to_many_weight(progress: float, start: float = 0.8, end: float = 0.1) -> float:
    r"""YOLO26's progressive weight of the one-to-many branch (ProgLoss): linear from ``start`` to ``end``.

    .. math:: w_{o2m}(f) = \mathrm{end} + (\mathrm{start} - \mathrm{end})(1 - f), \qquad w_{o2o} = 1 - w_{o2m}

    with :math:`f \in [0, 1]` the fraction of training done (Ultralytics: epochs done over
    ``epochs - 1``, updated at each epoch's end).

    Examples:
        >>> from losskit.detection import one_to_many_weight
        >>> one_to_many_weight(0.0), one_to_many_weight(0.5), one_to_many_weight(1.0)
        (0.8, 0.45, 0.1)
    """
    progress = min(max(check_number("progress", progress), 0.0), 1.0)
    return round(end + (start - end) * (1.0 - progress), 12)


@dataclass
class DetectionLossResult:
    """The detection loss with everything a training loop logs or inspects.

    Attributes:
        total: The scalar to call ``backward()`` on.
        components: ``"box"`` (the IoU term), ``"cls"`` and ``"dfl"`` (or ``"l1"`` with
            ``reg_max=1``), gains applied; they sum to ``total``. Each is differentiable.
        per_image: ``(B,)`` each image's share; sums to ``total``.
        per_image_components: ``(B, 3)`` each image's share of each component, in the order of
            ``components``.
        assignment: The label assignment (of the one-to-one branch in end-to-end mode).
        branches: End-to-end mode: the ``"one2many"`` and ``"one2one"`` results, before their
            branch weights.
    """

    total: Tensor
    components: dict[str, Tensor]
    per_image: Tensor
    per_image_components: Tensor
    assignment: Assignment
    branches: dict[str, DetectionLossResult] = field(default_factory=dict)

    def items(self) -> dict[str, float]:
        """The components as Python floats, for logging (one host sync)."""
        values = torch.stack(list(self.components.values())).detach().tolist()
        return dict(zip(self.components, values, strict=True))


# --- targets ------------------------------------------------------------------------------------


@dataclass
class _Targets:
    boxes: Tensor  # (M, 4) xyxy pixels, in the computation dtype
    labels: Tensor  # (M,) long
    image: Tensor  # (M,) long


def target_table(batch: Mapping[str, Tensor], device: torch.device, box_width: int,
                 box_layout: str) -> tuple[Tensor, Tensor, Tensor]:
    """Ultralytics' target table ``{"batch_idx", "cls", "bboxes"}`` as flat tensors on ``device``,
    its shapes checked: ``bboxes (M, box_width)`` (``box_layout`` names the columns), ``cls (M,)``
    or ``(M, 1)``, ``batch_idx (M,)``."""
    if not isinstance(batch, Mapping) or not {"batch_idx", "cls", "bboxes"} <= set(batch):
        raise ValueError("targets must be a dict with 'batch_idx' (M,), 'cls' (M,) or (M, 1) and 'bboxes' "
                         f"(M, {box_width}), got {type(batch).__name__}"
                         + (f" with keys {sorted(batch)}" if isinstance(batch, Mapping) else ""))
    bboxes = torch.as_tensor(batch["bboxes"], device=device)
    cls = torch.as_tensor(batch["cls"], device=device)
    image = torch.as_tensor(batch["batch_idx"], device=device)
    m = bboxes.shape[0] if bboxes.dim() == 2 else -1
    if bboxes.dim() != 2 or bboxes.shape[1] != box_width:
        raise ValueError(f"targets['bboxes'] must have shape (M, {box_width}) ({box_layout}), got "
                         f"{tuple(bboxes.shape)}")
    if cls.reshape(-1).shape[0] != m or cls.dim() > 2 or (cls.dim() == 2 and cls.shape[1] != 1):
        raise ValueError(f"targets['cls'] must have shape ({m},) or ({m}, 1), got {tuple(cls.shape)}")
    if image.dim() != 1 or image.shape[0] != m:
        raise ValueError(f"targets['batch_idx'] must have shape ({m},), got {tuple(image.shape)}")
    return bboxes, cls.reshape(-1), image.reshape(-1)


def _prepare_targets(batch: Mapping[str, Tensor], num_images: int, num_classes: int, image_size: Tensor,
                     clip: bool = True) -> _Targets:
    """The target table (normalized ``cxcywh``) as pixel ``xyxy`` boxes (clipped to the image), checked."""
    bboxes, cls, image = target_table(batch, image_size.device, 4, "normalized cx, cy, w, h")
    m = bboxes.shape[0]
    if checks_enabled() and m:
        _check_target_values(bboxes, cls, image, num_images, num_classes)
    # Scaled, then centre -/+ half size (Ultralytics' order of operations: boxes agree bit for bit).
    size = image_size.flip(0).repeat(2)  # (W, H, W, H)
    boxes = box_convert(bboxes.to(image_size.dtype) * size, "cxcywh", "xyxy")
    if clip:
        boxes = torch.minimum(boxes.clamp(min=0), size)
    return _Targets(boxes, cls.long(), image.long())


def _check_target_values(bboxes: Tensor, cls: Tensor, image: Tensor, num_images: int, num_classes: int) -> None:
    def fail(what: str, bad: Tensor) -> None:
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets: {what} (row {row}: bboxes={bboxes[row].tolist()}, cls={cls[row].item()}, "
                         f"batch_idx={image[row].item()})")

    checks = [
        (~torch.isfinite(bboxes).all(-1), "a box is not finite"),
        ((bboxes[:, 2:] < 0).any(-1), "a box has a negative width or height (x2 < x1 after conversion)"),
        (((bboxes[:, :2] - bboxes[:, 2:] / 2 >= 1) | (bboxes[:, :2] + bboxes[:, 2:] / 2 <= 0)).any(-1),
         "a box lies entirely outside the image (bboxes are normalized cx, cy, w, h in [0, 1])"),
        ((cls < 0) | (cls >= num_classes) | (cls != cls.floor()), f"a class is not an integer in [0, {num_classes})"),
        ((image < 0) | (image >= num_images) | (image != image.floor()),
         f"a batch_idx is not an integer in [0, {num_images}) (the batch has {num_images} images)"),
    ]
    for bad, what in checks:
        if bool(bad.any()):
            fail(what, bad)


# --- the head's maps ----------------------------------------------------------------------------


class _Levels:
    """Per-level head maps ``(B, 4 * reg_max + C, H, W)`` addressed by flat anchor index."""

    def __init__(self, maps: Sequence[Tensor], strides: Sequence[float], reg_max: int, num_classes: int) -> None:
        if isinstance(maps, Tensor) or not isinstance(maps, Sequence) or len(maps) != len(strides):
            raise ValueError(f"preds must be a list of {len(strides)} feature maps (one per stride {tuple(strides)}), "
                             f"got {type(maps).__name__}" + (f" of length {len(maps)}" if isinstance(maps, Sequence)
                                                             else ""))
        channels = 4 * reg_max + num_classes
        for i, m in enumerate(maps):
            if not isinstance(m, Tensor) or m.dim() != 4 or m.shape[1] != channels or not m.is_floating_point():
                got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
                raise ValueError(f"preds[{i}] must be a floating (B, 4 * reg_max + num_classes = {channels}, H, W) "
                                 f"map, got {got}")
            if m.shape[0] != maps[0].shape[0] or m.device != maps[0].device:
                raise ValueError(f"preds[{i}] has batch size {m.shape[0]} on {m.device}; preds[0] has "
                                 f"{maps[0].shape[0]} on {maps[0].device}")
        self.maps = list(maps)
        self.box_channels = 4 * reg_max
        self.grid = AnchorGrid(tuple((m.shape[2], m.shape[3]) for m in maps), tuple(float(s) for s in strides))
        self.starts = torch.tensor(self.grid.level_starts, device=maps[0].device)
        self.num_images = maps[0].shape[0]
        # float32 at least (half maps are computed in float32), float64 stays float64
        self.dtype = torch.promote_types(maps[0].dtype, torch.float32)
        self.image_size = torch.tensor(maps[0].shape[2:], device=maps[0].device, dtype=self.dtype) * strides[0]

    def split(self, anchor: Tensor) -> list[tuple[int, Tensor, Tensor, Tensor]]:
        """Per level: (level, positions in ``anchor``, row, column), for gathers and scatters."""
        level = torch.bucketize(anchor, self.starts, right=True) - 1
        out = []
        for i, (_h, w) in enumerate(self.grid.sizes):
            where = (level == i).nonzero().squeeze(1)
            local = anchor[where] - self.grid.level_starts[i]
            out.append((i, where, local // w, local % w))
        return out

    def gather(self, image: Tensor, anchor: Tensor, channel: Tensor | slice) -> Tensor:
        """Detached values at (image, channel, anchor): ``(N,)`` for a channel per row, ``(N, K)`` for a slice."""
        width = (channel.stop - channel.start,) if isinstance(channel, slice) else ()
        out = self.maps[0].new_empty((len(anchor), *width), dtype=self.dtype)
        for i, where, row, col in self.split(anchor):
            ch = channel if isinstance(channel, slice) else channel[where]
            out[where] = self.maps[i].detach()[image[where], ch, row, col].to(self.dtype)
        return out


# --- one branch ---------------------------------------------------------------------------------


@dataclass
class _Foreground:
    image: Tensor  # (F,)
    anchor: Tensor  # (F,)
    label: Tensor  # (F,)
    score: Tensor  # (F,) soft target of the assigned class
    box_grad: Tensor | None = None  # (F, 4 * reg_max): d(box term)/d logits
    third_grad: Tensor | None = None  # (F, 4 * reg_max): d(dfl or l1 term)/d logits


class _BranchGradient(torch.autograd.Function):
    """Per-image component losses ``(B, 3)`` whose gradient is written straight into each map's."""

    @staticmethod
    def forward(ctx, per_image: Tensor, plan: _BranchPlan, *maps: Tensor) -> Tensor:
        ctx.plan = plan
        ctx.save_for_backward(*maps)
        return per_image.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        return (None, None, *ctx.plan.map_gradients(ctx.saved_tensors, grad, ctx.needs_input_grad[2:]))


@dataclass
class _BranchPlan:
    levels: _Levels
    fg: _Foreground
    cls_scale: Tensor  # cls gain / normalizer
    class_weights: Tensor | None

    def map_gradients(self, maps: Sequence[Tensor], grad: Tensor, needed: Sequence[bool]) -> list[Tensor | None]:
        """d(sum_b,k grad[b, k] * per_image[b, k]) / d map, for each map."""
        r, fg = self.levels.box_channels, self.fg
        cls_factor = (grad[:, 1] * self.cls_scale).view(-1, 1, 1, 1)  # per image
        if self.class_weights is not None:
            cls_factor = cls_factor * self.class_weights.view(1, -1, 1, 1)
        box_grad = self.foreground_gradient(grad)
        label_weight = 1.0 if self.class_weights is None else self.class_weights[fg.label]
        fg_cls = grad[fg.image, 1] * self.cls_scale * label_weight * fg.score  # the -x*y part of BCE
        out: list[Tensor | None] = [None] * len(maps)
        for i, where, row, col in self.levels.split(fg.anchor):
            if not needed[i]:
                continue
            m = maps[i]
            g = torch.empty_like(m)
            g[:, :r].zero_()
            # BCE's gradient sigmoid(x) - y: the sigmoid everywhere, then -y at the foreground.
            cls = g[:, r:]
            if m.dtype in (torch.float32, torch.float64):
                torch.sigmoid(m[:, r:], out=cls)
                cls.mul_(cls_factor.to(m.dtype))
            else:
                cls.copy_(torch.sigmoid(m[:, r:].float()) * cls_factor)
            image = fg.image[where]
            cls.index_put_((image, fg.label[where], row, col), -fg_cls[where].to(m.dtype), accumulate=True)
            g[image, :r, row, col] = box_grad[where].to(m.dtype)
            out[i] = g
        return out

    def foreground_gradient(self, grad: Tensor) -> Tensor:
        """``(F, box channels)``: the gradient in the foreground anchors' box logits (box and third terms)."""
        fg = self.fg
        return grad[fg.image, 0, None] * fg.box_grad + grad[fg.image, 2, None] * fg.third_grad


def _branch_loss(levels: _Levels, targets: _Targets, assigner: TaskAlignedAssigner, loss: YOLOLoss,
                 ) -> tuple[Tensor, Assignment]:
    """Per-image ``(B, 3)`` [box, cls, dfl-or-l1] losses (gains applied) and the assignment."""
    grid, num_anchors = levels.grid, levels.grid.num_anchors
    device = levels.maps[0].device
    points, strides = grid.points(dtype=levels.dtype, device=device)  # grid units

    # Assignment on candidate pairs: scores and decoded boxes only where an anchor is inside an object.
    gt, anchor = assigner.candidates(grid, targets.boxes)
    image = targets.image[gt]
    slot, where = torch.unique(image * num_anchors + anchor, return_inverse=True)
    u_image, u_anchor = slot // num_anchors, slot % num_anchors
    box_logits = levels.gather(u_image, u_anchor, slice(0, levels.box_channels))
    u_boxes = distance_to_box(points[u_anchor], loss.decode(box_logits))
    pairs = CandidatePairs(gt, anchor,
                           torch.sigmoid(levels.gather(image, anchor, levels.box_channels + targets.labels[gt])),
                           (u_boxes * strides[u_anchor])[where])
    assignment = assigner.assign(pairs, targets.boxes, targets.labels, targets.image, levels.num_images, num_anchors)

    fg_slot = assignment.fg_mask.view(-1).nonzero().squeeze(1)
    fg = _Foreground(fg_slot // num_anchors, fg_slot % num_anchors, assignment.target_labels.view(-1)[fg_slot],
                     assignment.target_scores.view(-1)[fg_slot])
    # distributed: max(global sum, 1) / world size, exact under DDP (see losskit.distributed)
    score_sum = fg.score.sum()
    normalizer = global_normalizer(score_sum, min_count=1.0) if loss.distributed else score_sum.clamp(min=1)
    need_grad = torch.is_grad_enabled() and any(m.requires_grad for m in levels.maps)

    box, third = _box_terms(loss, levels, fg, assignment.target_boxes.view(-1, 4)[fg_slot], points, strides,
                            normalizer, need_grad)
    cls = _cls_term(loss, levels, fg) * (loss.cls_gain / normalizer)
    per_image = torch.stack((box, cls, third), -1)
    if need_grad:
        plan = _BranchPlan(levels, fg, loss.cls_gain / normalizer, loss.class_weights)
        per_image = _BranchGradient.apply(per_image, plan, *levels.maps)
    return per_image, assignment


def _box_terms(loss: YOLOLoss, levels: _Levels, fg: _Foreground, target_px: Tensor, points: Tensor,
               strides: Tensor, normalizer: Tensor, need_grad: bool) -> tuple[Tensor, Tensor]:
    """Per-image IoU term and DFL (or L1) term; their gradients in the foreground logits go to ``fg``."""
    logits = levels.gather(fg.image, fg.anchor, slice(0, levels.box_channels))
    point, stride = points[fg.anchor], strides[fg.anchor]
    target = target_px / stride  # grid units, as the head predicts
    with torch.enable_grad():
        logits.requires_grad_(need_grad)
        g = pair_geometry(distance_to_box(point, loss.decode(logits)), target, 1e-7, kind=loss.box_kind)
        box = (1 - iou_family(g, loss.box_kind, 1e-7)) * fg.score * (loss.box_gain / normalizer)
        if loss.reg_max > 1:
            distances = box_to_distance(point, target, max_distance=loss.reg_max - 1 - loss.dfl_clamp_margin)
            per_side = distribution_focal_loss(logits.view(-1, 4, loss.reg_max), distances,
                                               clamp_margin=loss.dfl_clamp_margin, reduction="none")
        else:  # YOLO26: L1 on the distances as fractions of the image size
            scale = stride / levels.image_size.flip(0).repeat(2)  # (F, 4): stride / (W, H, W, H)
            per_side = (logits * scale - box_to_distance(point, target) * scale).abs()
        third = per_side.mean(-1) * fg.score * (loss.third_gain / normalizer)
        if need_grad and len(logits):
            fg.box_grad = torch.autograd.grad(box.sum(), logits)[0]
            fg.third_grad = torch.autograd.grad(third.sum(), logits)[0]
        elif need_grad:
            fg.box_grad = fg.third_grad = logits.new_zeros(logits.shape)
    per_image = _per_image_sum(torch.stack((box.detach(), third.detach()), -1), fg.image, levels.num_images)
    return per_image[:, 0], per_image[:, 1]


def _cls_term(loss: YOLOLoss, levels: _Levels, fg: _Foreground) -> Tensor:
    """Per-image sum of BCE(x, y) = softplus(x) - x * y over anchors and classes, without a dense y."""
    r = levels.box_channels
    weights = None if loss.class_weights is None else loss.class_weights.view(1, -1, 1, 1)
    total = fg.score.new_zeros(levels.num_images)
    for m in levels.maps:
        spread = F.softplus(m.detach()[:, r:].to(levels.dtype))
        total += (spread if weights is None else spread * weights).sum((1, 2, 3))
    x = levels.gather(fg.image, fg.anchor, r + fg.label)
    label_weight = 1.0 if loss.class_weights is None else loss.class_weights[fg.label]
    return total - _per_image_sum(x * fg.score * label_weight, fg.image, levels.num_images)


def _per_image_sum(values: Tensor, image: Tensor, num_images: int) -> Tensor:
    """Sum of per-anchor values ``(F, ...)`` by image, accumulated in float64 and returned in their dtype.

    ``index_add_`` adds one value at a time: in float32, a thousand foreground anchors of one image
    would lose about 1e-6 of the sum (crowded scenes), beyond the float32 budget of the loss.
    """
    out = torch.zeros((num_images, *values.shape[1:]), dtype=torch.float64, device=values.device)
    return out.index_add_(0, image, values.double()).to(values.dtype)


# --- the module ---------------------------------------------------------------------------------


@register_class  # configs may build it: {"class": "losskit.detection.yolo.YOLOLoss", ...}
class YOLOLoss(nn.Module):
    r"""YOLOv8 / YOLO11 / YOLO26 detection loss: task-aligned assignment, then CIoU, DFL (or L1) and BCE.

    For each image the head predicts, at every anchor :math:`a` of every level, class logits
    :math:`x_a` and the distances of the four box sides, either as ``reg_max`` bin logits per
    side (decoded as the distribution's mean, YOLOv8) or directly (``reg_max=1``, YOLO26). The
    :class:`~losskit.detection.TaskAlignedAssigner` picks foreground anchors :math:`\mathcal F`
    and their soft targets :math:`y_a` (on the assigned class). With :math:`N = \max(1, \sum_a y_a)`
    over the batch:

    .. math::
        L_{box} = \frac{\lambda_{box}}{N} \sum_{a \in \mathcal F} y_a \big(1 - \mathrm{CIoU}(\hat b_a, b_a)\big),
        \qquad
        L_{cls} = \frac{\lambda_{cls}}{N} \sum_{a,c} \mathrm{BCE}(x_{ac}, y_{ac}),

        L_{dfl} = \frac{\lambda_{dfl}}{N} \sum_{a \in \mathcal F} y_a \tfrac14 \sum_{s=1}^4
            \mathrm{DFL}(p_{as}, d_{as}), \qquad
        L_{l1} = \frac{\lambda_{dfl}}{N} \sum_{a \in \mathcal F} y_a \tfrac14 \sum_{s=1}^4
            \frac{|\hat d_{as} - d_{as}|\,\sigma_a}{W \text{ or } H}

    where boxes and distances :math:`d` are in grid units of the anchor's level (stride
    :math:`\sigma_a`), DFL targets are clamped to ``reg_max - 1 - 0.01``, and the L1 term
    (``reg_max=1``) measures distances as fractions of the image width (left, right) or height.
    The total is :math:`L_{box} + L_{cls} + L_{dfl}` (or :math:`+ L_{l1}`), **not** multiplied by
    the batch size (``scale_by_batch=True`` does, as Ultralytics returns it).

    **End-to-end (YOLO26, NMS-free).** With ``end2end=True`` the head has two branches, each with
    its own maps: one-to-many (assigner ``topk``) and one-to-one (``topk=one_to_one_topk``, then
    one anchor per object). The total is :math:`w\,L_{o2m} + (1 - w) L_{o2o}` with
    :math:`w` = :func:`one_to_many_weight` of the training progress, set with :meth:`set_progress`
    (0.8 at the start, 0.1 at the end; kept in ``state_dict``).

    Args:
        num_classes: Number of classes :math:`C`.
        strides: Stride of each level, in pixels; the image size is the first map's size times
            the first stride.
        reg_max: Bins per box side (16 for YOLOv8/YOLO11); 1 for YOLO26's direct regression.
        box: :math:`\lambda_{box}`. cls: :math:`\lambda_{cls}`. dfl: :math:`\lambda_{dfl}`, the gain
            of the DFL term, or of the L1 term with ``reg_max=1``.
        box_loss: The IoU-family similarity of the box term, ``1 - `` it is the loss: ``"ciou"``
            (YOLOv8), ``"giou"``, ``"diou"``, ``"eiou"``, ``"siou"`` or ``"iou"`` (see
            :func:`losskit.boxes.box_iou`).
        topk, alpha, beta, overlap: Assigner settings (see :class:`TaskAlignedAssigner`).
        small_object_size: STAL's minimum box side for candidate selection, in pixels; ``"auto"``
            is the second stride (16), as Ultralytics 8.4 does for every model; ``None`` turns it off
            (YOLOv8 before 8.4).
        class_weights: Optional per-class weights ``(C,)`` on the classification term.
        end2end: YOLO26's dual-branch end-to-end loss.
        one_to_one_topk: Candidates of the one-to-one branch before keeping one per object.
        scale_by_batch: Multiply the results by the batch size, as Ultralytics' criterion returns them.
        clip_boxes: Clip target boxes to the image. Ultralytics' criterion does not (its data
            pipeline clips boxes before they reach it); ``False`` reproduces it on boxes that reach
            outside the image.
        dense_topk: The assigner's selection as Ultralytics makes it, ``torch.topk`` over each
            object's dense row of anchors (see :class:`TaskAlignedAssigner`); the default selects
            among positive candidates, ties to the lower anchor, on any device alike.
        dfl_clamp_margin: DFL targets are clamped to ``reg_max - 1 - margin``.
        distributed: Sum the target-score normalizer :math:`N` over the ranks of
            ``torch.distributed`` and divide by the world size
            (:func:`losskit.distributed.global_normalizer`): the mean of the ranks' totals is the
            loss of the global batch and DDP's averaged gradient is its gradient. One all-reduce
            per branch, on every rank (a rank without objects included). A no-op without a
            process group.

    Inputs:
        preds: A list of per-level maps ``(B, 4 * reg_max + C, H_i, W_i)``, box channels first
            (side by side ``l, t, r, b``, each ``reg_max`` bins) then class logits; with
            ``end2end=True`` a dict ``{"one2many": [...], "one2one": [...]}``.
        targets: ``{"batch_idx": (M,), "cls": (M,) or (M, 1), "bboxes": (M, 4)}`` with boxes as
            normalized ``cx, cy, w, h``. Boxes reaching outside the image are clipped to it
            (unless ``clip_boxes=False``).

    Returns:
        A :class:`DetectionLossResult`.

    Raises:
        ValueError: Maps of the wrong number or shape; a target table of the wrong shape; (value
            checks, see :func:`losskit.set_checks`) a box that is not finite, has a negative size or
            lies entirely outside the image, a class outside ``[0, C)`` or a ``batch_idx`` outside
            ``[0, B)``, each naming the row.

    Examples:
        >>> import torch
        >>> from losskit.detection import YOLOLoss
        >>> criterion = YOLOLoss(num_classes=2, strides=(8, 16))
        >>> maps = [torch.zeros(1, 64 + 2, 8, 8, requires_grad=True), torch.zeros(1, 66, 4, 4, requires_grad=True)]
        >>> targets = {"batch_idx": torch.tensor([0.0]), "cls": torch.tensor([1.0]),
        ...            "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])}
        >>> out = criterion(maps, targets)
        >>> sorted(out.components), int(out.assignment.fg_mask.sum())
        (['box', 'cls', 'dfl'], 10)
        >>> out.total.backward()

    References:
        Feng et al., "TOOD", ICCV 2021 (assignment); Li et al., "Generalized Focal Loss", NeurIPS
        2020 (DFL); Zheng et al., "Distance-IoU Loss", AAAI 2020 (CIoU). Ultralytics
        ``v8DetectionLoss`` and YOLO26 ``E2ELoss`` (8.4): the defaults reproduce them, see the
        README's table.
    """

    def __init__(self, num_classes: int, *, strides: Sequence[float] = (8, 16, 32), reg_max: int = 16,
                 box: float = 7.5, cls: float = 0.5, dfl: float = 1.5, topk: int = 10, alpha: float = 0.5,
                 beta: float = 6.0, overlap: str = "ciou", box_loss: str = "ciou",
                 small_object_size: float | str | None = "auto",
                 class_weights: Sequence[float] | Tensor | None = None, end2end: bool = False,
                 one_to_one_topk: int = 7, scale_by_batch: bool = False, dfl_clamp_margin: float = 0.01,
                 distributed: bool = False, clip_boxes: bool = True, dense_topk: bool = False) -> None:
        super().__init__()
        check_int("reg_max", reg_max, low=1)
        strides = tuple(check_number(f"strides[{i}]", s, low=0.0, low_open=True) for i, s in enumerate(strides))
        if not strides:
            raise ValueError("strides must name at least one level")
        for name, value in (("end2end", end2end), ("scale_by_batch", scale_by_batch), ("distributed", distributed),
                            ("clip_boxes", clip_boxes), ("dense_topk", dense_topk)):
            check_bool(name, value)
        if small_object_size == "auto":
            small_object_size = strides[1] if len(strides) > 1 else strides[0]
        self._config = dict(num_classes=num_classes, strides=strides, reg_max=reg_max, box=box, cls=cls, dfl=dfl,
                            topk=topk, alpha=alpha, beta=beta, overlap=overlap, box_loss=box_loss,
                            small_object_size=small_object_size,
                            end2end=end2end, one_to_one_topk=one_to_one_topk, scale_by_batch=scale_by_batch,
                            dfl_clamp_margin=dfl_clamp_margin, distributed=distributed, clip_boxes=clip_boxes,
                            dense_topk=dense_topk)
        check_one_of("box_loss", box_loss, IOU_KINDS)
        self.box_kind = box_loss
        self.num_classes, self.strides, self.reg_max = num_classes, strides, reg_max
        self.box_gain = check_number("box", box, low=0.0)
        self.cls_gain = check_number("cls", cls, low=0.0)
        self.third_gain = check_number("dfl", dfl, low=0.0)
        self.dfl_clamp_margin = check_number("dfl_clamp_margin", dfl_clamp_margin, low=0.0, high=1.0, high_open=True)
        self.end2end, self.scale_by_batch, self.distributed = end2end, scale_by_batch, distributed
        self.clip_boxes = clip_boxes
        common = dict(num_classes=num_classes, alpha=alpha, beta=beta, overlap=overlap,
                      small_object_size=small_object_size, dense_topk=dense_topk)
        self.assigners = {"one2many": TaskAlignedAssigner(topk, **common)}
        if end2end:
            self.assigners["one2one"] = TaskAlignedAssigner(one_to_one_topk, topk2=1, **common)
        self.register_buffer("class_weights", _class_weights(class_weights, num_classes), persistent=True)
        self.progress = 0.0

    @property
    def component_names(self) -> tuple[str, str, str]:
        return ("box", "cls", "dfl" if self.reg_max > 1 else "l1")

    def decode(self, logits: Tensor) -> Tensor:
        """Side distances (grid units) from the box channels, ``(..., 4 * reg_max)`` to ``(..., 4)``."""
        return dfl_decode(logits, self.reg_max)

    def set_progress(self, fraction: float) -> None:
        """Set the fraction of training done (0 to 1), which sets the end-to-end branch weights."""
        self.progress = min(max(check_number("fraction", fraction), 0.0), 1.0)

    @property
    def branch_weights(self) -> dict[str, float]:
        """The weight of each branch at the current progress (``{"one2many": 1.0}`` without end2end)."""
        if not self.end2end:
            return {"one2many": 1.0}
        w = one_to_many_weight(self.progress)
        return {"one2many": w, "one2one": max(1.0 - w, 0.0)}

    def get_extra_state(self) -> dict[str, float]:
        return {"progress": self.progress}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.progress = float(state["progress"])

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (class weights as a list) that rebuild an equal criterion."""
        weights = None if self.class_weights is None else self.class_weights.tolist()
        return {**self._config, "strides": list(self.strides), "class_weights": weights}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config.items())

    def forward(self, preds: Sequence[Tensor] | Mapping[str, Sequence[Tensor]],
                targets: Mapping[str, Tensor]) -> DetectionLossResult:
        branch_preds = self._branch_preds(preds)
        results: dict[str, DetectionLossResult] = {}
        exact: dict[str, Tensor] = {}  # per-image components in the computation dtype (float32 at least)
        prepared = None
        for name, maps in branch_preds.items():
            levels = _Levels(maps, self.strides, self.reg_max, self.num_classes)
            if prepared is None:
                prepared = _prepare_targets(targets, levels.num_images, self.num_classes, levels.image_size,
                                            self.clip_boxes)
            per_image, assignment = _branch_loss(levels, prepared, self.assigners[name], self)
            if self.scale_by_batch:
                per_image = per_image * levels.num_images
            exact[name] = per_image
            results[name] = self._result(per_image, assignment, maps[0].dtype)
        if not self.end2end:
            return results["one2many"]
        weights = self.branch_weights
        per_image = sum(weights[name] * exact[name] for name in results)
        return self._result(per_image, results["one2one"].assignment, branch_preds["one2one"][0].dtype,
                            branches=results)

    def _result(self, per_image: Tensor, assignment: Assignment, dtype: torch.dtype, branches: dict | None = None,
                ) -> DetectionLossResult:
        """Sums taken in the computation dtype, then every value in the maps' dtype (as every loss
        returns its input's; half maps give half results)."""
        components = per_image.sum(0)
        named = dict(zip(self.component_names, components.to(dtype), strict=True))
        return DetectionLossResult(total=components.sum().to(dtype), components=named,
                                   per_image=per_image.sum(1).to(dtype), per_image_components=per_image.to(dtype),
                                   assignment=assignment, branches=branches or {})

    def _branch_preds(self, preds: object) -> dict[str, Sequence[Tensor]]:
        if not self.end2end:
            if isinstance(preds, Mapping):
                raise ValueError("preds is a dict: pass the list of per-level maps, or build the criterion with "
                                 "end2end=True for {'one2many': [...], 'one2one': [...]}")
            return {"one2many": preds}
        if not isinstance(preds, Mapping) or set(preds) != set(BRANCHES):
            keys = f" with keys {sorted(preds)}" if isinstance(preds, Mapping) else ""
            raise ValueError("with end2end=True, preds must be a dict {'one2many': [maps], 'one2one': [maps]}, "
                             f"got {type(preds).__name__}{keys}")
        return {name: preds[name] for name in BRANCHES}


def _class_weights(weights: Sequence[float] | Tensor | None, num_classes: int) -> Tensor | None:
    if weights is None:
        return None
    weights = torch.as_tensor(weights, dtype=torch.float32).detach().clone()
    if weights.shape != (num_classes,) or bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()):
        raise ValueError(f"class_weights must be {num_classes} finite non-negative numbers, got shape "
                         f"{tuple(weights.shape)}")
    return weights
