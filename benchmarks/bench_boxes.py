"""GIoU / DIoU / CIoU losses forward+backward on aligned box pairs: losskit vs torchvision vs eager formula.

Goal: losskit at least 1.5x faster than torchvision's ``generalized_box_iou_loss`` /
``distance_box_iou_loss`` / ``complete_box_iou_loss``, with no more peak memory.

torchvision needs its own torch build, so run this in the peer environment (see
tests/golden/README.md), with losskit installed there without dependencies::

    cd /work/main && /tmp/peer-venv/bin/pip install -e . --no-deps
    /tmp/peer-venv/bin/python -m benchmarks.bench_boxes [--device cuda] [--sizes 100000 1000000]

Without torchvision it compares losskit with the eager reference only. The reference is the
textbook formula written with plain tensor ops and autograd (eps 1e-7 in the same places as
torchvision, CIoU's alpha under ``no_grad``); it is what a user would write by hand.
"""

from __future__ import annotations

import argparse
import math

import torch

import losskit
from benchmarks.harness import benchmark

LOSSES = ("giou", "diou", "ciou")
TORCHVISION_NAME = {"giou": "generalized_box_iou_loss", "diou": "distance_box_iou_loss",
                    "ciou": "complete_box_iou_loss"}


def reference_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, eps: float = 1e-7) -> torch.Tensor:
    """Per-box GIoU / DIoU / CIoU loss on xyxy boxes, from the papers' formulas (plain autograd)."""
    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    pw, ph, tw, th = px2 - px1, py2 - py1, tx2 - tx1, ty2 - ty1
    inter = (torch.minimum(px2, tx2) - torch.maximum(px1, tx1)).clamp(min=0) * (
        torch.minimum(py2, ty2) - torch.maximum(py1, ty1)
    ).clamp(min=0)
    union = pw * ph + tw * th - inter
    iou = inter / (union + eps)
    cw = torch.maximum(px2, tx2) - torch.minimum(px1, tx1)  # smallest enclosing box
    ch = torch.maximum(py2, ty2) - torch.minimum(py1, ty1)
    if kind == "giou":  # Rezatofighi et al. 2019: 1 - IoU + |C \ (A u B)| / |C|
        area_c = cw * ch
        return 1 - iou + (area_c - union) / (area_c + eps)
    c2 = cw**2 + ch**2 + eps  # squared diagonal of the enclosing box
    rho2 = ((px1 + px2 - tx1 - tx2) ** 2 + (py1 + py2 - ty1 - ty2) ** 2) / 4  # squared centre distance
    if kind == "diou":  # Zheng et al. 2020: 1 - IoU + rho^2 / c^2
        return 1 - iou + rho2 / c2
    # CIoU: + alpha * v, v = 4/pi^2 (atan(w_t/h_t) - atan(w_p/h_p))^2, alpha = v / (1 - IoU + v), not differentiated
    v = (4 / math.pi**2) * (torch.atan(tw / th) - torch.atan(pw / ph)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return 1 - iou + rho2 / c2 + alpha * v


def make_boxes(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` aligned xyxy pairs (float32): targets with sides 8-200 px in a 640 px image, predictions
    jittered around them (centres by up to 30% of the size, sides scaled 0.5-1.5x), mostly overlapping."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=gen) * 640
    size = 8 + torch.rand(n, 2, generator=gen) * 192
    target = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
    p_centre = centre + (torch.rand(n, 2, generator=gen) - 0.5) * 0.6 * size
    p_size = size * (0.5 + torch.rand(n, 2, generator=gen))
    pred = torch.cat([p_centre - p_size / 2, p_centre + p_size / 2], dim=-1)
    return pred.to(device).requires_grad_(), target.to(device)


def _candidates(kind: str, pred: torch.Tensor, target: torch.Tensor, tvo) -> dict:
    losskit_fn = getattr(losskit, f"{kind}_loss")
    candidates = {"losskit": lambda: losskit_fn(pred, target, reduction="mean")}
    if tvo is not None:
        tv_fn = getattr(tvo, TORCHVISION_NAME[kind])
        candidates["torchvision"] = lambda: tv_fn(pred, target, reduction="mean")
    candidates["reference (eager formula)"] = lambda: reference_loss(pred, target, kind).mean()
    return candidates


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--checks", action="store_true", help="keep losskit's value checks on (default: off, "
                        "as the peers run none)")
    args = parser.parse_args(argv)

    try:
        import torchvision
        import torchvision.ops as tvo
    except ImportError:  # the project's own environment: losskit vs the eager formula only
        torchvision = tvo = None

    device = torch.device(args.device)
    versions = f"torch {torch.__version__}" + (f", torchvision {torchvision.__version__}" if torchvision else
                                               ", torchvision not installed")
    print(versions)
    tables = [versions]
    for n in args.sizes:
        pred, target = make_boxes(n, device)
        for kind in args.losses:
            candidates = _candidates(kind, pred, target, tvo)
            peer = f" (torchvision: ops.{TORCHVISION_NAME[kind]})" if tvo is not None else ""
            title = f"{kind.upper()} loss fwd+bwd{peer}, {n:,} aligned xyxy pairs, {device}, float32, mean"
            tables.append(benchmark(title, candidates, (pred,), rounds=args.rounds, checks=args.checks))
            print()
    return "\n\n".join(tables)


if __name__ == "__main__":
    main()
