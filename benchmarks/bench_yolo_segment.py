"""YOLO segmentation criterion forward+backward, assignment included: losskit vs Ultralytics v8SegmentationLoss.

Both run in one process, interleaved, on the same head outputs and targets: per-level maps
(B, 4 * 16 + 80, H_i, W_i) for a 640 x 640 image (8400 anchors), 32 mask coefficients per anchor,
prototypes (B, 32, 160, 160), and ``overlap_mask`` targets (B, 160, 160) holding 100 objects per
image (ellipses inscribed in boxes with sides 16-160 px). Gains box 7.5, cls 0.5, dfl 1.5.

Goal: losskit at least 1.5x faster and with at least 2x less peak memory (the tensor tracker of
``benchmarks.harness``: the peak of live tensors during one forward+backward).

Ultralytics (AGPL-3.0) is called, never copied; its prediction dict is assembled from the maps
inside the timed callable, as its head does. Before timing, the script checks that both give the
same total (relative 1e-4). Run in the peer environment::

    PYTHONPATH=src:. YOLO_OFFLINE=1 /tmp/peer-venv/bin/python -m benchmarks.bench_yolo_segment \
        [--batch 8] [--objects 100] [--imgsz 640] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch

from benchmarks.harness import benchmark

STRIDES = (8, 16, 32)
GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
NUM_CLASSES, NUM_MASKS, REG_MAX = 80, 32, 16


def make_inputs(batch: int, objects: int, imgsz: int, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    maps = []
    for stride in STRIDES:
        side = imgsz // stride
        box = torch.randn(batch, 4 * REG_MAX, side, side, generator=g)
        cls = torch.randn(batch, NUM_CLASSES, side, side, generator=g) - 4
        maps.append(torch.cat([box, cls], 1).requires_grad_())
    anchors = sum((imgsz // s) ** 2 for s in STRIDES)
    coef = torch.randn(batch, NUM_MASKS, anchors, generator=g).mul_(0.3).requires_grad_()
    mh = imgsz // 4
    proto = torch.randn(batch, NUM_MASKS, mh, mh, generator=g).requires_grad_()
    wh = (16 + 144 * torch.rand(batch * objects, 2, generator=g)) / imgsz
    centre = wh / 2 + (1 - wh) * torch.rand(batch * objects, 2, generator=g)
    bboxes = torch.cat([centre, wh], 1)
    idx = torch.arange(batch).repeat_interleave(objects).float()
    masks = torch.zeros(batch, mh, mh, dtype=torch.uint8)
    grid = (torch.arange(mh, dtype=torch.float32) + 0.5) / mh
    for row in range(batch * objects):
        cx, cy, w, h = bboxes[row].tolist()
        inside = ((grid[None, :] - cx) / (w * 0.45)) ** 2 + ((grid[:, None] - cy) / (h * 0.45)) ** 2 <= 1
        masks[row // objects][inside] = row % objects + 1
    targets = {"batch_idx": idx, "cls": torch.randint(0, NUM_CLASSES, (batch * objects, 1), generator=g).float(),
               "bboxes": bboxes, "masks": masks}
    return {"maps": maps, "mask_coefficient": coef, "proto": proto}, targets


def ultralytics_forward(preds: dict, targets: dict):
    from torch import nn
    from ultralytics.utils.loss import v8SegmentationLoss

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.stride = torch.tensor([float(s) for s in STRIDES])
            self.nc, self.reg_max = NUM_CLASSES, REG_MAX

    class Stub(nn.Module):
        def __init__(self):
            super().__init__()
            self.args = SimpleNamespace(**GAINS, overlap_mask=True)
            self.model = nn.ModuleList([Head()])
            self.anchor = nn.Parameter(torch.zeros(1))

    criterion = v8SegmentationLoss(Stub())

    def forward() -> torch.Tensor:
        maps = preds["maps"]
        b = maps[0].shape[0]
        dict_preds = {"boxes": torch.cat([m[:, :4 * REG_MAX].reshape(b, 4 * REG_MAX, -1) for m in maps], -1),
                      "scores": torch.cat([m[:, 4 * REG_MAX:].reshape(b, NUM_CLASSES, -1) for m in maps], -1),
                      "feats": maps, "mask_coefficient": preds["mask_coefficient"], "proto": preds["proto"]}
        return criterion(dict_preds, targets)[0].sum()

    return forward


def losskit_forward(preds: dict, targets: dict):
    from losskit.detection import YOLOSegmentLoss

    criterion = YOLOSegmentLoss(NUM_CLASSES, num_masks=NUM_MASKS, scale_by_batch=True, clip_boxes=False,
                                dense_topk=True, **GAINS)
    return lambda: criterion(preds, targets).total


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    preds, targets = make_inputs(args.batch, args.objects, args.imgsz)
    forwards = {"losskit": losskit_forward(preds, targets)}
    try:
        forwards["ultralytics.v8SegmentationLoss"] = ultralytics_forward(preds, targets)
    except ImportError:
        print("ultralytics is not installed: timing losskit alone")
    inputs = (*preds["maps"], preds["mask_coefficient"], preds["proto"])
    title = (f"YOLO segmentation loss, B={args.batch}, {args.objects} objects per image, {args.imgsz} px, "
             f"prototypes {args.imgsz // 4} px")
    return benchmark(title, forwards, inputs, rounds=args.rounds, checks=False, rtol=1e-4)


if __name__ == "__main__":
    main()
