"""GIoU / DIoU / CIoU losses forward+backward on aligned box pairs: losskit vs torchvision vs a plain formula.

Goal, at every size and thread count: losskit at least 1.5x faster than torchvision's
``generalized_box_iou_loss`` / ``distance_box_iou_loss`` / ``complete_box_iou_loss`` and at least
as fast as the plain formula, with no more peak memory than torchvision (by the tensor tracker
and by the resident set).

torchvision needs its own torch build, so run this in the peer environment (see
tests/golden/README.md), with this checkout on the path::

    PYTHONPATH=src /work/peer-venv/bin/python -m benchmarks.bench_boxes [--threads 1 2]
        [--sizes 10000 100000 1000000] [--losses giou diou ciou] [--device cuda] [--no-rss]

Without torchvision it compares losskit with the plain formula only. The plain formula
(:func:`reference_loss`) is the textbook formula written with plain tensor ops and autograd
(eps 1e-7 in the same places as torchvision, CIoU's alpha under ``no_grad``): what a user would
write by hand. Every table names the CPU model, the thread count and the load average when it
started: on a shared machine, take figures only from runs whose load is well below the number of
cores.

On a CPU (Linux) each table is followed by the growth of the peak resident set during one first
forward+backward, each implementation in a fresh process with its inputs made first
(``harness.rss_growth``), beside the tracker's peak; ``--no-rss`` skips it.
"""

from __future__ import annotations

import argparse
import math
import os

import torch

import losskit
from benchmarks.harness import benchmark, cpu_model, rss_available, rss_growth

LOSSES = ("giou", "diou", "ciou")
TORCHVISION_NAME = {"giou": "generalized_box_iou_loss", "diou": "distance_box_iou_loss",
                    "ciou": "complete_box_iou_loss"}
PLAIN = "plain formula (autograd)"


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


def _forward(implementation: str, kind: str, pred: torch.Tensor, target: torch.Tensor):
    """A zero-argument callable returning the mean loss of ``implementation``."""
    if implementation == "losskit":
        fn = getattr(losskit, f"{kind}_loss")
        return lambda: fn(pred, target, reduction="mean")
    if implementation == "torchvision":
        import torchvision.ops as tvo

        fn = getattr(tvo, TORCHVISION_NAME[kind])
        return lambda: fn(pred, target, reduction="mean")
    return lambda: reference_loss(pred, target, kind).mean()


def rss_step(implementation: str, kind: str, n: int):
    """For :func:`benchmarks.harness.rss_growth`: the inputs, and a step that runs one forward+backward."""
    pred, target = make_boxes(n, torch.device("cpu"))
    forward = _forward(implementation, kind, pred, target)

    def step() -> None:
        pred.grad = None
        forward().backward()

    return step


def _load() -> str:
    try:
        return f"load average {os.getloadavg()[0]:.2f}"
    except OSError:
        return "load average unknown"


def _rss_table(kind: str, n: int, threads: int, tracker: dict[str, int]) -> str:
    growth = {label: rss_growth("benchmarks.bench_boxes:rss_step", _IMPLEMENTATION[label], kind, n, threads=threads)
              for label in tracker}
    lines = [f"{'peak memory, one process each':<34}{'RSS growth (MB)':>17}{'tracker (MB)':>14}"
             f"{'ratio by RSS':>14}{'by tracker':>12}"]
    for label in tracker:
        lines.append(f"{label:<34}{growth[label] / 2**20:>17.1f}{tracker[label] / 2**20:>14.1f}"
                     f"{growth[label] / growth['losskit']:>14.2f}{tracker[label] / tracker['losskit']:>12.2f}")
    text = "\n".join(lines)
    print(text)
    return text


_IMPLEMENTATION = {"losskit": "losskit", "torchvision": "torchvision", PLAIN: "plain"}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch CPU thread counts to run, one set of tables each (default: torch's)")
    parser.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--checks", action="store_true", help="keep losskit's value checks on (default: off, "
                        "as the peers run none)")
    parser.add_argument("--no-rss", action="store_true", help="skip the resident-set measurements (CPU, Linux: "
                        "one fresh process per implementation, loss and size)")
    args = parser.parse_args(argv)

    try:
        import torchvision
    except ImportError:  # the project's own environment: losskit vs the plain formula only
        torchvision = None

    device = torch.device(args.device)
    header = (f"torch {torch.__version__}, "
              + (f"torchvision {torchvision.__version__}" if torchvision else "torchvision not installed")
              + f"; CPU: {cpu_model()}, {os.cpu_count()} logical CPUs")
    if device.type == "cuda":
        header += f"; {torch.cuda.get_device_name(device)}"
    print(header)
    tables = [header]
    implementations = ["losskit"] + (["torchvision"] if torchvision else []) + [PLAIN]
    rss = device.type == "cpu" and not args.no_rss and rss_available()
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for n in args.sizes:
            pred, target = make_boxes(n, device)
            for kind in args.losses:
                candidates = {label: _forward(_IMPLEMENTATION[label], kind, pred, target) for label in implementations}
                peer = f" (torchvision: ops.{TORCHVISION_NAME[kind]})" if torchvision else ""
                title = (f"{kind.upper()} loss fwd+bwd{peer}, {n:,} aligned xyxy pairs, {device}, float32, mean, "
                         f"{_load()}")
                text, results = benchmark(title, candidates, (pred,), rounds=args.rounds, checks=args.checks,
                                          with_results=True)
                tables.append(text)
                if rss:
                    tables.append(_rss_table(kind, n, threads, {r.label: r.memory_bytes for r in results}))
                print()
    return "\n\n".join(tables)


if __name__ == "__main__":
    main()
