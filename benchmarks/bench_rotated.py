"""Rotated-box losses forward+backward on aligned ``xywhr`` pairs: losskit vs plain formulas and Ultralytics' ProbIoU.

Three tables per size:

1. The exact rotated IoU loss (:func:`losskit.rotated_iou_loss`: polygon clipping in float64, the
   gradient computed chunk by chunk in the forward pass) against the same clipping written as a
   plain float32 autograd expression (:func:`plain_rotated_iou_loss`), the cost of exactness and
   of float64.
2. GWD, KLD and KFIoU against their plain matrix formulas as mmrotate writes them (2x2 ``bmm``,
   ``det`` and ``inverse`` under autograd; :func:`plain_gaussian_loss`), same values.
3. Every rotated overlap loss on the same pairs, time and memory only (they are different losses):
   the exact IoU, ProbIoU (losskit's and, where Ultralytics is installed, ``1 - probiou`` of
   ``ultralytics.utils.metrics``), GWD, KLD, KFIoU.

Ultralytics needs its own torch build, so run this in the peer environment, with this checkout
on the path::

    PYTHONPATH=src /work/peer-venv/bin/python -m benchmarks.bench_rotated [--sizes 100000] [--device cuda]
        [--tables iou gaussian overlap]

Without Ultralytics the third table leaves it out. Every table names the CPU model, the thread
count and the load average when it started.
"""

from __future__ import annotations

import argparse
import math
import os

import torch

import losskit
from benchmarks.harness import benchmark, compare, cpu_model, report
from losskit import _polygon

PLAIN = "plain formula (autograd)"
TABLES = ("iou", "gaussian", "overlap")


def make_pairs(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` aligned ``xywhr`` pairs (float32): targets with sides 8-200 px in a 640 px image and any
    angle, predictions jittered (centres by up to 30% of the size, sides 0.7-1.3x, angles by 0.3 rad)."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=gen) * 640
    size = 8 + torch.rand(n, 2, generator=gen) * 192
    angle = (torch.rand(n, 1, generator=gen) - 0.5) * math.pi
    target = torch.cat([centre, size, angle], -1)
    pred = torch.cat([centre + (torch.rand(n, 2, generator=gen) - 0.5) * 0.6 * size,
                      size * (0.7 + 0.6 * torch.rand(n, 2, generator=gen)),
                      angle + (torch.rand(n, 1, generator=gen) - 0.5) * 0.6], -1)
    return pred.to(device).requires_grad_(), target.to(device)


def plain_rotated_iou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - IoU`` per pair from the same polygon clipping, in the input's dtype under plain autograd."""
    r1 = _polygon.rect(*pred.unbind(-1))
    r2 = _polygon.rect(*target.unbind(-1))
    inter = _polygon.intersection_area(r1, r2, 1e-6)
    union = pred[:, 2] * pred[:, 3] + target[:, 2] * target[:, 3] - inter
    return 1 - inter / union


def _gaussian(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mmrotate's map: centre and ``R diag(w/2, h/2)^2 R^T`` (sides clamped to 1e-7)."""
    cos, sin = torch.cos(boxes[:, 4]), torch.sin(boxes[:, 4])
    rot = torch.stack((cos, -sin, sin, cos), -1).view(-1, 2, 2)
    half = torch.diag_embed(boxes[:, 2:4].clamp_min(1e-7) / 2)
    return boxes[:, :2], rot @ half.square() @ rot.transpose(1, 2)


def plain_gaussian_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """GWD (log1p, normalized), KLD (sqrt, log1p) or KFIoU (1 - KFIoU) per pair, as the papers'
    matrix formulas: what a user writes from mmrotate's equations."""
    mp, sp = _gaussian(pred)
    mt, st = _gaussian(target)
    trace = lambda m: m.diagonal(dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    if kind == "gwd":
        det_root = (sp.det() * st.det()).clamp_min(0).sqrt()
        bures = trace(sp) + trace(st) - 2 * (trace(sp @ st) + 2 * det_root).clamp_min(0).sqrt()
        distance = ((mp - mt).square().sum(-1) + bures).clamp_min(0).sqrt()
        return torch.log1p(distance / (2 * det_root.sqrt().sqrt().clamp_min(1e-7)))
    if kind == "kld":
        inv = sp.inverse()
        d = (mp - mt).unsqueeze(-1)
        centre = 0.5 * (d.transpose(1, 2) @ inv @ d).view(-1)
        shape = 0.5 * trace(inv @ st) + 0.5 * (sp.det().log() - st.det().log()) - 1
        return torch.log1p((centre + shape).clamp_min(0).sqrt())
    diff = (mp - mt).abs()  # kfiou
    beta = 1 / 9
    centre = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta).sum(-1)
    overlap = sp - sp @ (sp + st).inverse() @ sp
    vp, vt, v = (4 * m.det().clamp_min(0).sqrt() for m in (sp, st, overlap))
    return centre + 1 - v / (vp + vt - v + 1e-6)


def _load() -> str:
    try:
        return f"load average {os.getloadavg()[0]:.2f}"
    except OSError:
        return "load average unknown"


def _ultralytics_probiou():
    try:
        from ultralytics.utils.metrics import probiou
    except ImportError:
        return None
    return probiou


def _tables(n: int, device: torch.device, rounds: int, checks: bool, ultralytics_probiou,
            which: tuple[str, ...] = TABLES) -> list[str]:
    pred, target = make_pairs(n, device)
    where = f"{n:,} aligned xywhr pairs, {device}, float32, mean, {_load()}"
    tables = []
    if "iou" in which:
        tables += _iou_table(pred, target, where, rounds, checks)
    if "gaussian" in which:
        tables += _gaussian_tables(pred, target, where, rounds, checks)
    if "overlap" in which:
        tables += _overlap_table(pred, target, where, rounds, checks, ultralytics_probiou)
    return tables


def _iou_table(pred, target, where: str, rounds: int, checks: bool) -> list[str]:
    tables = [benchmark(
        f"Rotated IoU loss fwd+bwd (exact polygon clipping), {where}",
        {"losskit": lambda: losskit.rotated_iou_loss(pred, target),
         "same clipping, float32 autograd": lambda: plain_rotated_iou_loss(pred, target).mean()},
        (pred,), rounds=rounds, checks=checks, rtol=1e-4)]
    print()
    return tables


def _gaussian_tables(pred, target, where: str, rounds: int, checks: bool) -> list[str]:
    tables = []
    for kind in ("gwd", "kld", "kfiou"):
        fn = getattr(losskit, f"{kind}_loss")
        tables.append(benchmark(
            f"{kind.upper()} loss fwd+bwd (mmrotate defaults), {where}",
            {"losskit": lambda fn=fn: fn(pred, target),
             PLAIN: lambda kind=kind: plain_gaussian_loss(kind, pred, target).mean()},
            (pred,), rounds=rounds, checks=checks, rtol=1e-4))
        print()
    return tables


def _overlap_table(pred, target, where: str, rounds: int, checks: bool, ultralytics_probiou) -> list[str]:
    forwards = {"losskit": lambda: losskit.rotated_iou_loss(pred, target),
                "losskit probiou_loss": lambda: losskit.probiou_loss(pred, target)}
    if ultralytics_probiou is not None:
        forwards["ultralytics 1 - probiou"] = lambda: (1 - ultralytics_probiou(pred, target)).mean()
    forwards.update({f"losskit {k}_loss": (lambda k=k: getattr(losskit, f"{k}_loss")(pred, target))
                     for k in ("gwd", "kld", "kfiou")})
    with losskit.set_checks(checks):
        results = compare(forwards, (pred,), rounds=rounds)
    text = report(f"Rotated overlap losses fwd+bwd, different losses on the same pairs (time and memory "
                  f"only; ratios to the exact IoU), {where}, threads={torch.get_num_threads()}", results)
    print(text)
    return [text]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--checks", action="store_true", help="keep losskit's value checks on (default: off)")
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    ultralytics_probiou = _ultralytics_probiou()
    header = (f"torch {torch.__version__}, ultralytics {'installed' if ultralytics_probiou else 'not installed'}; "
              f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs")
    if device.type == "cuda":
        header += f"; {torch.cuda.get_device_name(device)}"
    print(header)
    tables = [header]
    for n in args.sizes:
        tables.extend(_tables(n, device, args.rounds, args.checks, ultralytics_probiou, tuple(args.tables)))
    return "\n\n".join(tables)


if __name__ == "__main__":
    main()
