"""sigmoid_focal_loss forward+backward on 4M logits: losskit vs MONAI FocalLoss vs kornia.

Goal: losskit at least 1.5x faster than both peers, with no more memory. On CUDA also the
Triton kernel against the torch path, eager and ``torch.compile``, and each one's effective
bandwidth against the GPU's HBM peak.

    python -m benchmarks.bench_focal [--device cuda] [--numel 4194304]
"""

from __future__ import annotations

import argparse

import torch

import losskit
from benchmarks.harness import bandwidth, benchmark


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--numel", type=int, default=1 << 22)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--checks", action="store_true", help="keep losskit's value checks on (default: off, "
                        "as the peers run none)")
    parser.add_argument("--hbm-peak-gbs", type=float, default=None, help="the GPU's HBM peak, if not in the table")
    args = parser.parse_args(argv)

    from kornia.losses import binary_focal_loss_with_logits
    from monai.losses import FocalLoss

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    # A dense-detection-like layout: (batch, classes, anchors) with ~1% positives.
    shape = (16, 64, args.numel // (16 * 64))
    logits = torch.randn(shape, generator=gen).to(device).requires_grad_()
    target = (torch.rand(shape, generator=gen) < 0.01).float().to(device)
    alpha, gamma = 0.25, 2.0

    monai_focal = FocalLoss(gamma=gamma, alpha=alpha, reduction="mean")
    candidates = {
        "losskit": lambda: losskit.sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma),
        "monai.FocalLoss": lambda: monai_focal(logits, target),
        "kornia.binary_focal_loss": lambda: binary_focal_loss_with_logits(
            logits, target, alpha=alpha, gamma=gamma, reduction="mean"
        ),
    }
    if device.type == "cuda":
        compiled = torch.compile(losskit.sigmoid_focal_loss)
        candidates |= {
            "losskit backend='torch'": lambda: losskit.sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma,
                                                                          backend="torch"),
            "torch.compile(losskit, torch)": lambda: compiled(logits, target, alpha=alpha, gamma=gamma,
                                                               backend="torch"),
        }
    title = f"sigmoid focal loss fwd+bwd, shape {shape} ({logits.numel():,} elements), {device}, float32"
    text, results = benchmark(title, candidates, (logits,), rounds=args.rounds, checks=args.checks, with_results=True)
    if device.type == "cuda":  # read the logits and targets, write the gradient
        text += "\n" + bandwidth(results, 3 * logits.numel() * logits.element_size(), device, args.hbm_peak_gbs)
    return text

if __name__ == "__main__":
    main()
