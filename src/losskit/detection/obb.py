r"""The YOLO oriented-box criterion: rotated task-aligned assignment, then ProbIoU, DFL (or L1), BCE and angle terms.

What a YOLOv8-OBB / YOLO26-OBB head trains with, on the same machinery as
:class:`~losskit.detection.YOLOLoss`: assignment on candidate pairs
(:class:`~losskit.detection.RotatedTaskAlignedAssigner`), a classification term without a dense
target tensor, and gradients written straight into each feature map.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from losskit._core.checks import check_number, checks_enabled
from losskit._core.registry import register_class
from losskit.boxes import normalize_angle, probiou
from losskit.detection.assigner import Assignment, CandidatePairs
from losskit.detection.rotated_assigner import RotatedTaskAlignedAssigner
from losskit.detection.yolo import (
    DetectionLossResult,
    YOLOLoss,
    _BranchGradient,
    _BranchPlan,
    _cls_term,
    _Foreground,
    _Levels,
    _per_image_sum,
    target_table,
)
from losskit.distributed import global_normalizer
from losskit.functional.detection import distribution_focal_loss

__all__ = ["YOLOOBBLoss", "rotated_box_to_distance", "rotated_distance_to_box"]

ANGLE_LOW = -math.pi / 4  # angles are brought into [-pi/4, 3pi/4), the range of Ultralytics' OBB data


def rotated_distance_to_box(points: Tensor, distance: Tensor, angle: Tensor) -> Tensor:
    r"""``xywhr`` boxes from side distances ``ltrb`` measured in the box's own frame, turned by ``angle``.

    .. math:: c = p + R_\theta \big(\tfrac{r - l}2, \tfrac{b - t}2\big), \qquad (w, h) = (l + r, t + b)

    Shapes: ``points (..., 2)``, ``distance (..., 4)``, ``angle (..., 1)``; returns ``(..., 5)``.

    Examples:
        >>> import torch
        >>> rotated_distance_to_box(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0, 3.0, 1.0]]),
        ...                         torch.tensor([[torch.pi / 2]])).round(decimals=6).tolist()
        [[0.0, 1.0, 4.0, 2.0, 1.570796]]
    """
    lt, rb = distance[..., :2], distance[..., 2:]
    cos, sin = torch.cos(angle), torch.sin(angle)
    half = (rb - lt) / 2
    xf, yf = half[..., :1], half[..., 1:]
    centre = torch.cat((xf * cos - yf * sin, xf * sin + yf * cos), -1) + points
    return torch.cat((centre, lt + rb, angle), -1)


def rotated_box_to_distance(points: Tensor, boxes: Tensor, *, max_distance: float | None = None) -> Tensor:
    r"""Side distances ``ltrb`` of ``xywhr`` boxes from points, in the box's own frame (inverse of
    :func:`rotated_distance_to_box`), optionally clamped to ``[0, max_distance]``.

    Examples:
        >>> import torch
        >>> rotated_box_to_distance(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0, 4.0, 2.0, torch.pi / 2]]))
        tensor([[1., 1., 3., 1.]])
    """
    offset = boxes[..., :2] - points
    ox, oy = offset[..., :1], offset[..., 1:]
    angle = boxes[..., 4:5]
    cos, sin = torch.cos(angle), torch.sin(angle)
    xf, yf = ox * cos + oy * sin, -ox * sin + oy * cos
    w, h = boxes[..., 2:3], boxes[..., 3:4]
    out = torch.cat((w / 2 - xf, h / 2 - yf, w / 2 + xf, h / 2 + yf), -1)
    return out if max_distance is None else out.clamp(0, max_distance)


# --- targets ------------------------------------------------------------------------------------


@dataclass
class _RotatedTargets:
    boxes: Tensor  # (M', 5) xywhr pixels (angle normalized), in the computation dtype
    labels: Tensor  # (M',) long
    image: Tensor  # (M',) long
    rows: Tensor  # (M',) each kept box's row in the caller's table


def _prepare_rotated_targets(batch: Mapping[str, Tensor], num_images: int, num_classes: int, image_size: Tensor,
                             min_size: float) -> _RotatedTargets:
    """The target table (normalized ``xywhr``) as pixel ``xywhr`` boxes, checked; boxes with a side under
    ``min_size`` pixels are left out (as Ultralytics' OBB criterion does)."""
    bboxes, cls, image = target_table(batch, image_size.device, 5,
                                      "normalized cx, cy, w, h and the angle in radians")
    m = bboxes.shape[0]
    if checks_enabled() and m:
        _check_rotated_values(bboxes, cls, image, num_images, num_classes)
    bboxes = bboxes.to(image_size.dtype)
    size = image_size.flip(0)  # (W, H)
    # the side filter as Ultralytics computes it: normalized side times the image side, in the table's dtype
    keep = ((bboxes[:, 2] * float(size[0]) >= min_size) & (bboxes[:, 3] * float(size[1]) >= min_size)).nonzero()
    rows = keep.squeeze(1)
    kept = bboxes[rows]
    boxes = torch.cat((kept[:, :4] * size.repeat(2), normalize_angle(kept[:, 4:], low=ANGLE_LOW)), -1)
    return _RotatedTargets(boxes, cls[rows].long(), image[rows].long(), rows)


def _check_rotated_values(bboxes: Tensor, cls: Tensor, image: Tensor, num_images: int, num_classes: int) -> None:
    def fail(what: str, bad: Tensor) -> None:
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets: {what} (row {row}: bboxes={bboxes[row].tolist()}, cls={cls[row].item()}, "
                         f"batch_idx={image[row].item()})")

    checks = [
        (~torch.isfinite(bboxes[:, :4]).all(-1), "a box's centre or size is not finite"),
        (~torch.isfinite(bboxes[:, 4]), "a box's angle is not finite (radians expected)"),
        ((bboxes[:, 2:4] < 0).any(-1), "a box has a negative width or height"),
        ((cls < 0) | (cls >= num_classes) | (cls != cls.floor()), f"a class is not an integer in [0, {num_classes})"),
        ((image < 0) | (image >= num_images) | (image != image.floor()),
         f"a batch_idx is not an integer in [0, {num_images}) (the batch has {num_images} images)"),
    ]
    for bad, what in checks:
        if bool(bad.any()):
            fail(what, bad)


# --- the head's maps ----------------------------------------------------------------------------


class _RotatedLevels(_Levels):
    """Per-level maps ``(B, 4 * reg_max + 1 + C, H, W)``: box channels, the angle, then class logits.

    The angle travels with the box channels (``box_channels = 4 * reg_max + 1``), so gathers and the
    map gradients of :class:`YOLOLoss` apply unchanged.
    """

    def __init__(self, maps: Sequence[Tensor], strides: Sequence[float], reg_max: int, num_classes: int) -> None:
        channels = 4 * reg_max + 1 + num_classes
        if isinstance(maps, Sequence) and not isinstance(maps, Tensor):
            for i, m in enumerate(maps):
                if isinstance(m, Tensor) and m.dim() == 4 and m.shape[1] != channels:
                    raise ValueError(f"preds[{i}] must be a (B, 4 * reg_max + 1 + num_classes = {channels}, H, W) "
                                     f"map (box channels, the angle, class logits), got {tuple(m.shape)}")
        super().__init__(maps, strides, reg_max, num_classes + 1)
        self.box_channels = 4 * reg_max + 1


# --- one branch ---------------------------------------------------------------------------------


@dataclass
class _RotatedForeground(_Foreground):
    angle_grad: Tensor | None = None  # (F, 4 * reg_max + 1): d(angle term)/d logits


@dataclass
class _RotatedPlan(_BranchPlan):
    def foreground_gradient(self, grad: Tensor) -> Tensor:
        return super().foreground_gradient(grad) + grad[self.fg.image, 3, None] * self.fg.angle_grad


def _rotated_branch_loss(levels: _RotatedLevels, targets: _RotatedTargets, assigner: RotatedTaskAlignedAssigner,
                         loss: YOLOOBBLoss) -> tuple[Tensor, Assignment]:
    """Per-image ``(B, 4)`` [box, cls, dfl-or-l1, angle] losses (gains applied) and the assignment."""
    grid, num_anchors = levels.grid, levels.grid.num_anchors
    points, strides = grid.points(dtype=levels.dtype, device=levels.maps[0].device)  # grid units

    gt, anchor = assigner.candidates(grid, targets.boxes)
    image = targets.image[gt]
    slot, where = torch.unique(image * num_anchors + anchor, return_inverse=True)
    u_image, u_anchor = slot // num_anchors, slot % num_anchors
    u_boxes = loss.decode_rotated(points[u_anchor], levels.gather(u_image, u_anchor, slice(0, levels.box_channels)))
    u_pixels = torch.cat((u_boxes[:, :4] * strides[u_anchor], u_boxes[:, 4:]), -1)
    pairs = CandidatePairs(gt, anchor,
                           torch.sigmoid(levels.gather(image, anchor, levels.box_channels + targets.labels[gt])),
                           u_pixels[where])
    assignment = assigner.assign(pairs, targets.boxes, targets.labels, targets.image, levels.num_images, num_anchors)

    fg_slot = assignment.fg_mask.view(-1).nonzero().squeeze(1)
    fg = _RotatedForeground(fg_slot // num_anchors, fg_slot % num_anchors, assignment.target_labels.view(-1)[fg_slot],
                            assignment.target_scores.view(-1)[fg_slot])
    score_sum = fg.score.sum()
    normalizer = global_normalizer(score_sum, min_count=1.0) if loss.distributed else score_sum.clamp(min=1)
    need_grad = torch.is_grad_enabled() and any(m.requires_grad for m in levels.maps)

    box, third, angle = _rotated_box_terms(loss, levels, fg, assignment.target_boxes.view(-1, 5)[fg_slot], points,
                                           strides, normalizer, need_grad)
    cls = _cls_term(loss, levels, fg) * (loss.cls_gain / normalizer)
    per_image = torch.stack((box, cls, third, angle), -1)
    if need_grad:
        plan = _RotatedPlan(levels, fg, loss.cls_gain / normalizer, loss.class_weights)
        per_image = _BranchGradient.apply(per_image, plan, *levels.maps)
    return per_image, assignment


def _rotated_box_terms(loss: YOLOOBBLoss, levels: _RotatedLevels, fg: _RotatedForeground, target_px: Tensor,
                       points: Tensor, strides: Tensor, normalizer: Tensor, need_grad: bool,
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image ProbIoU, DFL (or L1) and angle terms; their gradients in the foreground logits go to ``fg``."""
    logits = levels.gather(fg.image, fg.anchor, slice(0, levels.box_channels))
    point, stride = points[fg.anchor], strides[fg.anchor]
    target = torch.cat((target_px[:, :4] / stride, target_px[:, 4:]), -1)  # grid units, as the head predicts
    weight = fg.score / normalizer
    with torch.enable_grad():
        logits.requires_grad_(need_grad)
        pred = loss.decode_rotated(point, logits)
        box = (1 - _floored_probiou(pred, target, loss.probiou_floor)) * weight * loss.box_gain
        box_logits = logits[:, :-1]
        if loss.reg_max > 1:
            distances = rotated_box_to_distance(point, target, max_distance=loss.reg_max - 1 - loss.dfl_clamp_margin)
            per_side = distribution_focal_loss(box_logits.reshape(-1, 4, loss.reg_max), distances,
                                               clamp_margin=loss.dfl_clamp_margin, reduction="none")
        else:  # YOLO26: L1 on the distances as fractions of the image size
            scale = stride / levels.image_size.flip(0).repeat(2)  # (F, 4): stride / (W, H, W, H)
            per_side = (box_logits * scale - rotated_box_to_distance(point, target) * scale).abs()
        third = per_side.mean(-1) * weight * loss.third_gain
        angle = _angle_loss(pred[:, 4], target, loss.angle_aspect_scale) * weight * loss.angle_gain
        if need_grad and len(logits):
            fg.box_grad, fg.third_grad, fg.angle_grad = (
                torch.autograd.grad(term.sum(), logits, retain_graph=True)[0] for term in (box, third, angle))
        elif need_grad:
            fg.box_grad = fg.third_grad = fg.angle_grad = logits.new_zeros(logits.shape)
    per_image = _per_image_sum(torch.stack((box.detach(), third.detach(), angle.detach()), -1), fg.image,
                               levels.num_images)
    return per_image[:, 0], per_image[:, 1], per_image[:, 2]


def _floored_probiou(pred: Tensor, target: Tensor, floor: float) -> Tensor:
    r"""ProbIoU with ``floor`` added to both variances of each box (:math:`w^2/12 + f`): the same as
    :func:`losskit.boxes.probiou` of boxes whose sides are :math:`\sqrt{w^2 + 12 f}`. It bounds the
    gradient of sub-stride boxes; only squared sides enter, so a negative predicted side counts by
    its magnitude. Computed in float64 (see ``_exact_probiou``)."""
    def widen(boxes: Tensor) -> Tensor:
        return torch.cat((boxes[:, :2], (boxes[:, 2:4].square() + 12 * floor).sqrt(), boxes[:, 4:]), -1)

    return _exact_probiou(widen(pred), widen(target))


def _exact_probiou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    r"""Aligned :func:`losskit.boxes.probiou` (``eps=1e-7``) computed in float64 and returned in the boxes' dtype.

    Its covariance term divides by :math:`\det(\Sigma_2)/\det(\Sigma_1)` computed as a sum; for a box
    much larger than the other (a prediction of 100 px against an object of 2 px, common early in
    training) that sum cancels in float32 and the value or its gradient loses every digit (measured:
    ProbIoU off by 9e-4 and NaN on random pairs). Per foreground pair, float64 costs little.
    """
    return probiou(boxes1.double(), boxes2.double(), aligned=True, eps=1e-7).to(boxes1.dtype)


def _angle_loss(pred_angle: Tensor, target: Tensor, aspect_scale: float) -> Tensor:
    r""":math:`\sin^2(2\Delta\theta)\,\exp(-\ln^2(w/h) / \lambda^2)` per pair, with :math:`\Delta\theta`
    wrapped into a half turn about 0 (Ultralytics adds 1e-9 to both sides in the ratio)."""
    w, h = target[:, 2], target[:, 3]
    aspect = torch.exp(-torch.log((w + 1e-9) / (h + 1e-9)).square() / aspect_scale ** 2)
    delta = pred_angle - target[:, 4]
    delta = delta - torch.round(delta / math.pi) * math.pi
    return torch.sin(2 * delta).square() * aspect


# --- the module ---------------------------------------------------------------------------------


@register_class  # configs may build it: {"class": "losskit.detection.obb.YOLOOBBLoss", ...}
class YOLOOBBLoss(YOLOLoss):
    r"""YOLOv8-OBB / YOLO26-OBB loss: rotated task-aligned assignment, then ProbIoU, DFL (or L1), BCE and angle.

    At every anchor :math:`a` the head predicts class logits, four side distances (``reg_max``
    bin logits per side, or directly with ``reg_max=1``) and an angle :math:`\hat\theta_a` in
    radians, which give the rotated box
    :math:`\hat b_a = (p_a + R_{\hat\theta}(\tfrac{r-l}2, \tfrac{b-t}2),\ l + r,\ t + b,\ \hat\theta)`
    in grid units. The :class:`~losskit.detection.RotatedTaskAlignedAssigner` picks foreground
    anchors :math:`\mathcal F` and soft targets :math:`y_a`; with :math:`N = \max(1, \sum_a y_a)`:

    .. math::
        L_{box} = \frac{\lambda_{box}}{N} \sum_{a \in \mathcal F} y_a \big(1 - \mathrm{ProbIoU}_f(\hat b_a, b_a)\big),
        \qquad
        L_{angle} = \frac{\lambda_{angle}}{N} \sum_{a \in \mathcal F} y_a\,
            \sin^2(2\,\Delta\theta_a)\, e^{-\ln^2(w_a / h_a) / \lambda^2},

    with :math:`\mathrm{ProbIoU}_f` the ProbIoU of Gaussians whose variances get ``probiou_floor``
    :math:`f` added (:math:`w^2/12 + f`), :math:`\Delta\theta` the angle error wrapped into
    :math:`[-\pi/2, \pi/2]`, :math:`w_a, h_a` the object's sides and :math:`\lambda` =
    ``angle_aspect_scale`` (the angle of a near-square box matters little). :math:`L_{cls}` and
    :math:`L_{dfl}` (or :math:`L_{l1}`) are :class:`YOLOLoss`'s, with the side distances of the
    object measured in its own rotated frame (DFL targets clamped to ``reg_max - 1 - 0.01``). The
    total is :math:`L_{box} + L_{cls} + L_{dfl} + L_{angle}`; ``end2end=True`` gives YOLO26's
    two-branch loss as in :class:`YOLOLoss`.

    Args:
        num_classes: Number of classes :math:`C`.
        strides: As in :class:`YOLOLoss`, and so are ``reg_max``, ``box``, ``cls``, ``dfl``, ``topk``,
            ``alpha``, ``beta``, ``small_object_size``, ``class_weights``, ``end2end``,
            ``one_to_one_topk``, ``scale_by_batch``, ``dfl_clamp_margin``, ``distributed`` and ``dense_topk``.
        angle: :math:`\lambda_{angle}`, the angle term's gain (Ultralytics' ``angle: 1.0``).
        probiou_floor: :math:`f`, added to each box's variances in the box term (Ultralytics: 0.01).
        angle_aspect_scale: :math:`\lambda` of the angle term's aspect weight (Ultralytics: 3).
        min_size: Objects with a side under this many pixels are left out of the loss, as
            Ultralytics' OBB criterion does (2 px); 0 keeps every object.

    Inputs:
        preds: A list of per-level maps ``(B, 4 * reg_max + 1 + C, H_i, W_i)``: box channels (side by
            side ``l, t, r, b``), **the angle in radians** (after the head's own activation, as
            Ultralytics' criterion receives it), then class logits; with ``end2end=True`` a dict
            ``{"one2many": [...], "one2one": [...]}``.
        targets: ``{"batch_idx": (M,), "cls": (M,) or (M, 1), "bboxes": (M, 5)}``, boxes as
            normalized ``cx, cy, w, h`` and the angle in radians. Angles are brought into
            :math:`[-\pi/4, 3\pi/4)` (:func:`losskit.boxes.normalize_angle` with ``low=-pi/4``: the
            same rectangle; Ultralytics' data are in that range already); sides are used as given.

    Returns:
        A :class:`DetectionLossResult` with components ``box``, ``cls``, ``dfl`` (or ``l1``) and
        ``angle``; ``per_image_components`` is ``(B, 4)``, the assignment's ``target_boxes`` are
        ``(B, A, 5)`` ``xywhr`` pixels and its ``target_gt`` rows of the caller's table.

    Raises:
        ValueError: Maps of the wrong number or shape; a target table of the wrong shape; (value
            checks) a non-finite centre or size, a non-finite angle, a negative width or height, a
            class outside ``[0, C)`` or a ``batch_idx`` outside ``[0, B)``, each naming the row.

    Examples:
        >>> import torch
        >>> from losskit.detection import YOLOOBBLoss
        >>> criterion = YOLOOBBLoss(num_classes=2, strides=(8, 16))
        >>> maps = [torch.zeros(1, 64 + 1 + 2, 8, 8, requires_grad=True),
        ...         torch.zeros(1, 67, 4, 4, requires_grad=True)]
        >>> targets = {"batch_idx": torch.tensor([0.0]), "cls": torch.tensor([1.0]),
        ...            "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.25, 0.3]])}
        >>> out = criterion(maps, targets)
        >>> sorted(out.components), out.per_image_components.shape
        (['angle', 'box', 'cls', 'dfl'], torch.Size([1, 4]))
        >>> out.total.backward()

    References:
        Llerena et al., "Gaussian Bounding Boxes and Probabilistic Intersection-over-Union", arXiv:2106.06072
        (ProbIoU); Feng et al., "TOOD", ICCV 2021; Ultralytics ``v8OBBLoss`` and ``E2ELoss`` (8.4.190):
        the defaults reproduce them (see the detection guide for the differences).
    """

    def __init__(self, num_classes: int, *, strides: Sequence[float] = (8, 16, 32), reg_max: int = 16,
                 box: float = 7.5, cls: float = 0.5, dfl: float = 1.5, angle: float = 1.0, topk: int = 10,
                 alpha: float = 0.5, beta: float = 6.0, small_object_size: float | str | None = "auto",
                 class_weights: Sequence[float] | Tensor | None = None, end2end: bool = False,
                 one_to_one_topk: int = 7, scale_by_batch: bool = False, dfl_clamp_margin: float = 0.01,
                 distributed: bool = False, dense_topk: bool = False, probiou_floor: float = 0.01,
                 angle_aspect_scale: float = 3.0, min_size: float = 2.0) -> None:
        super().__init__(num_classes, strides=strides, reg_max=reg_max, box=box, cls=cls, dfl=dfl, topk=topk,
                         alpha=alpha, beta=beta, small_object_size=small_object_size, class_weights=class_weights,
                         end2end=end2end, one_to_one_topk=one_to_one_topk, scale_by_batch=scale_by_batch,
                         dfl_clamp_margin=dfl_clamp_margin, distributed=distributed, dense_topk=dense_topk)
        self.angle_gain = check_number("angle", angle, low=0.0)
        self.probiou_floor = check_number("probiou_floor", probiou_floor, low=0.0)
        self.angle_aspect_scale = check_number("angle_aspect_scale", angle_aspect_scale, low=0.0, low_open=True)
        self.min_size = check_number("min_size", min_size, low=0.0)
        for key in ("overlap", "box_loss", "clip_boxes"):
            del self._config[key]
        self._config.update(angle=angle, probiou_floor=probiou_floor, angle_aspect_scale=angle_aspect_scale,
                            min_size=min_size)
        self.assigners = {name: _rotated(a) for name, a in self.assigners.items()}

    @property
    def component_names(self) -> tuple[str, str, str, str]:
        return ("box", "cls", "dfl" if self.reg_max > 1 else "l1", "angle")

    def decode_rotated(self, points: Tensor, logits: Tensor) -> Tensor:
        """``xywhr`` boxes (grid units) from anchor points ``(F, 2)`` and box-and-angle channels
        ``(F, 4 * reg_max + 1)``."""
        return rotated_distance_to_box(points, self.decode(logits[..., :-1]), logits[..., -1:])

    def forward(self, preds: Sequence[Tensor] | Mapping[str, Sequence[Tensor]],
                targets: Mapping[str, Tensor]) -> DetectionLossResult:
        branch_preds = self._branch_preds(preds)
        results: dict[str, DetectionLossResult] = {}
        exact: dict[str, Tensor] = {}
        prepared = None
        for name, maps in branch_preds.items():
            levels = _RotatedLevels(maps, self.strides, self.reg_max, self.num_classes)
            if prepared is None:
                prepared = _prepare_rotated_targets(targets, levels.num_images, self.num_classes, levels.image_size,
                                                    self.min_size)
            per_image, assignment = _rotated_branch_loss(levels, prepared, self.assigners[name], self)
            assignment.target_gt = torch.where(assignment.fg_mask, prepared.rows[assignment.target_gt.clamp(min=0)],
                                               -1) if len(prepared.rows) else assignment.target_gt
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


def _rotated(assigner) -> RotatedTaskAlignedAssigner:
    """The rotated assigner with the same settings."""
    return RotatedTaskAlignedAssigner(assigner.topk, assigner.num_classes, assigner.alpha, assigner.beta,
                                      small_object_size=assigner.small_object_size, topk2=assigner.topk2,
                                      eps=assigner.eps, dense_topk=assigner.dense_topk)
