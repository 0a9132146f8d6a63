"""Rotated rectangles in generated images, a small detector with a YOLOv8-OBB-style head, YOLOOBBLoss, ProbIoU AP50.

``losskit compare --task detection --obb`` runs it (the task's name is ``detection-obb``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from losskit.arena.tasks.base import Task, register_task
from losskit.arena.tasks.detection import (
    SHAPE_COLOURS,
    SHAPES_CLASSES,
    SHAPES_REG_MAX,
    SHAPES_SIZE,
    SHAPES_STRIDES,
    class_wise_nms,
)
from losskit.arena.tasks.detection import TinyDetector as _AxisAlignedDetector

__all__ = ["OBB_SPECS", "TinyRotatedDetector", "average_precision", "decode_rotated_detections",
           "make_rotated_shapes"]

# Loss specs: the OBB criterion with Ultralytics' defaults, without the angle term (the YOLOv8-OBB loss
# before YOLO26 added it), and without the ProbIoU variance floor.
OBB_SPECS = {"obb": {}, "obb-no-angle": {"angle": 0.0}, "obb-no-floor": {"probiou_floor": 0.0}}


def make_rotated_shapes(n: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """``n`` RGB 64 x 64 images with 1-3 red (class 0) or green (class 1) rotated rectangles, and the target
    table with normalized ``xywhr`` boxes (``w >= h``, angle in ``[-pi/4, 3pi/4)``, Ultralytics' form)."""
    size = SHAPES_SIZE
    images = 0.1 * torch.rand(n, 3, size, size, generator=generator)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    rows = []
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (), generator=generator))):
            w, h = sorted(torch.randint(8, 29, (2,), generator=generator).tolist(), reverse=True)
            angle = float(torch.rand((), generator=generator)) * math.pi - math.pi / 4
            cx, cy = (float(v) for v in 12 + torch.rand(2, generator=generator) * (size - 24))
            along = (xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)
            across = -(xs - cx) * math.sin(angle) + (ys - cy) * math.cos(angle)
            inside = (along.abs() <= w / 2) & (across.abs() <= h / 2)
            label = int(torch.randint(0, SHAPES_CLASSES, (), generator=generator))
            images[i][:, inside] = SHAPE_COLOURS[label][:, None]
            rows.append([i, label, cx / size, cy / size, w / size, h / size, angle])
    table = torch.tensor(rows)
    return images, {"batch_idx": table[:, 0], "cls": table[:, 1], "bboxes": table[:, 2:]}


class TinyRotatedDetector(_AxisAlignedDetector):
    """The rectangles' detector with an OBB head: DFL box bins, one angle channel, class logits.

    The angle channel is mapped to :math:`(\\sigma(x) - 1/4)\\pi \\in [-\\pi/4, 3\\pi/4)`, as YOLOv8's OBB head does.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__(width)
        box = 4 * SHAPES_REG_MAX
        self.heads = nn.ModuleList(nn.Conv2d(width, box + 1 + SHAPES_CLASSES, 1) for _ in SHAPES_STRIDES)
        for head in self.heads:
            nn.init.constant_(head.bias[box + 1:], -4.0)

    def forward(self, x: Tensor) -> list[Tensor]:
        box = 4 * SHAPES_REG_MAX
        out = []
        for m in super().forward(x):
            angle = (torch.sigmoid(m[:, box:box + 1]) - 0.25) * math.pi
            out.append(torch.cat((m[:, :box], angle, m[:, box + 1:]), 1))
        return out


def decode_rotated_detections(maps: list[Tensor], *, conf: float = 0.05, overlap: float = 0.6, max_det: int = 100,
                              ) -> list[dict[str, Tensor]]:
    """Per image, ``boxes`` (``xywhr`` pixels), ``scores`` and ``labels`` after class-wise NMS by ProbIoU."""
    from losskit.boxes import probiou
    from losskit.detection import dfl_decode, make_anchors, rotated_distance_to_box

    points, strides = make_anchors(maps, SHAPES_STRIDES)
    flat = torch.cat([m.flatten(2) for m in maps], -1).transpose(1, 2)
    box = 4 * SHAPES_REG_MAX
    boxes = rotated_distance_to_box(points, dfl_decode(flat[..., :box], SHAPES_REG_MAX), flat[..., box:box + 1])
    boxes = torch.cat((boxes[..., :4] * strides, boxes[..., 4:]), -1)
    scores, labels = flat[..., box + 1:].sigmoid().max(-1)
    return class_wise_nms(boxes, scores, labels, probiou, conf=conf, overlap=overlap, max_det=max_det)


def average_precision(detections: Sequence[dict[str, Tensor]], truths: Sequence[dict[str, Tensor]], *,
                      threshold: float = 0.5) -> float:
    """Mean over classes of the all-point interpolated AP, a detection matching an unmatched object of its
    class and image when their ProbIoU is at least ``threshold`` (greedy, highest score first).

    Examples:
        >>> import torch
        >>> box = torch.tensor([[10.0, 10.0, 8.0, 4.0, 0.3]])
        >>> truth = [{"boxes": box, "labels": torch.tensor([0])}]
        >>> found = [{"boxes": torch.cat([box, box + 20]), "scores": torch.tensor([0.9, 0.8]),
        ...           "labels": torch.tensor([0, 0])}]
        >>> average_precision(found, truth)  # the first detection finds the object: precision 1 at recall 1
        1.0
    """
    from losskit.boxes import probiou

    precisions = []
    for label in sorted({int(v) for t in truths for v in t["labels"].tolist()}):
        scored, total = [], 0
        for found, truth in zip(detections, truths, strict=True):
            objects = truth["boxes"][truth["labels"] == label]
            total += len(objects)
            mine = found["labels"] == label
            boxes, scores = found["boxes"][mine], found["scores"][mine]
            taken = torch.zeros(len(objects), dtype=torch.bool)
            for i in scores.argsort(descending=True).tolist():
                hit = False
                if len(objects):
                    overlap = probiou(boxes[i:i + 1], objects)[0].masked_fill(taken, -1.0)
                    best = int(overlap.argmax())
                    hit = bool(overlap[best] >= threshold)
                    taken[best] |= hit
                scored.append((float(scores[i]), hit))
        scored.sort(key=lambda item: -item[0])
        hits = torch.tensor([hit for _, hit in scored], dtype=torch.float64)
        tp = hits.cumsum(0)
        precision = tp / torch.arange(1, len(hits) + 1, dtype=torch.float64)
        envelope = precision.flip(0).cummax(0).values.flip(0)  # all-point interpolation
        precisions.append(float((envelope * hits).sum() / total) if total else 0.0)
    return sum(precisions) / len(precisions) if precisions else 0.0


def _samples(n: int, generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
    images, t = make_rotated_shapes(n, generator)
    table = torch.cat((t["cls"][:, None], t["bboxes"]), 1)
    return [(images[i], table[t["batch_idx"] == i]) for i in range(n)]


def _data(seed: int) -> tuple[list, list]:
    gen = torch.Generator().manual_seed(seed)
    return _samples(384, gen), _samples(96, gen)


def _collate(samples: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
    images = torch.stack([image for image, _ in samples])
    rows = [torch.cat((torch.full((len(t), 1), float(i)), t), 1) for i, (_, t) in enumerate(samples)]
    table = torch.cat(rows) if rows else torch.zeros(0, 7)
    return images, {"batch_idx": table[:, 0], "cls": table[:, 1], "bboxes": table[:, 2:]}


def _loss(spec: str) -> nn.Module:
    from losskit.detection import YOLOOBBLoss

    name = spec.strip()
    if name not in OBB_SPECS:
        raise ValueError(f"unknown loss spec {name!r} for the oriented-box task; choose from {', '.join(OBB_SPECS)}")
    return YOLOOBBLoss(num_classes=SHAPES_CLASSES, strides=SHAPES_STRIDES, reg_max=SHAPES_REG_MAX, distributed=True,
                       **OBB_SPECS[name])


def _metrics(model: nn.Module, val: list, device: torch.device) -> dict[str, float]:
    detections, truths = [], []
    for start in range(0, len(val), 32):
        batch, targets = _collate(val[start:start + 32])
        detections += decode_rotated_detections([m.cpu() for m in model(batch.to(device))])
        for i in range(len(batch)):
            rows = targets["batch_idx"] == i
            boxes = targets["bboxes"][rows] * torch.tensor([SHAPES_SIZE] * 4 + [1.0])
            truths.append({"boxes": boxes, "labels": targets["cls"][rows].long()})
    return {"ap50_probiou": average_precision(detections, truths)}


register_task(Task(
    name="detection-obb",
    description=("Rotated rectangles: 64 x 64 images with one to three red or green rectangles (8-28 px sides, "
                 "any angle), the rectangles' six-layer detector with a YOLOv8-OBB-style head (DFL bins, an "
                 "angle, class logits), trained with losskit.detection.YOLOOBBLoss; the specs are obb "
                 "(Ultralytics' defaults), obb-no-angle and obb-no-floor. AP50 with ProbIoU >= 0.5 as the match, "
                 "after class-wise NMS by ProbIoU."),
    default_losses=("obb", "obb-no-angle"),
    make_data=_data,
    make_model=TinyRotatedDetector,
    metrics={"ap50_probiou": "max"},
    primary_metric="ap50_probiou",
    evaluate=_metrics,
    make_loss=_loss,
    collate=_collate,
    epochs=6,
    batch_size=16,
    lr=3e-3,
    seeds=3,
))
