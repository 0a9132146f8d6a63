"""dice_focal_loss forward+backward on (2, 8, 96, 96, 96) logits with integer labels: losskit vs MONAI.

MONAI 1.6 ``DiceFocalLoss(softmax=True, to_onehot_y=True)`` gets the labels as (N, 1, ...); losskit
reads them as they are (no one-hot tensor, no activation kept for backward). Goal: losskit at least
1.5x faster than MONAI with no more peak memory. Peak memory includes the logits' gradient, which
every implementation must return (54.0 MiB at the default shape).

    python -m benchmarks.bench_dice_focal [--device cuda] [--size 96] [--threads N] [--rounds 5]
"""

from __future__ import annotations

import argparse

import torch

import losskit
from benchmarks.harness import benchmark, cpu_model


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=96, help="edge of the cubic volume (default 96)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--checks", action="store_true", help="keep losskit's value checks on (default: off, "
                        "as the peers run none)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from monai.losses import DiceFocalLoss

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.classes, args.size, args.size, args.size)
    logits = torch.randn(shape, generator=gen).to(device).requires_grad_()
    labels = torch.randint(shape[1], (shape[0], *shape[2:]), generator=gen).to(device)
    monai = DiceFocalLoss(softmax=True, to_onehot_y=True)
    where = f"shape {shape} ({logits.numel():,} logits), integer labels, {device}, float32"
    text = benchmark(
        f"dice + focal loss fwd+bwd, {where}",
        {"losskit": lambda: losskit.dice_focal_loss(logits, labels),
         "monai.DiceFocalLoss": lambda: monai(logits, labels.unsqueeze(1))},
        (logits,), rounds=args.rounds, checks=args.checks)
    if device.type == "cpu":
        text += f"\nCPU: {cpu_model()}"
        print(f"CPU: {cpu_model()}")
    return text


if __name__ == "__main__":
    main()
