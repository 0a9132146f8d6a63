"""Rectangles in generated images, a small detector with a YOLOv8-style head, YOLOLoss with a box term, COCO mAP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from losskit.arena.tasks.base import Task, register_task

__all__ = ["SHAPES_CLASSES", "SHAPES_REG_MAX", "SHAPES_SIZE", "SHAPES_STRIDES", "TinyDetector", "decode_detections",
           "make_shapes"]

# Seeds when none are given: one seed's three runs take about 19 s of CPU time.
DETECTION_SEEDS = 5

SHAPES_SIZE, SHAPES_STRIDES, SHAPES_REG_MAX, SHAPES_CLASSES = 64, (8, 16), 8, 2
SHAPE_COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1]])


def make_shapes(n: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    """``n`` RGB 64 x 64 images with 1-3 red (class 0) or green (class 1) rectangles, and the YOLO target table."""
    size = SHAPES_SIZE
    images = 0.1 * torch.rand(n, 3, size, size, generator=generator)
    rows = []
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (), generator=generator))):
            w, h = torch.randint(10, 29, (2,), generator=generator).tolist()
            x = int(torch.randint(0, size - w + 1, (), generator=generator))
            y = int(torch.randint(0, size - h + 1, (), generator=generator))
            label = int(torch.randint(0, SHAPES_CLASSES, (), generator=generator))
            images[i, :, y:y + h, x:x + w] = SHAPE_COLOURS[label, :, None, None]
            rows.append([i, label, (x + w / 2) / size, (y + h / 2) / size, w / size, h / size])
    table = torch.tensor(rows)
    return images, {"batch_idx": table[:, 0], "cls": table[:, 1], "bboxes": table[:, 2:]}


class TinyDetector(nn.Module):
    """Six convolutions and a YOLOv8-style head (DFL box bins and class logits) at strides 8 and 16."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int = 2) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(4, cout), nn.SiLU())

        self.stem = nn.Sequential(block(3, width), block(width, width), block(width, width),
                                  block(width, width, 1))  # stride 8
        self.down = nn.Sequential(block(width, width), block(width, width, 1))  # stride 16
        outputs = 4 * SHAPES_REG_MAX + SHAPES_CLASSES
        self.heads = nn.ModuleList(nn.Conv2d(width, outputs, 1) for _ in SHAPES_STRIDES)
        for head in self.heads:  # start from a low class prior, as YOLO heads do
            nn.init.constant_(head.bias[4 * SHAPES_REG_MAX:], -4.0)

    def forward(self, x: Tensor) -> list[Tensor]:
        p3 = self.stem(x)
        p4 = self.down(p3)
        return [head(p) for head, p in zip(self.heads, (p3, p4), strict=True)]


def decode_detections(maps: list[Tensor], *, conf: float = 0.05, iou: float = 0.6, max_det: int = 100,
                      ) -> list[dict[str, Tensor]]:
    """Per image, ``boxes`` (xyxy pixels), ``scores`` and ``labels`` after class-wise NMS."""
    from losskit.boxes import box_iou
    from losskit.detection import dfl_decode, dist2bbox, make_anchors

    points, strides = make_anchors(maps, SHAPES_STRIDES)
    flat = torch.cat([m.flatten(2) for m in maps], -1).transpose(1, 2)
    boxes = dist2bbox(points, dfl_decode(flat[..., :4 * SHAPES_REG_MAX], SHAPES_REG_MAX)) * strides
    scores, labels = flat[..., 4 * SHAPES_REG_MAX:].sigmoid().max(-1)
    return class_wise_nms(boxes, scores, labels, box_iou, conf=conf, overlap=iou, max_det=max_det)


def class_wise_nms(boxes: Tensor, scores: Tensor, labels: Tensor, similarity, *, conf: float, overlap: float,
                   max_det: int) -> list[dict[str, Tensor]]:
    """Greedy NMS per image and class, highest score first: a box is kept when its ``similarity`` to
    every kept box of its class is at most ``overlap``. ``boxes (B, A, k)``, ``scores``/``labels (B, A)``."""
    out = []
    for b, s, c in zip(boxes, scores, labels, strict=True):
        keep = (s > conf).nonzero().flatten()
        keep = keep[s[keep].argsort(descending=True)]
        chosen: list[int] = []
        for i in keep.tolist():
            if len(chosen) == max_det:
                break
            same = [j for j in chosen if c[j] == c[i]]
            if not same or similarity(b[i:i + 1], b[same]).max() <= overlap:
                chosen.append(i)
        index = torch.tensor(chosen, dtype=torch.long)
        out.append({"boxes": b[index], "scores": s[index], "labels": c[index]})
    return out


def _shapes_collate(samples: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
    images = torch.stack([image for image, _ in samples])
    rows = [torch.cat((torch.full((len(t), 1), float(i)), t), 1) for i, (_, t) in enumerate(samples)]
    table = torch.cat(rows) if rows else torch.zeros(0, 6)
    return images, {"batch_idx": table[:, 0], "cls": table[:, 1], "bboxes": table[:, 2:]}


def _shapes_samples(n: int, generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
    images, t = make_shapes(n, generator)
    table = torch.cat((t["cls"][:, None], t["bboxes"]), 1)
    return [(images[i], table[t["batch_idx"] == i]) for i in range(n)]


def _shapes_data(seed: int) -> tuple[list, list]:
    gen = torch.Generator().manual_seed(seed)
    return _shapes_samples(384, gen), _shapes_samples(96, gen)


def _shapes_loss(spec: str) -> nn.Module:
    from losskit.detection import YOLOLoss

    # distributed=True: under torchrun the target-score normalizer is the global one (a no-op otherwise)
    return YOLOLoss(num_classes=SHAPES_CLASSES, strides=SHAPES_STRIDES, reg_max=SHAPES_REG_MAX,
                    box_loss=spec.strip(), distributed=True)


def _shapes_metrics(model: nn.Module, val: list, device: torch.device) -> dict[str, float]:
    """COCO mAP with faster-coco-eval (boxes in COCO's x, y, w, h pixels)."""
    from faster_coco_eval import COCO, COCOeval_faster

    from losskit.boxes import box_convert

    images, annotations, detections = [], [], []
    for start in range(0, len(val), 32):
        batch, targets = _shapes_collate(val[start:start + 32])
        predictions = decode_detections([m.cpu() for m in model(batch.to(device))])
        for i, found in enumerate(predictions):
            image_id = start + i + 1
            images.append({"id": image_id, "width": SHAPES_SIZE, "height": SHAPES_SIZE})
            rows = targets["batch_idx"] == i
            gt_boxes = box_convert(targets["bboxes"][rows] * SHAPES_SIZE, "cxcywh", "xywh")  # COCO x, y, w, h
            for label, box in zip(targets["cls"][rows].tolist(), gt_boxes.tolist(), strict=True):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                    "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
            found_boxes = box_convert(found["boxes"], "xyxy", "xywh").tolist()
            for box, score, label in zip(found_boxes, found["scores"].tolist(), found["labels"].tolist(), strict=True):
                detections.append({"image_id": image_id, "category_id": int(label) + 1, "bbox": box, "score": score})
    truth = COCO({"images": images, "annotations": annotations,
                  "categories": [{"id": c + 1, "name": str(c)} for c in range(SHAPES_CLASSES)]})
    if not detections:
        return {"map50": 0.0, "map50_95": 0.0}
    evaluation = COCOeval_faster(truth, truth.loadRes(detections), iouType="bbox")
    evaluation.run()
    stats = evaluation.stats_as_dict
    return {"map50": float(stats["AP_50"]), "map50_95": float(stats["AP_all"])}


register_task(Task(
    name="detection",
    description=("Rectangles: 64 x 64 images with one to three red or green rectangles (10-28 px sides), a "
                 "six-layer detector with a YOLOv8-style head at strides 8 and 16, trained with "
                 "losskit.detection.YOLOLoss; the specs name its box term (ciou, giou, diou, eiou, siou). "
                 "COCO mAP from faster-coco-eval, after class-wise NMS."),
    default_losses=("ciou", "giou", "siou"),
    make_data=_shapes_data,
    make_model=TinyDetector,
    metrics={"map50": "max", "map50_95": "max"},
    primary_metric="map50_95",
    evaluate=_shapes_metrics,
    make_loss=_shapes_loss,
    collate=_shapes_collate,
    epochs=6,
    batch_size=16,
    lr=3e-3,
    seeds=DETECTION_SEEDS,
))
