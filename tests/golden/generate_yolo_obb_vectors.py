"""Generate golden vectors for the YOLO oriented-box (OBB) losses from Ultralytics 8.4.190.

Run ONLY in the separate peer environment (torch 2.14.1, ultralytics 8.4.190), from the repo root::

    YOLO_OFFLINE=1 /work/peer-venv/bin/python tests/golden/generate_yolo_obb_vectors.py [case ...]

(naming cases rewrites only those). It writes ``tests/golden/yolo_obb/<case>.pt``, one ``torch.save`` of
a plain dict per case (``torch.load(path, weights_only=True)`` reads it); ``tests/test_golden_yolo_obb.py``
replays them against ``losskit.detection.YOLOOBBLoss``. Each file holds:

- ``source``: library, version, torch version and build, the exact call;
- ``config``: classes, strides, reg_max, gains (box 7.5, cls 0.5, dfl 1.5, angle 1.0), end2end, the
  one-to-many weight, image size;
- ``feats``: per-level maps ``(B, 4 * reg_max + 1 + nc, H_i, W_i)``: box channels, the angle in radians
  (what the OBB head hands the criterion: after its activation), class logits; end-to-end cases hold
  ``{"one2many": [...], "one2one": [...]}``. All values are float16 values (stored as float16, exact);
- ``batch``: ``batch_idx`` (M,), ``cls`` (M, 1), ``bboxes`` (M, 5) normalized xywhr, sorted by image;
- ``expected``: the loss items (box, cls, dfl-or-l1, angle; gains applied, not times the batch size),
  the total Ultralytics returns (``loss.sum()``: times the batch size), the assigner's outputs (fg mask,
  per-image gt index, target boxes in xywhr pixels, target scores summed over classes) per branch, and
  the gradient of the total with respect to every map;
- ``diagnostics``: counts about the assignment (see ``_diagnose``).

Ultralytics is not driven through a model: a stub supplies what ``v8OBBLoss`` reads (``args``,
``model[-1]`` with ``stride`` / ``nc`` / ``reg_max``, a parameter for the device), and the prediction
dict is assembled from the maps as the OBB head does it (levels in order, row-major within a level).
Inputs come from seeded ``torch.Generator`` streams on the CPU, so a rerun writes identical tensors.
Ultralytics' source is not copied here (AGPL-3.0); it is only called.

Nothing at module level imports a peer: pytest's ``--doctest-modules`` imports this file.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

OUT = Path(__file__).resolve().parent / "yolo_obb"
GENERATOR = "tests/golden/generate_yolo_obb_vectors.py"
STRIDES = (8, 16, 32)
GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5, "angle": 1.0}
O2M_START = 0.8
EPOCHS = 3

# Every case the generator writes; tests/test_golden_yolo_obb.py keeps the same list.
CASES = ("obb_v8_typical", "obb_v8_empty", "obb_v8_no_objects", "obb_v8_tiny", "obb_v8_crowded", "obb26_l1",
         "obb26_e2e", "obb26_e2e_crowded")


def level_sizes(imgsz, strides=STRIDES) -> list[tuple[int, int]]:
    """(H_i, W_i) of each level for an image size (H, W).

    >>> level_sizes((128, 192))
    [(16, 24), (8, 12), (4, 6)]
    """
    return [(imgsz[0] // s, imgsz[1] // s) for s in strides]


def _rboxes(g, n: int, imgsz, side_min: float, side_max: float, clusters=None, spread: float = 20.0):
    """(n, 5) normalized xywhr boxes in Ultralytics' canonical form (w >= h, angle in [-pi/4, 3pi/4)),
    sides uniform in [side_min, side_max] px; centres uniform, or N(cluster, spread^2) about that many
    uniform cluster centres; centres stay inside the image."""
    import torch

    H, W = imgsz
    size = torch.tensor([W, H], dtype=torch.float32)
    wh = (side_min + (side_max - side_min) * torch.rand(n, 2, generator=g)).sort(-1, descending=True).values
    angle = -math.pi / 4 + math.pi * torch.rand(n, 1, generator=g)
    if clusters is None:
        c = torch.rand(n, 2, generator=g) * size
    else:
        centres = torch.rand(clusters, 2, generator=g) * size
        c = centres[torch.randint(clusters, (n,), generator=g)] + torch.randn(n, 2, generator=g) * spread
    c = torch.maximum(torch.minimum(c, size - 1), torch.ones(2))
    return torch.cat([c / size, wh / size, angle], 1)


def _batch(per_image: list, nc: int, g) -> dict:
    import torch

    idx = [torch.full((len(b),), float(i)) for i, b in enumerate(per_image)]
    boxes = torch.cat(list(per_image), 0)
    cls = torch.randint(0, nc, (boxes.shape[0], 1), generator=g).float()
    return {"batch_idx": torch.cat(idx, 0), "cls": cls, "bboxes": boxes.float()}


def _maps(g, batch_size: int, nc: int, reg_max: int, imgsz, *, raw_angle: bool, box_sd: float = 1.0) -> list:
    """Per-level maps (B, 4 * reg_max + 1 + nc, H_i, W_i), rounded to float16 values.

    DFL heads: bin logits N(0, box_sd^2) plus a bump about a per-side centre U(0.5, 5) bins; reg_max == 1:
    distances |N(0, box_sd^2)| * 3 + 0.5 grid units. Angle: the v8 head's (sigmoid(x) - 0.25) * pi with
    x ~ N(0, 1.5^2), or YOLO26's raw output N(0.6, 0.8^2). Class logits N(-2, 1.5^2).
    """
    import torch

    out = []
    for h, w in level_sizes(imgsz):
        if reg_max > 1:
            bins = torch.arange(reg_max, dtype=torch.float32).view(1, 1, reg_max, 1, 1)
            mu = 0.5 + 4.5 * torch.rand(batch_size, 4, 1, h, w, generator=g)
            box = torch.randn(batch_size, 4, reg_max, h, w, generator=g) * box_sd - 0.5 * ((bins - mu) / 1.2) ** 2
            box = box.reshape(batch_size, 4 * reg_max, h, w)
        else:
            box = torch.randn(batch_size, 4, h, w, generator=g).abs() * 3 * box_sd + 0.5
        x = torch.randn(batch_size, 1, h, w, generator=g)
        angle = x * 0.8 + 0.6 if raw_angle else (torch.sigmoid(x * 1.5) - 0.25) * math.pi
        cls = torch.randn(batch_size, nc, h, w, generator=g) * 1.5 - 2
        out.append(torch.cat([box, angle, cls], 1).half().float().contiguous())
    return out


def build_cases() -> list[dict]:
    """Every case's inputs and settings, from fixed seeds."""
    import torch

    cases = []

    def add(name, seed, nc, reg_max, imgsz, per_image, *, e2e=False, note="", box_sd=1.0):
        g = torch.Generator().manual_seed(seed)
        per_image = [p(g) if callable(p) else p for p in per_image]
        batch = _batch(per_image, nc, g)
        bs = len(per_image)

        def make():
            return _maps(g, bs, nc, reg_max, imgsz, raw_angle=reg_max == 1, box_sd=box_sd)

        feats = {"one2many": make(), "one2one": make()} if e2e else make()
        cases.append({"name": name, "nc": nc, "reg_max": reg_max, "imgsz": list(imgsz), "batch": batch,
                      "feats": feats, "end2end": e2e, "note": note})

    sq = (128, 128)
    add("obb_v8_typical", 41, 5, 16, sq, [lambda g: _rboxes(g, 4, sq, 8, 90), lambda g: _rboxes(g, 9, sq, 8, 90)],
        note="2 images with 4 and 9 rotated objects of 8-90 px at any angle.")
    add("obb_v8_empty", 42, 4, 16, sq, [lambda g: _rboxes(g, 5, sq, 8, 90), torch.zeros(0, 5),
                                        lambda g: _rboxes(g, 2, sq, 8, 90)],
        note="3 images; image 1 has no objects.")
    add("obb_v8_no_objects", 43, 3, 16, sq, [torch.zeros(0, 5), torch.zeros(0, 5)],
        note="No targets at all: the classification term alone.")
    add("obb_v8_tiny", 44, 4, 16, sq, [lambda g: _rboxes(g, 8, sq, 1, 12), lambda g: _rboxes(g, 10, sq, 1, 12)],
        note="Objects of 1-12 px: those with a side under 2 px are left out; STAL widens sides under 16 px "
             "to 16 px for candidate selection.")
    big = (256, 256)
    add("obb_v8_crowded", 45, 3, 16, big,
        [lambda g: _rboxes(g, 300, big, 4, 48, clusters=8, spread=18.0), lambda g: _rboxes(g, 4, big, 10, 80)],
        note="256 x 256; image 0 has 300 heavily overlapping rotated objects (4-48 px) in 8 clusters.")
    wide = (128, 192)
    add("obb26_l1", 46, 4, 1, wide, [lambda g: _rboxes(g, 5, wide, 8, 90), lambda g: _rboxes(g, 3, wide, 8, 90)],
        note="reg_max = 1 (raw ltrb distances, L1 term), raw angles, 128 x 192 (H x W).")
    add("obb26_e2e", 47, 4, 1, sq, [lambda g: _rboxes(g, 4, sq, 8, 90),
                                    lambda g: _rboxes(g, 12, sq, 12, 48, clusters=2, spread=12.0)], e2e=True,
        note="E2ELoss(v8OBBLoss): one-to-many (topk 10) + one-to-one (topk 7, topk2 1), o2m 0.8.")
    s320 = (320, 320)
    add("obb26_e2e_crowded", 48, 2, 1, s320, [lambda g: _rboxes(g, 240, s320, 4, 40, clusters=10, spread=24.0)],
        e2e=True, box_sd=0.6,
        note="E2ELoss on 320 x 320, one image with 240 rotated objects of 4-40 px in 10 clusters.")
    return cases


def _stub_model(nc: int, reg_max: int):
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.stride = torch.tensor([float(s) for s in STRIDES])
            self.nc, self.reg_max = nc, reg_max

    class Stub(nn.Module):
        def __init__(self):
            super().__init__()
            self.args = SimpleNamespace(**GAINS, epochs=EPOCHS)
            self.model = nn.ModuleList([Head()])
            self.anchor = nn.Parameter(torch.zeros(1))

    return Stub()


def _preds(maps: list, nc: int, reg_max: int) -> dict:
    """The OBB head's training dict from per-level maps (box channels, angle, class logits)."""
    import torch

    bs, r = maps[0].shape[0], 4 * reg_max
    return {"boxes": torch.cat([m[:, :r].reshape(bs, r, -1) for m in maps], -1),
            "angle": torch.cat([m[:, r:r + 1].reshape(bs, 1, -1) for m in maps], -1),
            "scores": torch.cat([m[:, r + 1:].reshape(bs, nc, -1) for m in maps], -1),
            "feats": maps}


def _record(assigner) -> dict:
    """Wrap an assigner's forward and top-k to keep their outputs."""
    log = {}
    forward, topk = assigner.forward, assigner.select_topk_candidates

    def wrapped_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        log["out"], log["mask_gt"] = tuple(t.clone() for t in out), args[5]  # the criterion edits its outputs
        return out

    def wrapped_topk(metrics, *args, **kwargs):
        log["metrics"] = metrics.clone()
        return topk(metrics, *args, **kwargs)

    assigner.forward, assigner.select_topk_candidates = wrapped_forward, wrapped_topk
    return log


def _own(t):
    return t.detach().clone().contiguous()


def _diagnose(log: dict, topk: int) -> dict:
    """fg / zero_score_fg (foreground of target score 0: metric-0 top-k picks inside the box);
    gts_with_zero_picks (objects with fewer than k positive candidates); topk_boundary_ties (k-th and
    (k+1)-th positive metrics equal: torch.topk's order would decide, kept at 0)."""
    labels, boxes, scores, fg, gt_idx = log["out"]
    d = {"fg": int(fg.sum()), "zero_score_fg": int((fg & (scores.sum(-1) <= 0)).sum())}
    if "metrics" not in log:
        return {**d, "gts_with_zero_picks": 0, "topk_boundary_ties": 0}
    mask_gt = log["mask_gt"].squeeze(-1).bool()
    srt = log["metrics"].sort(-1, descending=True).values
    d["gts_with_zero_picks"] = int(((srt[..., topk - 1] <= 0) & mask_gt).sum())
    d["topk_boundary_ties"] = int(((srt[..., topk - 1] > 0) & (srt[..., topk - 1] == srt[..., topk])
                                   & mask_gt).sum())
    return d


def _branch_record(log: dict, items) -> dict:
    labels, boxes, scores, fg, gt_idx = log["out"]
    return {"loss_items": _own(items), "fg_mask": _own(fg.bool()), "target_gt_idx": _own(gt_idx.long()),
            "target_boxes": _own(boxes), "target_scores": _own(scores.float().sum(-1)),
            "target_labels": _own(labels.long())}


def run_case(case: dict) -> dict:
    import torch
    import ultralytics
    from ultralytics.utils.loss import E2ELoss, v8OBBLoss

    nc, reg_max, e2e = case["nc"], case["reg_max"], case["end2end"]
    model = _stub_model(nc, reg_max)
    feats = case["feats"]
    bs = (feats["one2many"] if e2e else feats)[0].shape[0]
    if e2e:
        crit = E2ELoss(model, v8OBBLoss)
        leaves = {k: [m.clone().requires_grad_() for m in v] for k, v in feats.items()}
        preds = {k: _preds(v, nc, reg_max) for k, v in leaves.items()}
        logs = {"one2many": _record(crit.one2many.assigner), "one2one": _record(crit.one2one.assigner)}
        total, _ = crit(preds, case["batch"])
        call = "E2ELoss(model, v8OBBLoss)(preds, batch)  # o2m 0.8, o2o 0.2"
        flat = leaves["one2many"] + leaves["one2one"]
        items = {"one2many": crit.one2many.loss(preds["one2many"], case["batch"])[0].detach() / bs,
                 "one2one": crit.one2one.loss(preds["one2one"], case["batch"])[0].detach() / bs}
        topks = {"one2many": 10, "one2one": 7}
    else:
        crit = v8OBBLoss(model)
        leaves = [m.clone().requires_grad_() for m in feats]
        logs = {"one2many": _record(crit.assigner)}
        total, _ = crit(_preds(leaves, nc, reg_max), case["batch"])
        call = "v8OBBLoss(model)(preds, batch)"
        flat = leaves
        items = {"one2many": total.detach() / bs}
        topks = {"one2many": 10}
    total_sum = total.sum()
    grads = torch.autograd.grad(total_sum, flat)
    branches = {name: _branch_record(logs[name], items[name]) for name in logs}
    expected = {"total": _own(total_sum), "branches": branches,
                "grads": ({"one2many": [_own(g) for g in grads[:3]], "one2one": [_own(g) for g in grads[3:]]}
                          if e2e else [_own(g) for g in grads])}
    stored = ({k: [m.half() for m in v] for k, v in feats.items()} if e2e else [m.half() for m in feats])
    version = str(torch.__version__)
    return {
        "source": {"lib": "ultralytics", "version": ultralytics.__version__, "torch": version.split("+")[0],
                   "torch_build": version, "call": call, "generator": GENERATOR, "device": "cpu"},
        "config": {"num_classes": nc, "strides": list(STRIDES), "reg_max": reg_max, **GAINS, "end2end": e2e,
                   "o2m": O2M_START if e2e else 1.0, "imgsz": case["imgsz"], "feats_storage": "float16"},
        "feats": stored, "batch": {k: _own(v) for k, v in case["batch"].items()}, "expected": expected,
        "diagnostics": {name: _diagnose(logs[name], topks[name]) for name in logs}, "note": case["note"],
    }


def main(names: list[str] | None = None) -> list[Path]:
    import torch

    OUT.mkdir(exist_ok=True)
    written = []
    for case in build_cases():
        if names and case["name"] not in names:
            continue
        payload = run_case(case)
        for name, d in payload["diagnostics"].items():
            if d["topk_boundary_ties"]:
                raise RuntimeError(f"{case['name']} ({name}): a positive metric tie straddles the top-k boundary")
        path = OUT / f"{case['name']}.pt"
        torch.save(payload, path)
        written.append(path)
        print(f"{path.name}: total {float(payload['expected']['total']):.6f} {payload['diagnostics']}")
    return written


if __name__ == "__main__":
    main(sys.argv[1:] or None)
