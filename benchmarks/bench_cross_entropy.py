"""cross_entropy forward+backward: losskit vs torch.nn.functional.cross_entropy.

Goal: losskit within 1.1x of PyTorch's time, with no more memory. On CUDA also the Triton kernel
against the torch path, eager and ``torch.compile``, and each one's effective bandwidth against the
GPU's HBM peak (goal: the Triton kernel at 80% or more).

    python -m benchmarks.bench_cross_entropy [--device cuda] [--rows 8192] [--classes 1000]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import losskit
from benchmarks.harness import bandwidth, benchmark


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--checks", action="store_true", help="keep losskit's value checks on")
    parser.add_argument("--hbm-peak-gbs", type=float, default=None, help="the GPU's HBM peak, if not in the table")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(args.rows, args.classes, generator=gen).to(device).requires_grad_()
    target = torch.randint(args.classes, (args.rows,), generator=gen).to(device)
    target[::10] = -100  # some ignored rows, as in language-model batches

    candidates = {
        "losskit": lambda: losskit.cross_entropy(logits, target),
        "torch.nn.functional": lambda: F.cross_entropy(logits, target),
    }
    if device.type == "cuda":
        compiled = torch.compile(F.cross_entropy)
        candidates |= {
            "losskit backend='torch'": lambda: losskit.cross_entropy(logits, target, backend="torch"),
            "torch.compile(F.cross_entropy)": lambda: compiled(logits, target),
        }
    title = f"cross-entropy fwd+bwd, logits ({args.rows}, {args.classes}), 10% ignored, {device}, float32"
    text, results = benchmark(title, candidates, (logits,), rounds=args.rounds, checks=args.checks, with_results=True)
    if device.type == "cuda":  # read the logits, write their gradient
        text += "\n" + bandwidth(results, 2 * logits.numel() * logits.element_size(), device, args.hbm_peak_gbs)
    return text

if __name__ == "__main__":
    main()
