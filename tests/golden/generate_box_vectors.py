"""Generate the box and dense-detection golden vectors from torchvision and Ultralytics.

Run ONLY in the separate peer environment (see README.md in this folder)::

    /tmp/peer-venv/bin/python tests/golden/generate_box_vectors.py

It writes one JSON file per peer call into this folder. Each file holds the provenance of the
vectors (library, version, torch version, the exact call), the inputs as plain lists, the peer's
output and, where meaningful, the gradient of ``expected.sum()`` with respect to the first input.
CI replays these files in ``tests/test_golden.py`` without the peers installed.

The inputs come from Python's ``random.Random`` with fixed seeds (its stream is stable across
Python and torch versions) and are rounded to 3 decimals, so a rerun writes identical files.

Nothing at module level imports a peer: pytest's ``--doctest-modules`` imports this file in CI.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DTYPE_NAME = "float64"

# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def _r(x: float) -> float:
    return round(x, 3)


def _random_box(rng: random.Random) -> list[float]:
    """A valid xyxy box with sides in [5, 40] and corner in [0, 50]."""
    x1, y1 = rng.uniform(0, 50), rng.uniform(0, 50)
    w, h = rng.uniform(5, 40), rng.uniform(5, 40)
    return [_r(x1), _r(y1), _r(x1 + w), _r(y1 + h)]


def _overlapping(rng: random.Random, box: list[float]) -> list[float]:
    """A box that partially overlaps ``box``: shifted by up to 40% of its size, rescaled 0.6-1.5x."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2 + rng.uniform(-0.4, 0.4) * w
    cy = (y1 + y2) / 2 + rng.uniform(-0.4, 0.4) * h
    w2, h2 = w * rng.uniform(0.6, 1.5), h * rng.uniform(0.6, 1.5)
    return [_r(cx - w2 / 2), _r(cy - h2 / 2), _r(cx + w2 / 2), _r(cy + h2 / 2)]


def aligned_pairs(seed: int = 0, n_random: int = 8) -> tuple[list, list, list[str]]:
    """Aligned (N, 4) xyxy pairs: random partial overlaps, then the edge cases, each row labelled."""
    rng = random.Random(seed)
    b1, b2, labels = [], [], []
    for _ in range(n_random):
        a = _random_box(rng)
        b1.append(a)
        b2.append(_overlapping(rng, a))
        labels.append("partial overlap")
    edge = [
        ([10.0, 12.0, 30.0, 40.0], [10.0, 12.0, 30.0, 40.0], "identical"),
        ([10.0, 10.0, 50.0, 40.0], [20.5, 15.25, 35.0, 30.0], "nested (second inside first)"),
        ([22.0, 18.0, 31.0, 27.0], [5.0, 3.0, 60.0, 45.0], "nested (first inside second)"),
        ([0.0, 0.0, 10.0, 10.0], [30.0, 25.0, 45.0, 47.0], "disjoint"),
        ([15.0, 10.0, 15.0, 30.0], [10.0, 12.0, 30.0, 35.0], "zero-width first box"),
        ([10.0, 20.0, 50.0, 30.0], [25.0, 5.0, 35.0, 45.0], "coincident centres (cross)"),
        ([20.0, 20.0, 40.0, 30.0], [22.0, 17.0, 38.0, 33.0], "coincident centres (different aspect)"),
    ]
    for a, b, label in edge:
        b1.append(a)
        b2.append(b)
        labels.append(label)
    return b1, b2, labels


def pairwise_sets(seed: int = 1) -> tuple[list, list, list[str], list[str]]:
    """Two sets (N=7, M=6) of xyxy boxes for the N x M functions, with overlaps and edge cases."""
    rng = random.Random(seed)
    b1 = [_random_box(rng) for _ in range(4)]
    b2 = [_overlapping(rng, b1[0]), _overlapping(rng, b1[1]), _random_box(rng)]
    labels1 = ["random"] * 4
    labels2 = ["overlaps boxes1[0]", "overlaps boxes1[1]", "random"]
    b1 += [[10.0, 12.0, 30.0, 40.0], [60.0, 60.0, 70.0, 80.0], [15.0, 10.0, 15.0, 30.0]]
    labels1 += ["equals boxes2[3]", "far from the rest", "zero width"]
    b2 += [[10.0, 12.0, 30.0, 40.0], [14.0, 16.0, 26.0, 36.0], [100.0, 100.0, 110.0, 105.0]]
    labels2 += ["equals boxes1[4]", "inside boxes1[4] (coincident centre)", "disjoint from all"]
    return b1, b2, labels1, labels2


def _tie_free_aligned(b1: list, b2: list) -> list[int]:
    """Rows whose gradient is unambiguous: no equal coordinates (min/max ties), positive sides,
    and an intersection that is not exactly zero-width (the clamp's kink)."""
    rows = []
    for i, (a, b) in enumerate(zip(b1, b2, strict=True)):
        if any(a[k] == b[k] for k in range(4)) or any(a[k] == b[k + 2] or a[k + 2] == b[k] for k in range(2)):
            continue
        if a[2] <= a[0] or a[3] <= a[1] or b[2] <= b[0] or b[3] <= b[1]:
            continue
        rows.append(i)
    return rows


def _tie_free_pairwise(b1: list, b2: list) -> list[int]:
    return [i for i, a in enumerate(b1) if _tie_free_aligned([a] * len(b2), b2) == list(range(len(b2)))]


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _tolist(t):
    return t.detach().cpu().tolist()


def write(name: str, payload: dict) -> Path:
    path = HERE / f"{name}.json"
    text = json.dumps(payload, indent=1, allow_nan=False) + "\n"
    path.write_text(text)
    return path


def main() -> list[Path]:
    import torch
    import torchvision
    import torchvision.ops as tvo
    import ultralytics
    from ultralytics.utils.loss import DFLoss, VarifocalLoss
    from ultralytics.utils.metrics import bbox_iou, probiou
    from ultralytics.utils.tal import bbox2dist, dist2bbox

    torch.set_default_dtype(torch.float64)
    dt = torch.float64
    torch_version = torch.__version__.split("+")[0]

    def src(lib: str, call: str) -> dict:
        version = torchvision.__version__ if lib == "torchvision" else ultralytics.__version__
        return {
            "lib": lib,
            "version": version.split("+")[0],
            "torch": torch_version,
            "torch_build": torch.__version__,
            "call": call,
            "generator": "tests/golden/generate_box_vectors.py",
        }

    def leaf(x):
        return torch.tensor(x, dtype=dt, requires_grad=True)

    def grad_of(out, x):
        (g,) = torch.autograd.grad(out.sum(), x)
        return _tolist(g)

    written = []

    # ---------------------------------------------------------------- torchvision, pairwise N x M
    p1, p2, l1, l2 = pairwise_sets()
    pairwise_grad_rows = _tie_free_pairwise(p1, p2)
    for fn_name, call in [
        ("box_iou", "torchvision.ops.box_iou(boxes1, boxes2)"),
        ("generalized_box_iou", "torchvision.ops.generalized_box_iou(boxes1, boxes2)"),
        ("distance_box_iou", "torchvision.ops.distance_box_iou(boxes1, boxes2, eps=1e-7)"),
        ("complete_box_iou", "torchvision.ops.complete_box_iou(boxes1, boxes2, eps=1e-7)"),
    ]:
        x1 = leaf(p1)
        out = getattr(tvo, fn_name)(x1, torch.tensor(p2, dtype=dt))
        written.append(write(f"torchvision.{fn_name}", {
            "source": src("torchvision", call),
            "op": f"torchvision.{fn_name}",
            "dtype": DTYPE_NAME,
            "fmt": "xyxy",
            "inputs": {"boxes1": p1, "boxes2": p2},
            "cases": {"boxes1": l1, "boxes2": l2},
            "expected": _tolist(out),
            "expected_grad": grad_of(out, x1),
            "grad_rows": pairwise_grad_rows,
            "notes": "Pairwise (N, M). box_iou and generalized_box_iou use no eps; distance/complete add eps "
                     "to the squared enclosing diagonal and to the CIoU alpha denominator. grad_rows: rows of "
                     "boxes1 without coordinate ties against any box of boxes2 (elsewhere the gradient is a "
                     "subgradient whose choice is implementation-defined).",
        }))

    # ---------------------------------------------------------------- torchvision, aligned losses
    a1, a2, labels = aligned_pairs()
    aligned_grad_rows = _tie_free_aligned(a1, a2)
    for fn_name in ["generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"]:
        x1 = leaf(a1)
        out = getattr(tvo, fn_name)(x1, torch.tensor(a2, dtype=dt), reduction="none", eps=1e-7)
        written.append(write(f"torchvision.{fn_name}", {
            "source": src("torchvision", f"torchvision.ops.{fn_name}(boxes1, boxes2, reduction='none', eps=1e-7)"),
            "op": f"torchvision.{fn_name}",
            "dtype": DTYPE_NAME,
            "fmt": "xyxy",
            "inputs": {"boxes1": a1, "boxes2": a2},
            "cases": labels,
            "expected": _tolist(out),
            "expected_grad": grad_of(out, x1),
            "grad_rows": aligned_grad_rows,
            "notes": "Aligned (N,). torchvision adds eps to the union and to the enclosure area (GIoU), to the "
                     "squared enclosing diagonal (DIoU/CIoU) and to the CIoU alpha denominator; alpha is "
                     "computed under no_grad. complete_box_iou_loss does not forward eps to its IoU part "
                     "(default 1e-7 is used there either way). grad_rows: rows without min/max ties.",
        }))

    # ---------------------------------------------------------------- torchvision, box_convert
    conv_boxes = a1[:8] + [a1[9], a1[12]]  # random + nested + zero-width, as xyxy
    for in_fmt in ["xyxy", "xywh", "cxcywh"]:
        base = tvo.box_convert(torch.tensor(conv_boxes, dtype=dt), "xyxy", in_fmt) if in_fmt != "xyxy" else None
        inp = conv_boxes if base is None else [[_r(v) for v in row] for row in _tolist(base)]
        for out_fmt in ["xyxy", "xywh", "cxcywh"]:
            if in_fmt == out_fmt:
                continue
            out = tvo.box_convert(torch.tensor(inp, dtype=dt), in_fmt, out_fmt)
            written.append(write(f"torchvision.box_convert.{in_fmt}_to_{out_fmt}", {
                "source": src("torchvision", f"torchvision.ops.box_convert(boxes, in_fmt='{in_fmt}', "
                                             f"out_fmt='{out_fmt}')"),
                "op": "torchvision.box_convert",
                "dtype": DTYPE_NAME,
                "in_fmt": in_fmt,
                "out_fmt": out_fmt,
                "inputs": {"boxes": inp},
                "expected": _tolist(out),
                "notes": "xywh is (x1, y1, w, h); cxcywh is (centre x, centre y, w, h). No gradient stored: "
                         "the conversions are linear.",
            }))

    # ---------------------------------------------------------------- torchvision, sigmoid focal loss
    rng = random.Random(2)
    shape = (4, 10)
    logits = [[_r(rng.gauss(0, 3)) for _ in range(shape[1])] for _ in range(shape[0])]
    logits[0][:4] = [15.0, -15.0, 0.0, 30.0]  # saturated and exact-zero logits
    soft = [[_r(rng.random()) for _ in range(shape[1])] for _ in range(shape[0])]
    soft[0][:4] = [1.0, 0.0, 0.5, 0.0]
    hard = [[float(rng.random() < 0.3) for _ in range(shape[1])] for _ in range(shape[0])]
    hard[0][:4] = [1.0, 0.0, 1.0, 0.0]
    for kind, targets in [("soft", soft), ("hard", hard)]:
        x = leaf(logits)
        out = tvo.sigmoid_focal_loss(x, torch.tensor(targets, dtype=dt), alpha=0.25, gamma=2, reduction="none")
        written.append(write(f"torchvision.sigmoid_focal_loss.{kind}", {
            "source": src("torchvision", "torchvision.ops.sigmoid_focal_loss(inputs, targets, alpha=0.25, "
                                         "gamma=2, reduction='none')"),
            "op": "torchvision.sigmoid_focal_loss",
            "dtype": DTYPE_NAME,
            "kwargs": {"alpha": 0.25, "gamma": 2.0},
            "inputs": {"inputs": logits, "targets": targets},
            "expected": _tolist(out),
            "expected_grad": grad_of(out, x),
            "notes": f"{kind} targets; elementwise. Row 0 starts with logits 15, -15, 0, 30.",
        }))

    # ---------------------------------------------------------------- Ultralytics bbox_iou (aligned)
    for xywh in (True, False):
        fmt = "cxcywh" if xywh else "xyxy"
        if xywh:
            b1 = [[_r(v) for v in row] for row in _tolist(tvo.box_convert(torch.tensor(a1), "xyxy", "cxcywh"))]
            b2 = [[_r(v) for v in row] for row in _tolist(tvo.box_convert(torch.tensor(a2), "xyxy", "cxcywh"))]
            grad_rows = _tie_free_aligned(
                _tolist(tvo.box_convert(torch.tensor(b1), "cxcywh", "xyxy")),
                _tolist(tvo.box_convert(torch.tensor(b2), "cxcywh", "xyxy")),
            )
        else:
            b1, b2, grad_rows = a1, a2, aligned_grad_rows
        for kind, flags in [("iou", {}), ("giou", {"GIoU": True}), ("diou", {"DIoU": True}),
                            ("ciou", {"CIoU": True})]:
            x1 = leaf(b1)
            out = bbox_iou(x1, torch.tensor(b2, dtype=dt), xywh=xywh, eps=1e-7, **flags).squeeze(-1)
            flag_text = "".join(f", {k}=True" for k in flags)
            written.append(write(f"ultralytics.bbox_iou.{kind}.{fmt}", {
                "source": src("ultralytics", f"ultralytics.utils.metrics.bbox_iou(box1, box2, xywh={xywh}"
                                             f"{flag_text}, eps=1e-7).squeeze(-1)"),
                "op": "ultralytics.bbox_iou",
                "dtype": DTYPE_NAME,
                "kind": kind,
                "fmt": fmt,
                "inputs": {"box1": b1, "box2": b2},
                "cases": labels,
                "expected": _tolist(out),
                "expected_grad": grad_of(out, x1),
                "grad_rows": grad_rows,
                "notes": "Aligned (N,). Ultralytics' xywh=True means (centre x, centre y, w, h). It adds eps to "
                         "the union, to the enclosing area (GIoU), to the squared diagonal (DIoU/CIoU) and to "
                         "the CIoU alpha denominator (alpha under no_grad); in xyxy mode only it also adds eps to "
                         "both heights. Computes in the input dtype (float64 here).",
            }))

    # ---------------------------------------------------------------- Ultralytics probiou (xywhr)
    rng = random.Random(3)
    r1, r2, rlabels = [], [], []
    for _ in range(6):
        cx, cy, w, h, t = rng.uniform(10, 50), rng.uniform(10, 50), rng.uniform(5, 30), rng.uniform(5, 30), \
            rng.uniform(-math.pi / 2, math.pi / 2)
        r1.append([_r(cx), _r(cy), _r(w), _r(h), _r(t)])
        r2.append([_r(cx + rng.uniform(-0.3, 0.3) * w), _r(cy + rng.uniform(-0.3, 0.3) * h),
                   _r(w * rng.uniform(0.7, 1.4)), _r(h * rng.uniform(0.7, 1.4)), _r(t + rng.uniform(-0.6, 0.6))])
        rlabels.append("partial overlap")
    r1 += [[20.0, 20.0, 10.0, 6.0, 0.3], [20.0, 20.0, 10.0, 6.0, 0.0], [20.0, 20.0, 10.0, 6.0, 0.0],
           [0.0, 0.0, 8.0, 8.0, 0.0], [30.0, 30.0, 12.0, 4.0, 0.7]]
    r2 += [[20.0, 20.0, 10.0, 6.0, 0.3], [20.0, 20.0, 6.0, 10.0, math.pi / 2], [20.0, 20.0, 6.0, 10.0, 0.0],
           [40.0, 35.0, 8.0, 8.0, 0.0], [31.0, 29.0, 8.0, 6.0, -0.4]]
    rlabels += ["identical", "same box, w/h swapped and rotated 90 degrees", "coincident centres, swapped sides",
                "far apart", "crossing, different angles"]
    x1 = leaf(r1)
    out = probiou(x1, torch.tensor(r2, dtype=dt), eps=1e-7).squeeze(-1)
    written.append(write("ultralytics.probiou", {
        "source": src("ultralytics", "ultralytics.utils.metrics.probiou(obb1, obb2, CIoU=False, eps=1e-7, "
                                     "floor=0.0).squeeze(-1)"),
        "op": "ultralytics.probiou",
        "dtype": DTYPE_NAME,
        "fmt": "xywhr",
        "inputs": {"obb1": r1, "obb2": r2},
        "cases": rlabels,
        "expected": _tolist(out),
        "expected_grad": grad_of(out, x1),
        "grad_rows": [i for i, c in enumerate(rlabels) if c not in ("identical", "same box, w/h swapped and "
                                                                    "rotated 90 degrees")],
        "eps_sensitive_rows": [i for i, c in enumerate(rlabels) if c in ("identical", "same box, w/h swapped and "
                                                                         "rotated 90 degrees")],
        "notes": "Aligned (N,), angle in radians. 1 - Hellinger distance of the boxes' Gaussians, "
                 "hd = sqrt(1 - exp(-clamp(bd, eps, 100)) + eps): for coinciding boxes the eps inside the square "
                 "root leaves ProbIoU = 1 - sqrt(~2 eps) ~ 0.99955, so those rows (eps_sensitive_rows) depend on "
                 "eps at the 1e-3 level, and their gradient is the clamp's (zero).",
    }))

    # ---------------------------------------------------------------- Ultralytics VarifocalLoss
    rng = random.Random(4)
    B, Q, C = 2, 6, 4
    vlogits = [[[_r(rng.gauss(0, 2.5)) for _ in range(C)] for _ in range(Q)] for _ in range(B)]
    vlabel = [[[0.0] * C for _ in range(Q)] for _ in range(B)]
    vscore = [[[0.0] * C for _ in range(Q)] for _ in range(B)]
    for b in range(B):
        for q in range(Q):
            if rng.random() < 0.6:  # a matched query: one-hot class, gt score = IoU with its box
                c = rng.randrange(C)
                vlabel[b][q][c] = 1.0
                vscore[b][q][c] = _r(rng.uniform(0.05, 0.95))
    vlabel[0][0] = [1.0, 0.0, 0.0, 0.0]  # the parity hazard: a positive class with quality 0 (weight 0 in UL)
    vscore[0][0] = [0.0, 0.0, 0.0, 0.0]
    vlabel[1][0] = [0.0, 1.0, 0.0, 0.0]
    vscore[1][0] = [0.0, 1.0, 0.0, 0.0]  # a perfect-quality positive
    vlogits[1][1] = [12.0, -12.0, 0.0, 5.0]  # saturated logits on an unmatched query
    vlabel[1][1] = [0.0] * C
    vscore[1][1] = [0.0] * C
    for tag, gamma, alpha, call in [
        ("class_defaults", 2.0, 0.75, "VarifocalLoss()"),
        ("rtdetr", 1.5, 0.25, "VarifocalLoss(gamma=1.5, alpha=0.25)"),
    ]:
        vfl = VarifocalLoss(gamma=gamma, alpha=alpha)
        x = leaf(vlogits)
        q_t, lab_t = torch.tensor(vscore, dtype=dt), torch.tensor(vlabel, dtype=dt)
        reduced = vfl(x, q_t, lab_t)
        (reduced_grad,) = torch.autograd.grad(reduced, x)
        # Elementwise: the same module on each element alone, as a (1, 1, 1) tensor, where
        # .mean(1).sum() is the identity.
        elem = torch.zeros(B, Q, C, dtype=dt)
        elem_grad = torch.zeros(B, Q, C, dtype=dt)
        for b in range(B):
            for q in range(Q):
                for c in range(C):
                    xe = torch.tensor([[[vlogits[b][q][c]]]], dtype=dt, requires_grad=True)
                    le = vfl(xe, q_t[b, q, c].view(1, 1, 1), lab_t[b, q, c].view(1, 1, 1))
                    (ge,) = torch.autograd.grad(le, xe)
                    elem[b, q, c] = le.detach()
                    elem_grad[b, q, c] = ge.view(())
        written.append(write(f"ultralytics.varifocal_loss.{tag}", {
            "source": src("ultralytics", f"ultralytics.utils.loss.{call}(pred_score, gt_score, label), "
                                         "elementwise: the module applied to each element as a (1, 1, 1) tensor"),
            "op": "ultralytics.varifocal_loss",
            "dtype": DTYPE_NAME,
            "kwargs": {"alpha": alpha, "gamma": gamma},
            "inputs": {"pred_score": vlogits, "gt_score": vscore, "label": vlabel},
            "expected": _tolist(elem),
            "expected_grad": _tolist(elem_grad),
            "expected_reduced": reduced.item(),
            "expected_reduced_grad": _tolist(reduced_grad),
            "reduced_call": f"ultralytics.utils.loss.{call}(pred_score, gt_score, label) on the whole (B, Q, C) "
                            "tensor: (bce * weight).mean(1).sum()",
            "notes": "weight = alpha * sigmoid(x)^gamma * (1 - label) + q * label, not detached; BCE(x, q) is "
                     "computed in float32 (autocast off, .float()) even for float64 inputs, so values carry "
                     "float32 rounding (~1e-7 relative). Entry [0][0][0] is a positive with q = 0 (weight 0 "
                     "in Ultralytics; MMDet would treat it as a negative).",
        }))

    # ---------------------------------------------------------------- Ultralytics DFLoss
    rng = random.Random(5)
    N, R = 6, 16
    dlogits = [[_r(rng.gauss(0, 2)) for _ in range(R)] for _ in range(N * 4)]
    dtarget = [[_r(rng.uniform(0, 15)) for _ in range(4)] for _ in range(N)]
    dtarget[0] = [14.995, 14.999, 14.99, 0.0]   # above the clamp, exactly at it, and the lower end
    dtarget[1] = [3.0, 7.5, 14.5, 0.005]         # an integer target (all weight on one bin)
    dfl = DFLoss(reg_max=R)
    x = leaf(dlogits)
    per_box = dfl(x, torch.tensor(dtarget, dtype=dt).clone()).squeeze(-1)
    per_box_grad = grad_of(per_box, x)
    x = leaf(dlogits)
    per_side = dfl(x, torch.tensor(dtarget, dtype=dt).reshape(-1, 1).clone()).reshape(N, 4)
    per_side_grad = grad_of(per_side, x)
    written.append(write("ultralytics.distribution_focal_loss", {
        "source": src("ultralytics", "ultralytics.utils.loss.DFLoss(reg_max=16)(pred_dist, target).squeeze(-1)"),
        "op": "ultralytics.distribution_focal_loss",
        "dtype": DTYPE_NAME,
        "kwargs": {"reg_max": R, "clamp_margin": 0.01},
        "inputs": {"pred_dist": dlogits, "target": dtarget},
        "expected": _tolist(per_box),
        "expected_grad": per_box_grad,
        "expected_per_side": _tolist(per_side),
        "expected_per_side_grad": per_side_grad,
        "per_side_call": "DFLoss(reg_max=16)(pred_dist, target.reshape(-1, 1)).reshape(N, 4)",
        "notes": "pred_dist is (N*4, 16) logits, side-major per box (row 4*i+k is side k of box i); target is "
                 "(N, 4) in bins, clamped to [0, 16 - 1 - 0.01] = [0, 14.99]. Ultralytics returns the mean over "
                 "the 4 sides per box (expected, (N,)); expected_per_side is the same module called with one side "
                 "per row. Row 0 has targets 14.995, 14.999 (clamped), 14.99 and 0; row 1 has 3.0 (one bin).",
    }))

    # ---------------------------------------------------------------- Ultralytics bbox2dist / dist2bbox
    rng = random.Random(6)
    anchors = [[_r(rng.uniform(5, 60)) + 0.5, _r(rng.uniform(5, 60)) + 0.5] for _ in range(6)]
    ltrb_boxes = []
    for ax, ay in anchors:
        ltrb_boxes.append([_r(ax - rng.uniform(0.5, 20)), _r(ay - rng.uniform(0.5, 20)),
                           _r(ax + rng.uniform(0.5, 20)), _r(ay + rng.uniform(0.5, 20))])
    ltrb_boxes[0] = [anchors[0][0] - 3.0, anchors[0][1] + 1.0, anchors[0][0] + 2.0, anchors[0][1] + 4.0]  # anchor
    # above the box: a negative top distance, clamped to 0 when reg_max is given.
    for reg_max in (None, 15):
        out = bbox2dist(torch.tensor(anchors, dtype=dt), torch.tensor(ltrb_boxes, dtype=dt), reg_max=reg_max)
        tag = "unclamped" if reg_max is None else f"reg_max{reg_max}"
        written.append(write(f"ultralytics.bbox2dist.{tag}", {
            "source": src("ultralytics", f"ultralytics.utils.tal.bbox2dist(anchor_points, bbox, reg_max={reg_max})"),
            "op": "ultralytics.bbox2dist",
            "dtype": DTYPE_NAME,
            "kwargs": {"reg_max": reg_max},
            "inputs": {"anchor_points": anchors, "bbox": ltrb_boxes},
            "expected": _tolist(out),
            "notes": "bbox is xyxy; output is (left, top, right, bottom) distances from the anchor point, clamped "
                     "to [0, reg_max - 0.01] when reg_max is given (the detection loss passes reg_max - 1 = 15, "
                     "so targets land in [0, 14.99]). Row 0 has its anchor above the box (negative top).",
        }))
    dists = [[_r(rng.uniform(0, 15)) for _ in range(4)] for _ in range(6)]
    for xywh in (False, True):
        out = dist2bbox(torch.tensor(dists, dtype=dt), torch.tensor(anchors, dtype=dt), xywh=xywh, dim=-1)
        fmt = "cxcywh" if xywh else "xyxy"
        written.append(write(f"ultralytics.dist2bbox.{fmt}", {
            "source": src("ultralytics", f"ultralytics.utils.tal.dist2bbox(distance, anchor_points, xywh={xywh}, "
                                         "dim=-1)"),
            "op": "ultralytics.dist2bbox",
            "dtype": DTYPE_NAME,
            "fmt": fmt,
            "inputs": {"distance": dists, "anchor_points": anchors},
            "expected": _tolist(out),
            "notes": "distance is (left, top, right, bottom); Ultralytics' xywh=True output is (cx, cy, w, h).",
        }))

    return written


if __name__ == "__main__":
    paths = main()
    for p in paths:
        print(p.relative_to(HERE.parent.parent))
    print(f"{len(paths)} files", file=sys.stderr)
