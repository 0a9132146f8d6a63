"""YOLO oriented-box criterion forward+backward with assignment: losskit ``YOLOOBBLoss`` vs Ultralytics ``v8OBBLoss``.

Both run in one process, interleaved, on the same head outputs and targets: per-level maps
``(B, 4 * reg_max + 1 + nc, H_i, W_i)`` (box channels, the angle in radians, class logits) and a
batch dict ``{"batch_idx", "cls", "bboxes": (M, 5) normalized xywhr}``. Ultralytics' criterion takes
the head dict (boxes, scores and angles flattened over the levels, as its OBB head builds them);
that step runs inside its timed callable. Strides 8/16/32, gains box 7.5, cls 0.5, dfl 1.5, angle 1.

Scenario (the goal: losskit at least 1.5x faster and at least 2x lower peak memory): 1024 x 1024
image (128x128 + 64x64 + 32x32 = 21504 anchors), 15 classes (DOTA), B = 8, 100 rotated objects per
image (sides 8-120 px, any angle, w >= h, in overlapping clusters).

losskit runs with its defaults (top-k among positive candidates: on rotated boxes the same assignment as
Ultralytics' dense top-k, see tests/test_golden_yolo_obb.py). Before timing, the script checks that both
compute the same total (relative difference <= 1e-4).
Memory is the peak of live tensors during one pass (``benchmarks.harness``; on CUDA the allocator's
peak). Run it in the peer environment with losskit on the path::

    PYTHONPATH=src YOLO_OFFLINE=1 /work/peer-venv/bin/python -m benchmarks.bench_yolo_obb [--reg-max 16 1]
        [--device cuda] [--rounds N] [--imgsz 1024] [--batch 8] [--objects 100]
"""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import torch

from benchmarks.harness import compare, report

STRIDES = (8, 16, 32)
GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5, "angle": 1.0}
ULTRALYTICS = "ultralytics.v8OBBLoss"
RTOL = 1e-4


def make_inputs(batch: int, objects: int, imgsz: int, nc: int, reg_max: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    maps = []
    for s in STRIDES:
        n = imgsz // s
        box = torch.randn(batch, 4 * reg_max, n, n, generator=g)
        if reg_max == 1:
            box = box.abs() * 3 + 0.5
        angle = (torch.rand(batch, 1, n, n, generator=g) - 0.25) * math.pi
        cls = torch.randn(batch, nc, n, n, generator=g) - 4
        maps.append(torch.cat([box, angle, cls], 1).to(device).requires_grad_())
    rows = []
    for i in range(batch):
        centres = torch.rand(8, 2, generator=g) * imgsz
        c = centres[torch.randint(8, (objects,), generator=g)] + torch.randn(objects, 2, generator=g) * 60
        c = c.clamp(1, imgsz - 1)
        wh = (8 + 112 * torch.rand(objects, 2, generator=g)).sort(-1, descending=True).values
        angle = -math.pi / 4 + math.pi * torch.rand(objects, 1, generator=g)
        rows.append(torch.cat([torch.full((objects, 1), float(i)), torch.randint(nc, (objects, 1), generator=g).float(),
                               c / imgsz, wh / imgsz, angle], 1))
    table = torch.cat(rows).to(device)
    batch_dict = {"batch_idx": table[:, 0], "cls": table[:, 1:2], "bboxes": table[:, 2:]}
    return maps, batch_dict


def ultralytics_forward(maps, batch_dict, nc: int, reg_max: int):
    from torch import nn
    from ultralytics.utils.loss import v8OBBLoss

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.stride = torch.tensor([float(s) for s in STRIDES])
            self.nc, self.reg_max = nc, reg_max

    class Stub(nn.Module):
        def __init__(self):
            super().__init__()
            self.args = SimpleNamespace(**GAINS)
            self.model = nn.ModuleList([Head()])
            self.anchor = nn.Parameter(torch.zeros(1, device=maps[0].device))

    criterion = v8OBBLoss(Stub())
    r = 4 * reg_max

    def forward():
        bs = maps[0].shape[0]
        preds = {"boxes": torch.cat([m[:, :r].reshape(bs, r, -1) for m in maps], -1),
                 "angle": torch.cat([m[:, r:r + 1].reshape(bs, 1, -1) for m in maps], -1),
                 "scores": torch.cat([m[:, r + 1:].reshape(bs, nc, -1) for m in maps], -1), "feats": maps}
        return criterion(preds, batch_dict)[0].sum()

    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reg-max", type=int, nargs="+", default=[16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--imgsz", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--classes", type=int, default=15)
    args = parser.parse_args()
    device = torch.device(args.device)

    from losskit.detection import YOLOOBBLoss

    for reg_max in args.reg_max:
        maps, batch_dict = make_inputs(args.batch, args.objects, args.imgsz, args.classes, reg_max, device)
        ours = YOLOOBBLoss(args.classes, strides=STRIDES, reg_max=reg_max, scale_by_batch=True)
        forwards = {"losskit": lambda ours=ours, maps=maps, batch_dict=batch_dict: ours(maps, batch_dict).total,
                    ULTRALYTICS: ultralytics_forward(maps, batch_dict, args.classes, reg_max)}
        values = {label: f().detach().item() for label, f in forwards.items()}
        gap = abs(values["losskit"] - values[ULTRALYTICS]) / abs(values[ULTRALYTICS])
        assert gap <= RTOL, f"totals differ: {values}"
        results = compare(forwards, tuple(maps), rounds=args.rounds, warmup=args.warmup)
        title = (f"YOLO OBB loss, B={args.batch}, {args.objects} objects/image, {args.imgsz}px, reg_max={reg_max}, "
                 f"{device}, threads={torch.get_num_threads()} (totals {values['losskit']:.6f} vs "
                 f"{values[ULTRALYTICS]:.6f}, relative gap {gap:.1e})")
        print(report(title, results, gradient_bytes=sum(m.numel() * m.element_size() for m in maps)))
        print()


if __name__ == "__main__":
    main()
