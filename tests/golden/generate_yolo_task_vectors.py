"""Generate golden vectors for the YOLO segmentation and pose losses from Ultralytics 8.4.190.

Run ONLY in the separate peer environment (see README.md in this folder)::

    YOLO_OFFLINE=1 /tmp/peer-venv/bin/python tests/golden/generate_yolo_task_vectors.py [case ...]  # from the repo root

It writes ``tests/golden/yolo_tasks/<case>.pt`` (a ``torch.save`` of plain tensors, numbers, strings,
lists and dicts: ``torch.load(path, weights_only=True)`` reads it), replayed by
``tests/test_yolo_segment.py`` and ``tests/test_yolo_pose.py``. Each file holds ``source`` (library,
versions, the exact call), ``config``, ``inputs`` (per branch: the per-level head maps, and the
mask coefficients and prototypes, or the keypoint outputs and their sigmas; the semantic cases also
the semantic logits of ``Proto26``, passed as Ultralytics' ``proto = (prototypes, semantic)`` pair
and detached for the one-to-one branch as its head does), ``batch`` (Ultralytics' batch dict, sorted
by image; ``sem_masks`` in the semantic cases), ``expected`` (per branch the loss items with gains applied and not
times the batch size, the foreground mask; the returned total ``loss.sum()``; the gradient of that
total with respect to every input) and ``diagnostics``.

The criteria are driven through a stub model (``args`` with the gains, ``model[-1]`` with
``stride``, ``nc``, ``reg_max``, ``kpt_shape`` and, for RLE, a ``flow_model``). The flow is
:class:`AffineFlow` below, a two-parameter Gaussian with a closed-form ``log_prob``, so that the replay
needs no Ultralytics code; YOLO26's own RealNVP is called the same way. Ultralytics' source is not
copied here (AGPL-3.0); it is only called. Inputs come from seeded ``torch.Generator`` streams on the
CPU. Nothing at module level imports a peer (pytest imports this file for its doctests).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_yolo_vectors import STRIDES, _boxes, _clustered_boxes, _maps, _own  # noqa: E402

OUT = Path(__file__).resolve().parent / "yolo_tasks"
GENERATOR = "tests/golden/generate_yolo_task_vectors.py"
GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5, "pose": 12.0, "kobj": 1.0, "rle": 1.0}
O2M_START = 0.8

CASES = ("seg_v8_overlap", "seg_v8_instances", "seg_v8_crowded", "seg26_e2e", "seg26_crowded",
         "seg_v8_semantic", "seg_v8_semantic_instances", "seg_v8_semantic_crowded", "seg_v8_semantic_empty",
         "seg26_semantic_e2e", "seg26_semantic_crowded",
         "pose_v8", "pose_v8_coco", "pose26_e2e_rle", "pose26_crowded")


def affine_flow_log_prob(x, loc, log_scale):
    """Log-density of independent Gaussians ``N(loc, exp(log_scale)^2)`` summed over the last axis.

    >>> import torch
    >>> round(float(affine_flow_log_prob(torch.zeros(1, 2), torch.zeros(2), torch.zeros(2))), 6)
    -1.837877
    """
    z = (x - loc) / log_scale.exp()
    return (-0.5 * z * z - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)


def _flow():
    import torch
    from torch import nn

    class AffineFlow(nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = nn.Parameter(torch.tensor([0.1, -0.2]))
            self.log_scale = nn.Parameter(torch.tensor([0.3, -0.1]))

        def log_prob(self, x):
            return affine_flow_log_prob(x, self.loc, self.log_scale)

    return AffineFlow()


# --- inputs -----------------------------------------------------------------------------------


def _ellipse_masks(boxes_norm, mh: int, mw: int, g):
    """(n, mh, mw) float masks: an ellipse inscribed in each box (radii 40-50 % of its sides), at pixel centres."""
    import torch

    n = len(boxes_norm)
    ys = (torch.arange(mh, dtype=torch.float32) + 0.5).view(1, -1, 1)
    xs = (torch.arange(mw, dtype=torch.float32) + 0.5).view(1, 1, -1)
    cx, cy = (boxes_norm[:, 0] * mw).view(-1, 1, 1), (boxes_norm[:, 1] * mh).view(-1, 1, 1)
    rx = (boxes_norm[:, 2] * mw * (0.4 + 0.1 * torch.rand(n, generator=g))).view(-1, 1, 1)
    ry = (boxes_norm[:, 3] * mh * (0.4 + 0.1 * torch.rand(n, generator=g))).view(-1, 1, 1)
    return ((((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2) <= 1).float()


def _semantic_classes(idx, cls, inst, bs: int, overlap: bool, nc: int, g, uncovered: str):
    """(bs, mh, mw) float class indices as Ultralytics' loader builds them: the class of the object each mask
    marks (the overlap form: the object the masks keep, later over earlier; one mask per object: the smallest
    covering object); uncovered pixels hold ``uncovered``: "zero" (as the loader) or "random" classes (the
    loss must ignore them)."""
    import torch

    sem = torch.zeros(bs, *inst.shape[1:])
    covered = torch.zeros(bs, *inst.shape[1:], dtype=torch.bool)
    for i in range(bs):
        rows = (idx == i).nonzero().flatten().tolist()
        if not overlap:
            rows = sorted(rows, key=lambda r: -float(inst[r].sum()))  # the smallest paints last
        for r in rows:
            sem[i][inst[r] > 0] = cls[r, 0]
            covered[i] |= inst[r] > 0
    if uncovered == "random":
        sem = torch.where(covered, sem, torch.randint(0, nc, sem.shape, generator=g).float())
    return sem


def _keypoints(boxes_norm, k: int, g, invisible_objects: int = 1):
    """(n, k, 3): points uniform inside each box, visibility 0/1/2 at random; the first
    ``invisible_objects`` objects have none visible."""
    import torch

    n = len(boxes_norm)
    u = torch.rand(n, k, 2, generator=g)
    lo = boxes_norm[:, None, :2] - boxes_norm[:, None, 2:] / 2
    xy = lo + u * boxes_norm[:, None, 2:]
    vis = torch.randint(0, 3, (n, k), generator=g).float()
    vis[:invisible_objects] = 0
    return torch.cat([xy.clamp(0, 1), vis[..., None]], -1)


def build_cases() -> list[dict]:
    import torch

    cases = []

    def add(name, seed, *, task, imgsz, per_image, nc=3, reg_max=16, e2e=False, yolo26=False, nm=8,
            overlap=True, k=5, rle=False, semantic=None, note=""):
        """``semantic``: None, or (semantic logits' stride over the prototypes', "zero" | "random" classes at
        uncovered pixels)."""
        g = torch.Generator().manual_seed(seed)
        boxes = [p(g) for p in per_image]
        bs = len(boxes)
        idx = torch.cat([torch.full((len(b),), float(i)) for i, b in enumerate(boxes)])
        bboxes = torch.cat(boxes).float().reshape(-1, 4)
        batch = {"batch_idx": idx, "cls": torch.randint(0, nc, (len(bboxes), 1), generator=g).float(),
                 "bboxes": bboxes}
        mh, mw = imgsz[0] // 4, imgsz[1] // 4
        if task == "segment":
            inst = _ellipse_masks(bboxes, mh, mw, g)
            if overlap:
                masks = torch.zeros(bs, mh, mw, dtype=torch.uint8)
                for i in range(bs):
                    for j, row in enumerate((idx == i).nonzero().flatten().tolist()):
                        masks[i][inst[row] > 0] = j + 1  # later objects cover earlier ones
                batch["masks"] = masks
            else:
                batch["masks"] = inst
            if semantic is not None:
                sem = torch.zeros(bs, mh, mw)
                if len(bboxes):
                    sem = _semantic_classes(idx, batch["cls"], inst, bs, overlap, nc, g, semantic[1])
                batch["sem_masks"] = sem
        else:
            batch["keypoints"] = _keypoints(bboxes, k, g)

        def branch():
            out = {"maps": _maps(g, bs, nc, reg_max, imgsz)}
            a = sum(m.shape[2] * m.shape[3] for m in out["maps"])
            if task == "segment":
                out["mask_coefficient"] = torch.randn(bs, nm, a, generator=g)
            else:
                out["kpts"] = torch.randn(bs, k * 3, a, generator=g) * (1.5 if yolo26 else 0.7)
                if rle:
                    out["kpts_sigma"] = torch.randn(bs, k * 2, a, generator=g)
            return out

        inputs = {"one2many": branch()}
        if e2e:
            inputs["one2one"] = branch()
        if task == "segment":
            inputs["proto"] = torch.randn(bs, nm, mh, mw, generator=g)
            if semantic is not None:
                inputs["semantic"] = torch.randn(bs, nc, mh // semantic[0], mw // semantic[0], generator=g) * 2 - 1
        cases.append(dict(name=name, task=task, imgsz=imgsz, nc=nc, reg_max=reg_max, end2end=e2e, yolo26=yolo26,
                          nm=nm, overlap=overlap, k=k, rle=rle, semantic=semantic is not None, batch=batch,
                          inputs=inputs, note=note))

    def none(g):
        return torch.zeros(0, 4)

    s128, s96x128, s160 = (128, 128), (96, 128), (160, 160)
    add("seg_v8_overlap", 101, task="segment", imgsz=s128,
        per_image=[lambda g: _boxes(g, 5, s128, 16, 60), lambda g: _boxes(g, 7, s128, 12, 50)],
        note="v8SegmentationLoss, overlap masks (later objects cover earlier ones), 2 images.")
    add("seg_v8_instances", 102, task="segment", imgsz=s96x128, overlap=False,
        per_image=[lambda g: _boxes(g, 4, s96x128, 16, 60), lambda g: _boxes(g, 6, s96x128, 10, 40)],
        note="v8SegmentationLoss, one mask per object, a 96 x 128 (H x W) image: the axes are not swapped.")
    add("seg_v8_crowded", 103, task="segment", imgsz=s160,
        per_image=[lambda g: _clustered_boxes(g, 90, s160, 8, 40, 6, 18.0)],
        note="v8SegmentationLoss, one 160 x 160 image with 90 overlapping objects in 6 clusters.")
    add("seg26_e2e", 104, task="segment", imgsz=s128, reg_max=1, e2e=True, yolo26=True,
        per_image=[lambda g: _boxes(g, 5, s128, 12, 36), lambda g: _boxes(g, 6, s128, 10, 32)],
        note="E2ELoss(SegmentLoss26): mask-aware assignment, reg_max 1, one-to-one prototypes detached.")
    add("seg26_crowded", 105, task="segment", imgsz=s160, reg_max=1, e2e=True, yolo26=True,
        per_image=[lambda g: _clustered_boxes(g, 70, s160, 8, 30, 5, 16.0)],
        note="E2ELoss(SegmentLoss26) on one 160 x 160 image with 70 objects in 5 clusters.")
    add("seg_v8_semantic", 111, task="segment", imgsz=s128, nc=4, semantic=(2, "random"),
        per_image=[lambda g: _boxes(g, 5, s128, 16, 60), none, lambda g: _boxes(g, 6, s128, 12, 50)],
        note="v8SegmentationLoss with Proto26's semantic logits at half the prototypes' size (nearest-resampled "
             "targets), overlap masks, 3 images, the second without objects; random classes at uncovered pixels.")
    add("seg_v8_semantic_instances", 112, task="segment", imgsz=s96x128, nc=4, overlap=False, semantic=(1, "zero"),
        per_image=[lambda g: _boxes(g, 4, s96x128, 16, 60), lambda g: _boxes(g, 5, s96x128, 10, 40), none],
        note="v8SegmentationLoss, semantic logits at the prototypes' size, one mask per object (the smallest "
             "covering object's class), 96 x 128, the third image without objects.")
    add("seg_v8_semantic_crowded", 113, task="segment", imgsz=s160, nc=4, semantic=(2, "zero"),
        per_image=[lambda g: _clustered_boxes(g, 90, s160, 8, 40, 6, 18.0), none],
        note="v8SegmentationLoss with the semantic term: a 160 x 160 image with 90 objects in 6 clusters and one "
             "without objects.")
    add("seg_v8_semantic_empty", 114, task="segment", imgsz=s128, nc=4, semantic=(2, "zero"),
        per_image=[none, none],
        note="v8SegmentationLoss with the semantic term and no objects at all: every term 0, the semantic logits "
             "get a zero gradient.")
    add("seg26_semantic_e2e", 115, task="segment", imgsz=s128, nc=4, reg_max=1, e2e=True, yolo26=True,
        semantic=(2, "random"),
        per_image=[lambda g: _boxes(g, 5, s128, 12, 36), none, lambda g: _boxes(g, 6, s128, 10, 32)],
        note="E2ELoss(SegmentLoss26) with the semantic term (one-to-one branch: prototypes and semantic logits "
             "detached), 3 images, the second without objects.")
    add("seg26_semantic_crowded", 116, task="segment", imgsz=s160, nc=4, reg_max=1, e2e=True, yolo26=True,
        semantic=(2, "zero"),
        per_image=[lambda g: _clustered_boxes(g, 70, s160, 8, 30, 5, 16.0), none],
        note="E2ELoss(SegmentLoss26) with the semantic term: 70 objects in 5 clusters on one 160 x 160 image, "
             "and an image without objects.")
    add("pose_v8", 201, task="pose", imgsz=s128, nc=1, k=5,
        per_image=[lambda g: _boxes(g, 4, s128, 16, 70), lambda g: _boxes(g, 6, s128, 12, 50)],
        note="v8PoseLoss, 5 keypoints (sigmas 1/5), the first object without a visible keypoint.")
    add("pose_v8_coco", 202, task="pose", imgsz=s96x128, nc=1, k=17,
        per_image=[lambda g: _boxes(g, 3, s96x128, 20, 80)],
        note="v8PoseLoss, 17 keypoints (COCO's OKS sigmas), 96 x 128 image.")
    add("pose26_e2e_rle", 203, task="pose", imgsz=s128, nc=1, k=17, reg_max=1, e2e=True, yolo26=True, rle=True,
        per_image=[lambda g: _boxes(g, 4, s128, 16, 90), lambda g: _boxes(g, 5, s128, 12, 60)],
        note="E2ELoss(PoseLoss26) with RLE (AffineFlow, COCO RLE weights), keypoint-aware assignment, reg_max 1.")
    add("pose26_crowded", 204, task="pose", imgsz=s160, nc=1, k=5, reg_max=1, e2e=True, yolo26=True, rle=True,
        per_image=[lambda g: _clustered_boxes(g, 70, s160, 8, 60, 5, 18.0)],
        note="E2ELoss(PoseLoss26) with RLE on one 160 x 160 image with 70 objects in 5 clusters.")
    return cases


# --- driving Ultralytics ----------------------------------------------------------------------


def _stub_model(case: dict):
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.stride = torch.tensor([float(s) for s in STRIDES])
            self.nc, self.reg_max, self.kpt_shape = case["nc"], case["reg_max"], [case["k"], 3]
            if case["rle"]:
                self.flow_model = _flow()

    class Stub(nn.Module):
        def __init__(self):
            super().__init__()
            self.args = SimpleNamespace(**GAINS, epochs=3, overlap_mask=case["overlap"])
            self.model = nn.ModuleList([Head()])
            self.anchor = nn.Parameter(torch.zeros(1))

    return Stub()


def _preds(branch: dict, case: dict, proto) -> dict:
    import torch

    maps, nc, r = branch["maps"], case["nc"], case["reg_max"]
    bs = maps[0].shape[0]
    out = {"boxes": torch.cat([m[:, : 4 * r].reshape(bs, 4 * r, -1) for m in maps], -1),
           "scores": torch.cat([m[:, 4 * r:].reshape(bs, nc, -1) for m in maps], -1), "feats": maps}
    for key in ("mask_coefficient", "kpts", "kpts_sigma"):
        if key in branch:
            out[key] = branch[key]
    if proto is not None:
        out["proto"] = proto
    return out


def _criterion(case: dict, model):
    from ultralytics.utils.loss import E2ELoss, PoseLoss26, SegmentLoss26, v8PoseLoss, v8SegmentationLoss

    loss_fn = {("segment", False): v8SegmentationLoss, ("segment", True): SegmentLoss26,
               ("pose", False): v8PoseLoss, ("pose", True): PoseLoss26}[case["task"], case["yolo26"]]
    if case["end2end"]:
        crit = E2ELoss(model, loss_fn)
        crit.o2m, crit.o2o = O2M_START, 1 - O2M_START
        return crit, {"one2many": crit.one2many, "one2one": crit.one2one}, loss_fn.__name__
    crit = loss_fn(model)
    return crit, {"one2many": crit}, loss_fn.__name__


def _record_assigner(sub, log: dict, topk3_ties: list):
    """Keep the assigner's last fg mask; for the mask-aware assigner, count objects whose 3 * topk-th and next
    box metric tie among candidates (torch.topk's order among ties would decide the mask-IoU pairs)."""

    assigner = sub.assigner
    forward = assigner.forward

    def recorded(*args, **kwargs):
        out = forward(*args, **kwargs)
        log["fg_mask"], log["target_scores"] = out[3].clone(), out[2].sum(-1).clone()
        log["target_gt_idx"] = out[4].clone()
        return out

    assigner.forward = recorded
    if type(assigner).__name__ == "SegTaskAlignedAssigner":
        pair = assigner.pair_overlaps

        def checked(indices, gt_bboxes, pd_bboxes, scores, labels, **extra):
            b, gi, a = indices
            iou = type(assigner).__mro__[1].pair_overlaps(assigner, indices, gt_bboxes, pd_bboxes)
            value = scores[b, a, labels[b, gi, 0].long()].pow(assigner.alpha) * iou.pow(assigner.beta) + assigner.eps
            dense = iou.new_zeros(assigner.bs, assigner.n_max_boxes, pd_bboxes.shape[1])
            dense[indices] = value
            k = 3 * assigner.topk
            if dense.shape[-1] > k:
                top = dense.topk(k + 1, dim=-1).values
                topk3_ties.append(int(((top[..., k - 1] == top[..., k]) & (top[..., k] > 0)).sum()))
            return pair(indices, gt_bboxes, pd_bboxes, scores, labels, **extra)

        assigner.pair_overlaps = checked


def run_case(case: dict) -> dict:
    import torch
    import ultralytics

    model = _stub_model(case)
    crit, subs, loss_name = _criterion(case, model)
    logs = {name: {} for name in subs}
    ties: list[int] = []
    for name, sub in subs.items():
        _record_assigner(sub, logs[name], ties)

    leaves = {name: {k: ([m.clone().requires_grad_() for m in v] if k == "maps" else v.clone().requires_grad_())
                     for k, v in case["inputs"][name].items()} for name in subs}
    proto = case["inputs"]["proto"].clone().requires_grad_() if "proto" in case["inputs"] else None
    semantic = case["inputs"]["semantic"].clone().requires_grad_() if "semantic" in case["inputs"] else None
    flow = getattr(model.model[-1], "flow_model", None)

    def all_preds(protos):
        return {name: _preds(leaves[name], case, protos[name]) for name in subs}

    protos = {"one2many": proto, "one2one": None if proto is None else proto.detach()}
    if semantic is not None:  # Proto26's training output; the head detaches both for the one-to-one branch
        protos = {"one2many": (proto, semantic), "one2one": (proto.detach(), semantic.detach())}
    preds = all_preds(protos)
    items = {}
    for name, sub in subs.items():  # each branch's own items (E2ELoss returns the one-to-one branch's)
        _, items[name] = sub.loss(preds[name], case["batch"])
    fg = {name: {k: _own(v) for k, v in logs[name].items()} for name in subs}
    total = crit(preds if case["end2end"] else preds["one2many"], case["batch"])[0].sum()
    flat, names = [], []
    for name in subs:
        for key, value in leaves[name].items():
            for i, t in enumerate(value if key == "maps" else [value]):
                flat.append(t)
                names.append(f"{name}.{key}" + (f".{i}" if key == "maps" else ""))
    if proto is not None:
        flat.append(proto)
        names.append("proto")
    if semantic is not None:
        flat.append(semantic)
        names.append("semantic")
    if flow is not None:
        for pname, p in flow.named_parameters():
            flat.append(p)
            names.append(f"flow.{pname}")
    grads = torch.autograd.grad(total, flat, allow_unused=True)
    expected = {"total": _own(total),
                "grads": {n: (torch.zeros_like(t) if gr is None else _own(gr)) for n, t, gr in zip(names, flat, grads,
                                                                                                  strict=True)}}
    for name in subs:
        expected[name] = {"loss_items": _own(torch.stack(list(items[name].values()))),
                          "loss_names": list(items[name]), **fg[name]}
    if ties and any(ties):
        raise SystemExit(f"{case['name']}: {sum(ties)} objects whose 3*topk-th box metric ties; change the case")
    src = {"lib": "ultralytics", "version": str(ultralytics.__version__),
           "torch": str(torch.__version__).split("+")[0], "torch_build": str(torch.__version__),
           "generator": GENERATOR,
           "call": (f"crit = {'E2ELoss(model, ' + loss_name + ')' if case['end2end'] else loss_name + '(model)'}; "
                    f"model: a stub with args({GAINS}, overlap_mask={case['overlap']}, epochs=3), model[-1].stride="
                    f"tensor([8., 16., 32.]), nc={case['nc']}, reg_max={case['reg_max']}, kpt_shape=[{case['k']}, 3]"
                    + (", flow_model=AffineFlow()" if case["rle"] else "")
                    + "; preds per branch = {'boxes', 'scores', 'feats': maps, 'mask_coefficient' | 'kpts'"
                    "[, 'kpts_sigma'], 'proto' (one2one: detached)"
                    + (" as the pair (proto, semantic)" if case["semantic"] else "")
                    + "}; total = crit(preds, batch)[0].sum(); "
                    "items = <branch>.loss(preds[<branch>], batch)[1]; grads = autograd.grad(total, inputs)"
                    + ("; crit.o2m, crit.o2o = 0.8, 0.2" if case["end2end"] else ""))}
    config = {k: case[k] for k in ("task", "imgsz", "nc", "reg_max", "end2end", "yolo26", "nm", "overlap", "k",
                                   "rle", "semantic")}
    config.update(strides=list(STRIDES), gains=GAINS, o2m=O2M_START if case["end2end"] else None)
    if flow is not None:
        config["flow"] = {n: _own(p) for n, p in flow.named_parameters()}
    inputs = {name: {k: ([_own(m) for m in v] if k == "maps" else _own(v)) for k, v in case["inputs"][name].items()}
              for name in subs}
    if proto is not None:
        inputs["proto"] = _own(case["inputs"]["proto"])
    if semantic is not None:
        inputs["semantic"] = _own(case["inputs"]["semantic"])
    n_fg = {name: int(fg[name]["fg_mask"].sum()) for name in subs}
    return {"source": src, "case": case["name"], "note": case["note"], "config": config, "inputs": inputs,
            "batch": {k: _own(v) for k, v in case["batch"].items()}, "expected": expected,
            "diagnostics": {"foreground": n_fg, "objects": int(len(case["batch"]["cls"]))}}


def main(names: list[str] | None = None) -> list[Path]:
    import torch

    unknown = set(names or ()) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown case(s) {sorted(unknown)}; the cases are {CASES}")
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(exist_ok=True)
    written = []
    for case in build_cases():
        if names and case["name"] not in names:
            continue
        payload = run_case(case)
        path = OUT / f"{case['name']}.pt"
        torch.save(payload, path)
        assert torch.load(path, weights_only=True)["case"] == case["name"]
        written.append(path)
        print(f"{case['name']:18s} M={payload['diagnostics']['objects']:3d} fg={payload['diagnostics']['foreground']} "
              f"total={float(payload['expected']['total']):.6g} {path.stat().st_size / 1024:.1f} KiB")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
