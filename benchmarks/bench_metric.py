"""Margin losses with class proxies, forward+backward: losskit vs pytorch-metric-learning 2.9.

ArcFace, sub-center ArcFace (3 sub-centres), CosFace, SphereFace, L-Softmax and the normalized
softmax on a batch of 256 embeddings of 512 dimensions against 65,536 classes. Both sides use the
same weight tensor (pytorch-metric-learning's ``W`` ``(D, C)``; losskit's ``proxies=W.T``), so
both allocate the same weight gradient; the tables give the peak beyond the input gradients too.

Goal: losskit at least 1.5x faster than pytorch-metric-learning, with no more peak memory.

    python -m benchmarks.bench_metric [--device cuda] [--classes 65536] [--dim 512] [--batch 256]
"""

from __future__ import annotations

import argparse
import math
import platform

import torch

import losskit
from benchmarks.harness import benchmark

# name -> (pytorch-metric-learning class name, losskit function, losskit options that reproduce it)
LOSSES = {
    "arcface": ("ArcFaceLoss", losskit.arcface_loss, {"margin": math.radians(28.6)}),
    "sub_center_arcface": ("SubCenterArcFaceLoss", losskit.sub_center_arcface_loss, {"margin": math.radians(28.6)}),
    "cosface": ("CosFaceLoss", losskit.cosface_loss, {}),
    "sphereface": ("SphereFaceLoss", losskit.sphereface_loss, {}),
    "large_margin_softmax": ("LargeMarginSoftmaxLoss", losskit.large_margin_softmax_loss, {}),
    "normalized_softmax": ("NormalizedSoftmaxLoss", losskit.normalized_softmax_loss, {}),
}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--checks", action="store_true", help="keep losskit's value checks on (default: off, "
                        "as the peer runs none)")
    args = parser.parse_args(argv)

    from pytorch_metric_learning import losses as pml

    device = torch.device(args.device)
    where = cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"{where}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.dim, generator=gen).to(device).requires_grad_()
    y = torch.randint(args.classes, (args.batch,), generator=gen).to(device)
    tables = []
    for name in args.losses:
        peer_name, fn, options = LOSSES[name]
        peer = getattr(pml, peer_name)(num_classes=args.classes, embedding_size=args.dim).to(device)
        w = peer.W  # (D, C K)
        sub = w.shape[1] // args.classes
        shape = (args.classes, sub, args.dim) if name == "sub_center_arcface" else (args.classes, args.dim)

        def ours(fn=fn, w=w, shape=shape, options=options):
            return fn(x, y, proxies=w.T.reshape(shape), **options)

        candidates = {"losskit": ours, f"pytorch-metric-learning {peer_name}": lambda peer=peer: peer(x, y)}
        title = (f"{name} fwd+bwd, embeddings ({args.batch}, {args.dim}), {args.classes:,} classes"
                 f"{f' x {sub} sub-centres' if sub > 1 else ''}, {device}, float32")
        tables.append(benchmark(title, candidates, (x, w), rounds=args.rounds, checks=args.checks))
        del peer, w
    return "\n\n".join(tables)


if __name__ == "__main__":
    main()
