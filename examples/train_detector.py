"""Train a tiny anchor-free detector with losskit's YOLO criterion, on generated images, on the CPU.

Each 64 x 64 image holds one to three filled rectangles, red (class 0) or green (class 1), on a
noisy background (the arena's detection data, ``losskit.arena.tasks.make_shapes``). A six-layer
CNN predicts, at strides 8 and 16, the box sides as 8-bin
distributions (DFL) and two class logits, which is a YOLOv8 head in miniature;
``losskit.detection.YOLOLoss`` assigns anchors to rectangles and scores them. The script prints the
loss and its components as they fall, then the share of test rectangles found: a prediction of
the right class with score above 0.5 and IoU above 0.5.

    python examples/train_detector.py [--steps 400]
"""

from __future__ import annotations

import argparse

import torch

from losskit.arena.tasks import (
    SHAPES_CLASSES,
    SHAPES_REG_MAX,
    SHAPES_SIZE,
    SHAPES_STRIDES,
    TinyDetector,
    make_shapes,
)
from losskit.boxes import box_convert, box_iou
from losskit.detection import YOLOLoss, dfl_decode, dist2bbox, make_anchors

SIZE, STRIDES, REG_MAX, CLASSES = SHAPES_SIZE, SHAPES_STRIDES, SHAPES_REG_MAX, SHAPES_CLASSES


@torch.no_grad()
def recall(model: TinyDetector, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> float:
    """Share of target boxes matched by a prediction of their class with score > 0.5 and IoU > 0.5."""
    maps = model(images)
    points, strides = make_anchors(maps, STRIDES)
    flat = torch.cat([m.flatten(2) for m in maps], -1).transpose(1, 2)  # (B, A, channels)
    boxes = dist2bbox(points, dfl_decode(flat[..., :4 * REG_MAX], REG_MAX)) * strides
    scores = flat[..., 4 * REG_MAX:].sigmoid()
    found = 0
    table = zip(targets["batch_idx"].long(), targets["cls"].long(), targets["bboxes"], strict=True)
    for image, label, box in table:
        truth = box_convert(box[None] * SIZE, "cxcywh", "xyxy")
        confident = scores[image, :, label] > 0.5
        found += bool((box_iou(truth, boxes[image][confident]) > 0.5).any())
    return found / len(targets["cls"])


def main(argv: list[str] | None = None) -> None:
    args_parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args_parser.add_argument("--steps", type=int, default=400)
    args_parser.add_argument("--batch", type=int, default=16)
    args = args_parser.parse_args(argv)
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(0)
    model = TinyDetector()
    criterion = YOLOLoss(num_classes=CLASSES, strides=STRIDES, reg_max=REG_MAX)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-4)
    test_images, test_targets = make_shapes(64, torch.Generator().manual_seed(1))
    model.eval()
    print(f"before training: recall {recall(model, test_images, test_targets):.3f}")
    model.train()
    for step in range(args.steps + 1):
        images, targets = make_shapes(args.batch, data)
        out = criterion(model(images), targets)
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
        if step % (args.steps // 6 or 1) == 0:
            parts = "  ".join(f"{k} {v:7.4f}" for k, v in out.items().items())
            print(f"detector step {step:4d} loss {out.total.item():8.4f}  ({parts})")
    model.eval()
    print(f"after training: recall {recall(model, test_images, test_targets):.3f}")


if __name__ == "__main__":
    main()
