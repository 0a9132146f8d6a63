r"""The YOLO instance-segmentation criterion: the detection loss plus the mask-prototype coefficient loss
(and, optionally, YOLO26's semantic-segmentation term).

A YOLOv8/YOLO26 segmentation head predicts, besides boxes and classes, ``nm`` mask coefficients
at every anchor and ``nm`` prototype masks per image; an anchor's mask logits are its coefficients
times the prototypes. The mask term is a binary cross-entropy against the assigned object's mask,
counted inside the object's box only.

**Speed and memory.** The BCE is zero outside the box, so it is computed inside each object's box
only (the anchors of an object share one prototype window), never on the whole prototype grid for
every foreground anchor: work and memory follow the objects' areas, not ``anchors x prototype
pixels``. The semantic term's one-hot target is built at the semantic logits' resolution, never
at the masks' (nearest resampling picks the same pixels either way).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from losskit._core.checks import check_bool, checks_enabled
from losskit._core.registry import register_class
from losskit.detection._task import Branch, TaskAssigner, TaskLoss, flat_per_anchor, per_image_sum, within_image_rank
from losskit.detection.assigner import Assignment, CandidatePairs, _top_per_group
from losskit.detection.yolo import _Targets
from losskit.functional.segmentation.compound import dice_ce_loss

__all__ = ["YOLOSegmentLoss"]

_WINDOW_ELEMENTS = 1 << 22  # logits per chunk of object windows (bounds the intermediate tensors)


@dataclass
class _Masks:
    """The target masks, checked: ``(B, h, w)`` overlap form or ``(M, h, w)`` per instance."""

    masks: Tensor
    overlap: bool
    rank: Tensor  # (M,) each row's index within its image (the overlap form marks it rank + 1)
    image: Tensor  # (M,)
    classes: Tensor | None = None  # (B, h, w) per-pixel class indices ("sem_masks"), with semantic=True

    def window(self, rows: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
        """Mask values of objects ``rows`` at pixel rows ``ys`` ``(n, h)`` and columns ``xs`` ``(n, w)``."""
        if self.overlap:
            values = self.masks[self.image[rows][:, None, None], ys[:, :, None], xs[:, None, :]]
            return values == (self.rank[rows] + 1).view(-1, 1, 1).to(values.dtype)
        return self.masks[rows[:, None, None], ys[:, :, None], xs[:, None, :]]

    def binary(self, rows: Tensor) -> Tensor:
        """``(n, h * w)`` bool masks of objects ``rows`` (the mask-aware assigner's masks)."""
        if self.overlap:
            return (self.masks[self.image[rows]] == (self.rank[rows] + 1).view(-1, 1, 1)).flatten(1)
        return (self.masks[rows] > 0.5).flatten(1)

    def covered(self, num_images: int) -> Tensor:
        """``(B, h, w)`` bool: the pixels some object's mask covers (nonzero)."""
        if self.overlap:
            return self.masks != 0
        counts = self.masks.new_zeros((num_images, *self.masks.shape[1:]), dtype=torch.float32)
        return counts.index_add(0, self.image, (self.masks != 0).to(torch.float32)) > 0


@register_class  # configs may build it: {"class": "losskit.detection.segment.YOLOSegmentLoss", ...}
class YOLOSegmentLoss(TaskLoss):
    r"""YOLOv8 / YOLO26 instance-segmentation loss: the detection terms plus the mask coefficient loss.

    The detection terms (box, cls, dfl or l1) and the assignment are those of
    :class:`~losskit.detection.YOLOLoss`. For a foreground anchor :math:`a` assigned to object
    :math:`g` (box :math:`b_g`, mask :math:`m_g`), with coefficients :math:`c_a` and the image's
    prototypes :math:`P` (``nm`` masks of :math:`h \times w` pixels):

    .. math::
        L_{seg} = \frac{\lambda_{box}}{|\mathcal F|} \sum_{a \in \mathcal F}
            \frac{1}{A_g\, h w} \sum_{p \in b_g} \mathrm{BCE}\big((c_a^\top P)_p, m_{g,p}\big)

    where :math:`|\mathcal F|` counts the foreground anchors of the batch, :math:`A_g` is the box's
    area as a fraction of the image, and :math:`p \in b_g` runs over the prototype pixels inside the
    box (pixel :math:`j` is inside when :math:`x_1 \le j < x_2`, the box scaled to the prototype
    grid). The gain is the *box* gain, as in Ultralytics. Components: ``box``, ``seg``, ``cls``,
    ``dfl`` (or ``l1``), in Ultralytics' order of loss items, and ``sem`` last with ``semantic=True``.

    **Semantic term** (``semantic=True``; YOLO26's ``Proto26`` head also predicts per-class
    semantic logits :math:`z` of shape ``(B, C, h', w')``). The target :math:`t_{nc}` is 1 at the
    pixels of image :math:`n` whose class index in ``"sem_masks"`` is :math:`c` *and* that some
    object's mask covers, 0 elsewhere (uncovered pixels are 0 in every channel, whatever index they
    hold; a class absent from the image is an all-zero channel), resampled (nearest) to
    :math:`h' \times w'` when the logits have another size. With :math:`p = \sigma(z)`:

    .. math::
        L_{sem} = \lambda_{box} \frac1B \sum_n \Big( \tfrac12 \operatorname{mean}_{c,x}
            \mathrm{BCE}(z_{ncx}, t_{ncx}) + \tfrac12 \operatorname{mean}_c \Big(1 -
            \frac{2 \sum_x p_{ncx} t_{ncx} + 1}{\sum_x p_{ncx} + \sum_x t_{ncx} + 1}\Big) \Big)

    (:func:`losskit.dice_ce_loss` with ``activation="sigmoid"``, ``lambda_dice = lambda_ce = 0.5``
    and smoothing 1, per image), with the box gain as in Ultralytics' ``BCEDiceLoss``. As there, it
    is 0 (with a zero gradient reaching the logits) when the branch has no foreground anchor, and it
    is a mean over this process's images, also with ``distributed=True``: ranks of equal batch size
    that all have foreground average to the global batch's term; a rank without foreground
    contributes 0 (as each Ultralytics DDP rank does).

    **YOLO26** (``mask_assignment=True``, Ultralytics' ``SegmentLoss26``): the assigner's overlap
    becomes the mean of the box overlap (CIoU clamped at 0) and the IoU of the predicted mask with the
    object's mask, the predicted mask binarized (logit > 0) and cropped to the *predicted* box; the
    mask IoU is computed for each object's ``3 * topk`` candidates of largest box alignment metric
    :math:`s^\alpha u^\beta + \epsilon` (0 elsewhere). Conflicts and soft targets then follow the
    masks. ``end2end=True`` is YOLO26's dual-branch form (see :class:`YOLOLoss`).

    Args:
        num_classes: Number of classes.
        num_masks: Mask coefficients per anchor (prototypes), ``nm`` (32 in Ultralytics).
        overlap_mask: Target masks in the overlap form, ``(B, h, w)`` with value ``k + 1`` where the
            image's ``k``-th object (in table order) lies; ``False``: one mask per object, ``(M, h, w)``.
        mask_assignment: YOLO26's mask-aware assignment (above).
        semantic: Add the semantic term (above): the predictions carry ``"semantic"`` (or
            Ultralytics' ``"proto": (prototypes, semantic logits)`` pair) and the targets
            ``"sem_masks"``.
        **options: Everything :class:`~losskit.detection.YOLOLoss` takes (``strides``, ``reg_max``,
            gains, ``end2end``, ``scale_by_batch``, ...). With ``distributed=True`` the foreground
            count :math:`|\mathcal F|` is also summed over the ranks (exact under DDP, as the
            detection terms' normalizer).

    Inputs:
        preds: ``{"maps": [per-level maps (B, 4 * reg_max + C, H_i, W_i)], "mask_coefficient":
            (B, nm, A), "proto": (B, nm, h, w)}`` (``A`` anchors, levels concatenated, row-major); with
            ``end2end=True``, ``{"one2many": {...}, "one2one": {...}}`` (YOLO26 gives the one-to-one
            branch the prototypes detached). With ``semantic=True`` also ``"semantic": (B, C, h',
            w')`` logits (YOLO26 detaches them for the one-to-one branch too).
        targets: The detection target table plus ``"masks"`` at the prototypes' resolution; with
            ``semantic=True`` also ``"sem_masks"``: ``(B, h, w)`` class indices in ``[0, C)``
            (integers, or floats holding integers, as Ultralytics' loader gives them).

    Returns:
        A :class:`DetectionLossResult`.

    Raises:
        ValueError: as :class:`YOLOLoss`, and masks of another size than the prototypes, of the wrong
            count, or (value checks) with values that mark no object; with ``semantic=True``,
            semantic logits of the wrong shape or missing, ``sem_masks`` missing, of another size than
            the masks or (value checks) with a value that is not a class index in ``[0, C)``.
        TypeError: ``sem_masks`` neither integer nor floating (a bool map, say).

    Examples:
        >>> import torch
        >>> from losskit.detection import YOLOSegmentLoss
        >>> criterion = YOLOSegmentLoss(num_classes=2, num_masks=4, strides=(8, 16))
        >>> maps = [torch.zeros(1, 66, 8, 8), torch.zeros(1, 66, 4, 4)]
        >>> preds = {"maps": maps, "mask_coefficient": torch.zeros(1, 4, 80, requires_grad=True),
        ...          "proto": torch.zeros(1, 4, 16, 16)}
        >>> masks = torch.zeros(1, 16, 16)
        >>> masks[0, 4:12, 4:12] = 1  # the image's first object
        >>> targets = {"batch_idx": torch.tensor([0.0]), "cls": torch.tensor([1.0]),
        ...            "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]]), "masks": masks}
        >>> out = criterion(preds, targets)
        >>> list(out.components)
        ['box', 'seg', 'cls', 'dfl']
        >>> # Zero logits: BCE is log 2 at each of the box's 64 of 256 pixels, divided by the box's
        >>> # area 1/4, times the box gain 7.5: 7.5 * log(2) * 64 / 256 / 0.25 = 5.1986.
        >>> round(out.components["seg"].item(), 4)
        5.1986
        >>> criterion = YOLOSegmentLoss(num_classes=2, num_masks=4, strides=(8, 16), semantic=True)
        >>> out = criterion({**preds, "semantic": torch.zeros(1, 2, 8, 8)},
        ...                 {**targets, "sem_masks": torch.ones(1, 16, 16)})
        >>> list(out.components)
        ['box', 'seg', 'cls', 'dfl', 'sem']
        >>> # Zero logits: BCE log 2 everywhere. The 8 x 8 logits take every other mask pixel, so the
        >>> # object covers 16 of their 64 pixels: Dice loss 1 - (2 * 8 + 1) / (32 + 16 + 1) for class 1
        >>> # and 1 - 1 / (32 + 1) for the absent class 0. 7.5 * (log(2) / 2 + (32/49 + 32/33) / 4) = 5.6420.
        >>> round(out.components["sem"].item(), 4)
        5.642

    References:
        Bolya et al., "YOLACT: Real-time Instance Segmentation", ICCV 2019 (prototypes and
        coefficients). Ultralytics ``v8SegmentationLoss`` and ``SegmentLoss26`` (8.4.190).
    """

    extra_keys = ("mask_coefficient", "proto")
    optional_keys = ("semantic",)

    def __init__(self, num_classes: int, *, num_masks: int = 32, overlap_mask: bool = True,
                 mask_assignment: bool = False, semantic: bool = False, **options: Any) -> None:
        super().__init__(num_classes, **options)
        check_bool("overlap_mask", overlap_mask)
        check_bool("mask_assignment", mask_assignment)
        check_bool("semantic", semantic)
        if not isinstance(num_masks, int) or num_masks < 1:
            raise ValueError(f"num_masks must be a positive int, got {num_masks!r}")
        self.num_masks, self.overlap_mask, self.mask_assignment = num_masks, overlap_mask, mask_assignment
        self.semantic = semantic
        self._config.update(num_masks=num_masks, overlap_mask=overlap_mask, mask_assignment=mask_assignment,
                            semantic=semantic)

    @property
    def component_names(self) -> tuple[str, ...]:
        box, cls, third = self.detection_names
        return (box, "seg", cls, third, "sem") if self.semantic else (box, "seg", cls, third)

    def _order(self, detection: Tensor, task: Tensor) -> Tensor:
        return torch.stack((detection[:, 0], task[:, 0], detection[:, 1], detection[:, 2], *task[:, 1:].unbind(1)),
                           -1)

    # --- inputs -------------------------------------------------------------------------------

    def _branch(self, pred: Mapping, name: str) -> Branch:
        branch = super()._branch(self._split_semantic(pred, f"preds['{name}']" if self.end2end else "preds"), name)
        flat_per_anchor(branch.extras["mask_coefficient"], "mask_coefficient", self.num_masks,
                        branch.levels.grid.num_anchors)
        proto = branch.extras["proto"]
        if proto.dim() != 4 or proto.shape[1] != self.num_masks:
            raise ValueError(f"preds['proto'] must have shape (B, num_masks={self.num_masks}, h, w), got "
                             f"{tuple(proto.shape)}")
        semantic = branch.extras.get("semantic")
        if semantic is not None and (semantic.dim() != 4 or semantic.shape[1] != self.num_classes):
            raise ValueError(f"preds['semantic'] must have shape (B, num_classes={self.num_classes}, h', w'), got "
                             f"{tuple(semantic.shape)}")
        return branch

    def _split_semantic(self, pred: Mapping, what: str) -> Mapping:
        """Ultralytics' ``"proto": (prototypes, semantic logits)`` as two keys; the semantic input checked
        against ``semantic``. ``what`` names the branch's dict in errors."""
        proto = pred["proto"]
        if isinstance(proto, (tuple, list)):
            if len(proto) != 2:
                raise ValueError(f"{what}['proto'] must be a tensor or a (prototypes, semantic logits) pair, got a "
                                 f"{type(proto).__name__} of {len(proto)}")
            if pred.get("semantic") is not None:
                raise ValueError(f"{what} has 'semantic' and a (prototypes, semantic logits) pair in 'proto': give "
                                 "the semantic logits once")
            pred = {**pred, "proto": proto[0], "semantic": proto[1]}
        given = pred.get("semantic") is not None
        if given and not self.semantic:
            raise ValueError(f"{what} carries semantic logits: build the criterion with semantic=True to add their "
                             "term (Ultralytics' sem_loss)")
        if self.semantic and not given:
            raise ValueError(f"with semantic=True, {what} must carry 'semantic' (B, num_classes, h', w') logits, or "
                             "'proto' as a (prototypes, semantic logits) pair")
        return pred

    def _check_targets(self, targets: Mapping[str, Tensor], prepared: _Targets, branch: Branch) -> _Masks:
        if "masks" not in targets:
            raise ValueError("targets must carry 'masks' for segmentation: (B, h, w) in the overlap form "
                             "(overlap_mask=True) or (M, h, w), one per object")
        proto = branch.extras["proto"]
        masks = torch.as_tensor(targets["masks"], device=proto.device)
        num_images, m = branch.levels.num_images, len(prepared.image)
        count, form = (num_images, "B") if self.overlap_mask else (m, "M")
        if masks.dim() != 3 or masks.shape[0] != count:
            raise ValueError(f"targets['masks'] must have shape ({form}={count}, h, w) with overlap_mask="
                             f"{self.overlap_mask}, got {tuple(masks.shape)}")
        if masks.shape[1:] != proto.shape[2:]:
            raise ValueError(f"targets['masks'] has size {tuple(masks.shape[1:])} but the prototypes are "
                             f"{tuple(proto.shape[2:])}: give the masks at the prototypes' resolution")
        rank = within_image_rank(prepared.image, num_images)
        if checks_enabled() and masks.numel():
            _check_mask_values(masks, self.overlap_mask, prepared.image, num_images)
        if not masks.is_floating_point():
            masks = masks.to(branch.levels.dtype) if not self.overlap_mask else masks.long()
        classes = self._semantic_classes(targets, masks.shape[1:], num_images, proto.device) if self.semantic else None
        return _Masks(masks, self.overlap_mask, rank, prepared.image, classes)

    def _semantic_classes(self, targets: Mapping[str, Tensor], size: torch.Size, num_images: int,
                          device: torch.device) -> Tensor:
        """``targets["sem_masks"]`` checked, as ``(B, h, w)`` int64 class indices."""
        if "sem_masks" not in targets:
            raise ValueError("with semantic=True, targets must carry 'sem_masks': (B, h, w) per-pixel class "
                             "indices at the masks' resolution")
        classes = torch.as_tensor(targets["sem_masks"], device=device)
        if classes.dtype == torch.bool or classes.is_complex():
            raise TypeError(f"targets['sem_masks'] must hold class indices as integers or integral floats, got "
                            f"dtype {classes.dtype}")
        if classes.dim() != 3 or classes.shape[0] != num_images:
            raise ValueError(f"targets['sem_masks'] must have shape (B={num_images}, h, w), got "
                             f"{tuple(classes.shape)}")
        if classes.shape[1:] != size:
            raise ValueError(f"targets['sem_masks'] has size {tuple(classes.shape[1:])} but the masks are "
                             f"{tuple(size)}: give both at the prototypes' resolution")
        if checks_enabled() and classes.numel():
            bad = (classes < 0) | (classes >= self.num_classes)
            if classes.is_floating_point():
                bad |= classes != classes.floor()  # NaN included
            if bool(bad.any()):
                image = int(bad.flatten(1).any(1).nonzero()[0, 0])
                raise ValueError(f"targets['sem_masks']: values must be class indices in [0, {self.num_classes}) "
                                 f"(image {image} holds {classes[image][bad[image]][0].item()})")
        return classes.long()

    # --- the mask-aware assignment (YOLO26) --------------------------------------------------

    def _prepare_branch(self, assigner: TaskAssigner, branch: Branch, prepared: _Targets, masks: _Masks) -> None:
        if not self.mask_assignment:
            return
        coef = branch.extras["mask_coefficient"].detach()
        proto = branch.extras["proto"].detach()
        levels = branch.levels
        # Prototype pixels per image pixel, as float32 arithmetic gives it (height-wise).
        scale = (torch.tensor(float(proto.shape[2]), dtype=torch.float32)
                 / (levels.maps[0].shape[2] * torch.tensor(float(self.strides[0]), dtype=torch.float32)))

        def overlap(pairs: CandidatePairs, box_overlap: Tensor) -> Tensor:
            value = pairs.score.to(box_overlap.dtype).pow(assigner.alpha) * box_overlap.pow(assigner.beta)
            chosen = _top_per_group(pairs.gt, value + assigner.eps, 3 * assigner.topk).nonzero().squeeze(1)
            miou = torch.zeros_like(box_overlap)
            if len(chosen):
                miou[chosen] = _mask_iou(coef, proto, masks, prepared.image, pairs.gt[chosen], pairs.anchor[chosen],
                                         pairs.pred_box[chosen] * scale.to(pairs.pred_box)).to(miou.dtype)
            return (box_overlap + miou) / 2

        assigner.pair_overlap = overlap

    # --- the mask term ------------------------------------------------------------------------

    def _task_terms(self, branch: Branch, prepared: _Targets, masks: _Masks, assignment: Assignment) -> Tensor:
        fg_image, fg_anchor = assignment.fg_mask.nonzero(as_tuple=True)
        seg = self._mask_term(branch, masks, assignment, fg_image, fg_anchor)
        if not self.semantic:
            return seg
        return torch.cat((seg, self._semantic_term(branch, masks, len(fg_image))[:, None]), 1)

    def _mask_term(self, branch: Branch, masks: _Masks, assignment: Assignment, fg_image: Tensor,
                   fg_anchor: Tensor) -> Tensor:
        """The mask coefficient loss per image, ``(B, 1)``."""
        levels = branch.levels
        dtype, num_images = levels.dtype, levels.num_images
        normalizer = self._count_normalizer(len(fg_image), dtype, fg_image.device)  # every rank calls it
        if not len(fg_image):  # 0, with a zero gradient reaching the coefficients and prototypes (DDP sees them used)
            unused = (branch.extras[key].flatten(1)[:, :0].sum(1) for key in ("mask_coefficient", "proto"))
            return sum(unused).to(dtype)[:, None]
        coef = branch.extras["mask_coefficient"][fg_image, :, fg_anchor].to(dtype)  # (F, nm)
        proto = branch.extras["proto"].to(dtype)
        rows = assignment.target_gt[fg_image, fg_anchor]
        per_anchor = _mask_bce(coef, proto, masks, rows, fg_image, assignment.target_boxes[fg_image, fg_anchor],
                               levels.image_size)
        per_anchor = per_anchor * (self.box_gain / normalizer)
        return per_image_sum(per_anchor, fg_image, num_images)[:, None]

    def _semantic_term(self, branch: Branch, masks: _Masks, num_foreground: int) -> Tensor:
        """The semantic BCE + Dice per image, ``(B,)``: each image's share of the batch mean, times the box gain."""
        logits, levels = branch.extras["semantic"], branch.levels
        if not num_foreground:  # as Ultralytics: 0, with a zero gradient reaching the logits (DDP sees them used)
            return logits.flatten(1)[:, :0].sum(1).to(levels.dtype)
        try:
            per_image = _semantic_bce_dice(logits, masks.classes, masks.covered(levels.num_images))
        except ValueError as error:  # the value checks' non-finite result: say which input
            raise ValueError(f"preds['semantic']: {error}") from error
        per_image = per_image.to(levels.dtype)
        return per_image * (self.box_gain / levels.num_images)


def _semantic_bce_dice(logits: Tensor, classes: Tensor, covered: Tensor) -> Tensor:
    """Per image ``(B,)``: half the BCE mean plus half the class-mean Dice (smoothing 1) of ``logits``
    ``(B, C, h', w')`` against the one-hot of ``classes`` at the ``covered`` pixels, zero elsewhere, both
    ``(B, h, w)`` and resampled nearest to ``h' x w'`` (the pixels a resampled one-hot target would pick)."""
    size = logits.shape[2:]
    if classes.shape[1:] != size:
        both = torch.stack((classes, covered), 1).to(torch.float32)  # class indices are exact in float32
        both = F.interpolate(both, size, mode="nearest")
        classes, covered = both[:, 0].long(), both[:, 1] > 0
    target = logits.new_zeros(logits.shape).scatter_(1, classes[:, None], covered[:, None].to(logits.dtype))
    return dice_ce_loss(logits, target, lambda_dice=0.5, lambda_ce=0.5, activation="sigmoid", smooth_nr=1.0,
                        smooth_dr=1.0, reduction="none")


def _check_mask_values(masks: Tensor, overlap: bool, image: Tensor, num_images: int) -> None:
    if overlap:
        counts = torch.bincount(image, minlength=num_images).view(-1, 1, 1)
        bad = (masks < 0) | (masks > counts) | (masks != masks.floor())
        what = "values must be integers from 0 (background) to the image's object count"
    else:
        bad = ~((masks >= 0) & (masks <= 1))
        what = "values must lie in [0, 1]"
    if bool(bad.any()):
        row = int(bad.flatten(1).any(1).nonzero()[0, 0])
        value = masks[row][bad[row]][0].item()
        name = "image" if overlap else "row"
        raise ValueError(f"targets['masks']: {what} ({name} {row} holds {value})")


def _crop_bounds(boxes: Tensor, width: int, height: int) -> Tensor:
    """``(n, 4)`` integer ``[x0, y0, x1, y1)`` pixel ranges of ``x1 <= j < x2`` (``y`` alike), clipped."""
    bounds = boxes.ceil().long()
    limit = torch.tensor([width, height, width, height], device=boxes.device)
    bounds = torch.minimum(bounds.clamp(min=0), limit)
    bounds[:, 2:] = torch.maximum(bounds[:, 2:], bounds[:, :2])
    return bounds


def _mask_bce(coef: Tensor, proto: Tensor, masks: _Masks, rows: Tensor, image: Tensor, boxes_px: Tensor,
              image_size: Tensor) -> Tensor:
    """Per foreground anchor: the BCE summed over its object's box, over ``h * w`` and the box's area."""
    _, _, mh, mw = proto.shape
    normalized = boxes_px / image_size.flip(0).repeat(2)
    area = (normalized[:, 2] - normalized[:, 0]) * (normalized[:, 3] - normalized[:, 1])
    scaled = normalized * torch.tensor([mw, mh, mw, mh], dtype=normalized.dtype, device=normalized.device)
    objects, anchor_object = torch.unique(rows, return_inverse=True)
    first = torch.full((len(objects),), len(rows), dtype=torch.long, device=rows.device).scatter_reduce(
        0, anchor_object, torch.arange(len(rows), device=rows.device), reduce="amin")
    bounds = _crop_bounds(scaled[first], mw, mh)  # every anchor of an object has the object's box
    object_image = image[first]
    order = torch.sort(anchor_object, stable=True).indices
    counts = torch.bincount(anchor_object, minlength=len(objects))
    slot = torch.empty_like(anchor_object)
    slot[order] = torch.arange(len(rows), device=rows.device) - (counts.cumsum(0) - counts)[anchor_object[order]]
    sizes = (bounds[:, 2:] - bounds[:, :2])  # (n, 2) window width, height
    by_area = torch.sort(sizes.prod(1), descending=True, stable=True).indices
    pixels = proto.permute(0, 2, 3, 1)  # (B, h, w, nm): a window gathers as (n, h', w', nm)
    sums, owners = [], []
    plan = torch.stack((sizes[by_area, 0], sizes[by_area, 1], counts[by_area]), 1).tolist()
    start = 0
    while start < len(by_area):
        width, height, kmax = plan[start]
        stop = start + 1
        while stop < len(by_area):  # grow the chunk while its padded logits stay within the budget
            w, h, k = (max(a, b) for a, b in zip((width, height, kmax), plan[stop], strict=True))
            if (stop - start + 1) * max(w * h * k, 1) > _WINDOW_ELEMENTS:
                break
            width, height, kmax, stop = w, h, k, stop + 1
        chunk = by_area[start:stop]
        sums.append(_window_bce(coef, pixels, masks, objects[chunk], object_image[chunk], bounds[chunk],
                                width, height, kmax, anchor_object, slot, chunk, owners))
        start = stop
    total = torch.cat(sums) if sums else coef.new_zeros(0)
    anchors = torch.cat(owners) if owners else rows.new_zeros(0)
    per_anchor = torch.zeros(len(rows), dtype=coef.dtype, device=coef.device).index_put((anchors,), total)
    return per_anchor / (mh * mw) / area


def _window_bce(coef: Tensor, pixels: Tensor, masks: _Masks, rows: Tensor, image: Tensor, bounds: Tensor,
                width: int, height: int, kmax: int, anchor_object: Tensor, slot: Tensor, chunk: Tensor,
                owners: list[Tensor]) -> Tensor:
    """BCE sums of the anchors of the objects ``chunk`` over their windows, padded to ``height x width``."""
    n, device = len(chunk), coef.device
    local = torch.full((int(anchor_object.max()) + 1,), -1, dtype=torch.long, device=device)
    local[chunk] = torch.arange(n, device=device)
    mine = (local[anchor_object] >= 0).nonzero().squeeze(1)
    owners.append(mine)
    ys = bounds[:, 1:2] + torch.arange(max(height, 1), device=device)
    xs = bounds[:, 0:1] + torch.arange(max(width, 1), device=device)
    inside = (ys < bounds[:, 3:4])[:, :, None] & (xs < bounds[:, 2:3])[:, None, :]  # (n, h', w')
    ys, xs = ys.clamp(max=pixels.shape[1] - 1), xs.clamp(max=pixels.shape[2] - 1)
    window = pixels[image[:, None, None], ys[:, :, None], xs[:, None, :]]  # (n, h', w', nm)
    target = masks.window(rows, ys, xs).to(coef.dtype).flatten(1)  # (n, h' w')
    padded = coef.new_zeros((n, kmax, coef.shape[1])).index_put((local[anchor_object[mine]], slot[mine]), coef[mine])
    logits = padded @ window.flatten(1, 2).transpose(1, 2)  # (n, kmax, h' w')
    bce = F.binary_cross_entropy_with_logits(logits, target[:, None].expand_as(logits), reduction="none")
    sums = (bce * inside.flatten(1)[:, None].to(bce.dtype)).sum(-1)
    return sums[local[anchor_object[mine]], slot[mine]]


def _mask_iou(coef: Tensor, proto: Tensor, masks: _Masks, table_image: Tensor, rows: Tensor, anchors: Tensor,
              boxes: Tensor) -> Tensor:
    """IoU of each pair's predicted mask (logit > 0, cropped to its predicted box) with its object's mask."""
    _, _, mh, mw = proto.shape
    dtype = torch.promote_types(proto.dtype, torch.float32)
    out = torch.zeros(len(rows), dtype=dtype, device=rows.device)
    image = table_image[rows]
    cols = torch.arange(mw, device=rows.device, dtype=boxes.dtype)
    lines = torch.arange(mh, device=rows.device, dtype=boxes.dtype)
    per_chunk = max(1, (1 << 24) // (mh * mw))
    for b in torch.unique(image).tolist():
        pairs = (image == b).nonzero().squeeze(1)
        flat = proto[b].flatten(1).to(dtype)
        for start in range(0, len(pairs), per_chunk):
            p = pairs[start:start + per_chunk]
            predicted = (coef[b, :, anchors[p]].T.to(dtype) @ flat) > 0  # (n, h w)
            x1, y1, x2, y2 = boxes[p].unbind(-1)
            crop = (((lines >= y1[:, None]) & (lines < y2[:, None]))[:, :, None]
                    & ((cols >= x1[:, None]) & (cols < x2[:, None]))[:, None, :])
            predicted &= crop.flatten(1)
            truth = masks.binary(rows[p])
            inter = (predicted & truth).sum(-1).to(dtype)
            union = truth.sum(-1).to(dtype) + predicted.sum(-1).to(dtype) - inter
            out[p] = inter / union.clamp(min=1)
    return out
