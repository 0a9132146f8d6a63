r"""The YOLO pose criterion: the detection loss plus the OKS-style keypoint loss, keypoint visibility
BCE and YOLO26's residual log-likelihood (RLE) keypoint loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losskit._core.checks import check_bool, check_number, checks_enabled
from losskit._core.registry import register_class
from losskit.detection._task import Branch, TaskAssigner, TaskLoss, flat_per_anchor, per_image_sum
from losskit.detection.anchors import AnchorGrid
from losskit.detection.assigner import Assignment, CandidatePairs
from losskit.detection.yolo import _Targets

__all__ = ["COCO_KEYPOINT_SIGMAS", "COCO_RLE_WEIGHTS", "YOLOPoseLoss"]

# COCO's per-keypoint OKS constants (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles).
COCO_KEYPOINT_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
                        0.087, 0.087, 0.089, 0.089)
# YOLO26's per-keypoint RLE weights for the 17 COCO keypoints (elbows, knees 1.2; wrists, ankles 1.5).
COCO_RLE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5)
# YOLO26's pose assigner: an object is a candidate on levels where sqrt(box area) is 2 to 12 strides.
LEVEL_RANGE = (2.0, 12.0)
OKS_AREA_FACTOR = 0.53  # the box-area share COCO's pose evaluation uses as the object's area


@dataclass
class _Keypoints:
    pixels: Tensor  # (M, K, 3) x, y in pixels, visibility


@register_class  # configs may build it: {"class": "losskit.detection.pose.YOLOPoseLoss", ...}
class YOLOPoseLoss(TaskLoss):
    r"""YOLOv8 / YOLO26 pose loss: the detection terms plus the keypoint, visibility and RLE terms.

    The detection terms (box, cls, dfl or l1) and the assignment are those of
    :class:`~losskit.detection.YOLOLoss`. For a foreground anchor :math:`a` (point :math:`p_a`,
    stride :math:`\sigma_a`) assigned to object :math:`g` with keypoints :math:`k_{gj}` (visibility
    :math:`v_{gj}`, mask :math:`\mu_{gj} = [v_{gj} \ne 0]`), everything in grid units of the anchor's
    level, the predicted keypoint is :math:`\hat k_{aj} = 2 r_{aj} + p_a - \tfrac12` (YOLOv8) or
    :math:`r_{aj} + p_a` (YOLO26) from the raw outputs :math:`r`. With :math:`F` foreground anchors
    and :math:`K` keypoints:

    .. math::
        L_{pose} = \frac{\lambda_{pose}}{F K} \sum_{a, j} \frac{K}{\sum_{j'} \mu_{gj'} + 10^{-9}}\,
            \mu_{gj} \Big(1 - \exp\Big(-\frac{\lVert \hat k_{aj} - k_{gj} \rVert^2}
            {2 (2 s_j)^2 (A_g + 10^{-9})}\Big)\Big),
        \qquad
        L_{kobj} = \frac{\lambda_{kobj}}{F K} \sum_{a, j} \mathrm{BCE}(z_{aj}, \mu_{gj})

    with :math:`A_g` the box area (grid units squared), :math:`s_j` the keypoint's OKS sigma and
    :math:`z_{aj}` the visibility logit (with ``keypoint_shape=(K, 3)``).

    **YOLO26** (``yolo26=True``, Ultralytics' ``PoseLoss26``): the decoding above, and an assigner
    whose overlap is the keypoint OKS of the pair (:math:`\exp(-d^2 / (2 (2 s_j)^2 (0.53\,\mathrm{area}
    + \epsilon)))` averaged over visible keypoints, in pixels; the box CIoU for objects without one),
    with candidates gated to the levels where :math:`2 \sigma \le \sqrt{\mathrm{area}} \le 12 \sigma`
    (the finest level open below, the coarsest above; an object the gate would leave without
    candidates keeps them all). With ``rle_flow`` and the head's ``"kpts_sigma"`` the RLE term is
    added over the :math:`N` visible keypoints, :math:`\epsilon = (\hat k - k)/(\varsigma + 10^{-9})`
    with :math:`\varsigma = \mathrm{sigmoid}` of the sigma outputs, clamped to :math:`\pm 100`:

    .. math::
        L_{rle} = \lambda_{rle} \max\Big(0, \frac1N \sum w_j \big(\log\varsigma - \log\phi(\epsilon)
            + \log 2\varsigma + |\epsilon|\big)\Big)

    summed over both coordinates, :math:`\log\phi` the flow's ``log_prob`` and :math:`w_j` the RLE
    weights. Components: ``box``, ``pose``, ``kobj``, ``cls``, ``dfl`` (or ``l1``) and ``rle`` (with
    ``rle_flow``), in Ultralytics' order of loss items.

    Args:
        num_classes: Number of classes (1 for person pose).
        keypoint_shape: ``(K, 3)`` (x, y, visibility logit) or ``(K, 2)``.
        sigmas: OKS sigmas ``(K,)``; default COCO's for 17 keypoints, else ``1 / K`` each.
        pose: :math:`\lambda_{pose}`. kobj: :math:`\lambda_{kobj}`. rle: :math:`\lambda_{rle}`.
        yolo26: YOLO26's decoding and keypoint-aware assignment.
        rle_flow: A module with ``log_prob(error) -> (N,)`` on ``(N, 2)`` errors (YOLO26's head keeps a
            RealNVP: ``model.model[-1].flow_model``); ``None``: no RLE term.
        rle_weights: ``(K,)``; default COCO's for 17 keypoints, else ones.
        **options: Everything :class:`~losskit.detection.YOLOLoss` takes. With ``distributed=True``
            the counts :math:`F K` and :math:`N` are summed over the ranks (exact under DDP); the
            RLE clamp at 0 acts on each rank's share.

    Inputs:
        preds: ``{"maps": [per-level maps], "kpts": (B, K * D, A)}`` plus ``"kpts_sigma": (B, 2 K, A)``
            for RLE (``A`` anchors, levels concatenated, row-major); with ``end2end=True``,
            ``{"one2many": {...}, "one2one": {...}}``.
        targets: The detection target table plus ``"keypoints"`` ``(M, K, 3)`` (normalized x, y and
            visibility) or ``(M, K, 2)`` (all visible).

    Raises:
        ValueError: as :class:`YOLOLoss`, and keypoints of the wrong shape or (value checks) a visible
            keypoint outside ``[0, 1]`` or not finite, naming the row.

    Examples:
        >>> import torch
        >>> from losskit.detection import YOLOPoseLoss
        >>> criterion = YOLOPoseLoss(num_classes=1, keypoint_shape=(2, 3), strides=(8, 16))
        >>> maps = [torch.zeros(1, 65, 8, 8), torch.zeros(1, 65, 4, 4)]
        >>> preds = {"maps": maps, "kpts": torch.zeros(1, 6, 80, requires_grad=True)}
        >>> targets = {"batch_idx": torch.tensor([0.0]), "cls": torch.tensor([0.0]),
        ...            "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]]),
        ...            "keypoints": torch.tensor([[[0.4, 0.4, 2.0], [0.6, 0.6, 0.0]]])}
        >>> out = criterion(preds, targets)
        >>> list(out.components)
        ['box', 'pose', 'kobj', 'cls', 'dfl']
        >>> # Zero visibility logits: BCE is log 2 for each keypoint, times the gain 1.
        >>> round(out.components["kobj"].item(), 4)
        0.6931

    References:
        Maji et al., "YOLO-Pose", CVPR Workshops 2022 (the OKS loss); Li et al., "Human Pose
        Regression with Residual Log-likelihood Estimation", ICCV 2021. Ultralytics ``v8PoseLoss``
        and ``PoseLoss26`` (8.4.190).
    """

    extra_keys = ("kpts",)
    optional_keys = ("kpts_sigma",)

    def __init__(self, num_classes: int = 1, *, keypoint_shape: Sequence[int] = (17, 3),
                 sigmas: Sequence[float] | Tensor | None = None, pose: float = 12.0, kobj: float = 1.0,
                 rle: float = 1.0, yolo26: bool = False, rle_flow: nn.Module | None = None,
                 rle_weights: Sequence[float] | Tensor | None = None, **options: Any) -> None:
        super().__init__(num_classes, **options)
        shape = tuple(keypoint_shape)
        if len(shape) != 2 or shape[1] not in (2, 3) or not isinstance(shape[0], int) or shape[0] < 1:
            raise ValueError(f"keypoint_shape must be (K, 2) or (K, 3), got {keypoint_shape!r}")
        check_bool("yolo26", yolo26)
        k = shape[0]
        self.keypoint_shape, self.yolo26 = shape, yolo26
        self.pose_gain = check_number("pose", pose, low=0.0)
        self.kobj_gain = check_number("kobj", kobj, low=0.0)
        self.rle_gain = check_number("rle", rle, low=0.0)
        default_sigmas = COCO_KEYPOINT_SIGMAS if k == 17 else [1.0 / k] * k
        default_weights = COCO_RLE_WEIGHTS if k == 17 else [1.0] * k
        self.register_buffer("sigmas", _positive("sigmas", default_sigmas if sigmas is None else sigmas, k))
        self.register_buffer("rle_weights", _positive("rle_weights", default_weights if rle_weights is None
                                                      else rle_weights, k))
        self.rle_flow = rle_flow
        if rle_flow is not None and not callable(getattr(rle_flow, "log_prob", None)):
            raise ValueError("rle_flow must have a log_prob(error) method")
        self._config.update(keypoint_shape=list(shape), pose=pose, kobj=kobj, rle=rle, yolo26=yolo26)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild an equal criterion; a module is no config value, so
        ``rle_flow`` is left out: pass it again."""
        return {**super().get_config(), "sigmas": self.sigmas.tolist(), "rle_weights": self.rle_weights.tolist()}

    @property
    def component_names(self) -> tuple[str, ...]:
        box, cls, third = self.detection_names
        return (box, "pose", "kobj", cls, third) + (("rle",) if self.rle_flow is not None else ())

    def _order(self, detection: Tensor, task: Tensor) -> Tensor:
        columns = [detection[:, 0], task[:, 0], task[:, 1], detection[:, 1], detection[:, 2]]
        if self.rle_flow is not None:
            columns.append(task[:, 2])
        return torch.stack(columns, -1)

    # --- inputs -------------------------------------------------------------------------------

    def _branch(self, pred: Mapping, name: str) -> Branch:
        branch = super()._branch(pred, name)
        k, d = self.keypoint_shape
        num_anchors = branch.levels.grid.num_anchors
        flat_per_anchor(branch.extras["kpts"], "kpts", k * d, num_anchors)
        if "kpts_sigma" in branch.extras:
            flat_per_anchor(branch.extras["kpts_sigma"], "kpts_sigma", 2 * k, num_anchors)
        return branch

    def _check_targets(self, targets: Mapping[str, Tensor], prepared: _Targets, branch: Branch) -> _Keypoints:
        if "keypoints" not in targets:
            raise ValueError("targets must carry 'keypoints' (M, K, 3) for pose: normalized x, y and visibility")
        k = self.keypoint_shape[0]
        levels = branch.levels
        keypoints = torch.as_tensor(targets["keypoints"], device=levels.maps[0].device)
        m = len(prepared.image)
        if keypoints.dim() != 3 or keypoints.shape[:2] != (m, k) or keypoints.shape[2] not in (2, 3):
            raise ValueError(f"targets['keypoints'] must have shape (M={m}, K={k}, 3) or ({m}, {k}, 2), got "
                             f"{tuple(keypoints.shape)}")
        keypoints = keypoints.to(levels.dtype)
        if keypoints.shape[2] == 2:  # no visibility: every keypoint counts
            keypoints = torch.cat((keypoints, torch.ones_like(keypoints[..., :1])), -1)
        if checks_enabled() and m:
            _check_keypoint_values(keypoints)
        pixels = keypoints.clone()
        pixels[..., :2] = pixels[..., :2] * levels.image_size.flip(0)
        return _Keypoints(pixels)

    def _decode(self, raw: Tensor, points: Tensor) -> Tensor:
        """Keypoint positions in grid units from the raw outputs ``(..., K, 2)`` at anchor points ``(..., 1, 2)``."""
        if self.yolo26:
            return raw + points
        return raw * 2.0 + (points - 0.5)

    # --- YOLO26's keypoint-aware assignment ---------------------------------------------------

    def _prepare_branch(self, assigner: TaskAssigner, branch: Branch, prepared: _Targets,
                        keypoints: _Keypoints) -> None:
        if not self.yolo26:
            return
        levels = branch.levels
        points, strides = levels.grid.points(dtype=levels.dtype, device=levels.maps[0].device)
        kpts = branch.extras["kpts"].detach()
        k, d = self.keypoint_shape
        sigmas = self.sigmas.to(levels.dtype)

        def overlap(pairs: CandidatePairs, box_overlap: Tensor) -> Tensor:
            image = prepared.image[pairs.gt]
            raw = kpts[image, :, pairs.anchor].view(-1, k, d)[..., :2].to(levels.dtype)
            predicted = self._decode(raw, points[pairs.anchor][:, None]) * strides[pairs.anchor][:, None]
            truth = keypoints.pixels[pairs.gt]
            visible = truth[..., 2] > 0
            box = prepared.boxes[pairs.gt]
            area = (box[:, 2:] - box[:, :2]).prod(-1, keepdim=True) * OKS_AREA_FACTOR
            distance = (predicted - truth[..., :2]).pow(2).sum(-1)
            oks = ((-distance / ((2 * sigmas).pow(2) * (area + assigner.eps) * 2)).exp() * visible).sum(-1)
            oks = oks / visible.sum(-1).clamp(min=1)
            return torch.where(visible.any(-1), oks.to(box_overlap.dtype), box_overlap)

        assigner.pair_overlap = overlap
        assigner.candidate_filter = _level_gate

    # --- the keypoint terms -------------------------------------------------------------------

    def _task_terms(self, branch: Branch, prepared: _Targets, keypoints: _Keypoints, assignment: Assignment,
                    ) -> Tensor:
        levels = branch.levels
        dtype, num_images = levels.dtype, levels.num_images
        k, d = self.keypoint_shape
        columns = 3 if self.rle_flow is not None else 2
        fg_image, fg_anchor = assignment.fg_mask.nonzero(as_tuple=True)
        device = fg_image.device
        elements = self._count_normalizer(len(fg_image) * k, dtype, device)  # Ultralytics: means over (F, K)
        with_rle = self.rle_flow is not None and "kpts_sigma" in branch.extras
        if not len(fg_image):
            if with_rle:
                self._count_normalizer(0, dtype, device)  # every rank joins each reduction
            # 0, with a zero gradient reaching the keypoint outputs (DDP sees them used)
            keys = ("kpts", "kpts_sigma") if with_rle else ("kpts",)
            unused = sum(branch.extras[key].flatten(1)[:, :0].sum(1) for key in keys).to(dtype)
            return unused[:, None].expand(num_images, columns)
        points, strides = levels.grid.points(dtype=dtype, device=fg_image.device)
        stride = strides[fg_anchor]  # (F, 1)
        raw = branch.extras["kpts"][fg_image, :, fg_anchor].to(dtype).view(-1, k, d)
        predicted = self._decode(raw[..., :2], points[fg_anchor][:, None])
        truth = keypoints.pixels[assignment.target_gt[fg_image, fg_anchor]]
        truth_xy = truth[..., :2] / stride[:, None]
        box = assignment.target_boxes[fg_image, fg_anchor] / stride
        area = ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))[:, None]
        visible = truth[..., 2] != 0
        distance = (predicted - truth_xy).pow(2).sum(-1)
        factor = k / (visible.sum(1, keepdim=True).to(dtype) + 1e-9)
        spread = (2 * self.sigmas.to(dtype)).pow(2) * (area + 1e-9) * 2
        location = (factor * (1 - torch.exp(-distance / spread)) * visible).sum(1) * (self.pose_gain / elements)
        out = [per_image_sum(location, fg_image, num_images)]
        if d == 3:
            bce = F.binary_cross_entropy_with_logits(raw[..., 2], visible.to(dtype), reduction="none")
            out.append(per_image_sum(bce.sum(1) * (self.kobj_gain / elements), fg_image, num_images))
        else:
            out.append(out[0].new_zeros(num_images))
        if self.rle_flow is not None:
            out.append(self._rle(branch, fg_image, fg_anchor, predicted, truth_xy, visible, num_images) if with_rle
                       else out[0].new_zeros(num_images))
        return torch.stack(out, -1)

    def _rle(self, branch: Branch, fg_image: Tensor, fg_anchor: Tensor, predicted: Tensor, truth: Tensor,
             visible: Tensor, num_images: int) -> Tensor:
        zero = predicted.new_zeros(num_images)
        k = self.keypoint_shape[0]
        raw_sigma = branch.extras["kpts_sigma"][fg_image, :, fg_anchor].view(-1, k, 2)[visible]
        # float32 at least (Ultralytics: float32 always), the floor float32's smallest normal
        sigma = raw_sigma.to(predicted.dtype).sigmoid().clamp_min(torch.finfo(torch.float32).tiny)
        error = (predicted[visible] - truth[visible]) / (sigma + 1e-9)
        finite = torch.isfinite(error).all(-1)
        image = fg_image[:, None].expand(-1, k)[visible][finite]
        weights = self.rle_weights.to(error.dtype).expand(len(visible), -1)[visible][finite]
        rows = self._count_normalizer(len(image), predicted.dtype, predicted.device)
        if not len(image):
            return zero
        error, sigma = error[finite].clamp(-100, 100), sigma[finite]
        log_phi = self.rle_flow.log_prob(error)
        per_row = ((sigma.log() - log_phi[:, None] + (2 * sigma).log() + error.abs()) * weights[:, None]).sum(1)
        per_image = per_image_sum(per_row / rows, image, num_images)
        # Ultralytics clamps the batch's RLE at 0; each image's share follows the clamp.
        return torch.where(per_image.sum() > 0, per_image, zero) * self.rle_gain


def _level_gate(grid: AnchorGrid, boxes: Tensor, gt: Tensor, anchor: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the pairs on levels that suit the object's size (YOLO26's pose assigner; see YOLOPoseLoss)."""
    _, strides = grid.points(dtype=boxes.dtype, device=boxes.device)
    stride = strides.view(-1)[anchor]
    side = (boxes[gt, 2:] - boxes[gt, :2]).prod(-1).clamp(min=0).sqrt()
    low, high = LEVEL_RANGE
    finest, coarsest = min(grid.strides), max(grid.strides)
    gated = (((side >= low * stride) | (stride == finest)) & ((side <= high * stride) | (stride == coarsest)))
    kept = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device).index_add_(0, gt, gated.long())
    keep = gated | (kept[gt] == 0)
    return gt[keep], anchor[keep]


def _check_keypoint_values(keypoints: Tensor) -> None:
    visible = keypoints[..., 2] > 0
    xy = keypoints[..., :2]
    outside = visible & ~((xy >= 0) & (xy <= 1)).all(-1)
    if bool(outside.any()):
        row, j = (int(i) for i in outside.nonzero()[0])
        raise ValueError(f"targets['keypoints']: a visible keypoint lies outside [0, 1] or is not finite (row {row}, "
                         f"keypoint {j}: {keypoints[row, j].tolist()}); keypoints are normalized x, y, and those "
                         "outside the image must have visibility 0")
    if not bool(torch.isfinite(keypoints[..., 2]).all()):
        row = int((~torch.isfinite(keypoints[..., 2])).any(-1).nonzero()[0, 0])
        raise ValueError(f"targets['keypoints']: a visibility is not finite (row {row})")


def _positive(name: str, values: Sequence[float] | Tensor, k: int) -> Tensor:
    out = torch.as_tensor(values, dtype=torch.float32).detach().clone().flatten()
    if out.shape != (k,) or not bool((out > 0).all()) or not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} must be {k} positive finite numbers, got {out.tolist()}")
    return out

