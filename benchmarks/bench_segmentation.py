"""dice_loss and dice_ce_loss forward+backward on (2, 8, 96, 96, 96) logits: losskit vs MONAI.

Integer labels; MONAI gets them as (N, 1, ...) with ``softmax=True, to_onehot_y=True``
(``--one-hot``: both get one-hot float targets, MONAI without ``to_onehot_y``).
Goal: losskit at least 2x faster than MONAI with at most 1/3 of its peak memory. Peak memory
includes the logits' gradient, which every implementation must return (54.0 MiB at the default
shape). A third table is binary segmentation: one sigmoid channel, (2, 1, 128, 128, 128),
against a float mask, versus MONAI ``DiceLoss(sigmoid=True)``.

    python -m benchmarks.bench_segmentation [--device cuda] [--size 96] [--binary-size 128] [--one-hot]
"""

from __future__ import annotations

import argparse

import torch

import losskit
from benchmarks.harness import benchmark


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=96, help="edge of the cubic volume (default 96)")
    parser.add_argument("--binary-size", type=int, default=128, help="edge of the binary case's volume (0: skip)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--one-hot", action="store_true", help="give both libraries one-hot float targets "
                        "(N, C, ...) instead of integer labels (MONAI then without to_onehot_y)")
    parser.add_argument("--checks", action="store_true", help="keep losskit's value checks on (default: off, "
                        "as the peers run none)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from monai.losses import DiceCELoss, DiceLoss

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.classes, args.size, args.size, args.size)
    logits = torch.randn(shape, generator=gen).to(device).requires_grad_()
    labels = torch.randint(args.classes, (args.batch, args.size, args.size, args.size), generator=gen).to(device)
    labels_monai = labels.unsqueeze(1)
    if args.one_hot:
        labels = labels_monai = torch.nn.functional.one_hot(labels, args.classes).movedim(-1, 1).float()

    monai_dice = DiceLoss(softmax=True, to_onehot_y=not args.one_hot)
    monai_dice_ce = DiceCELoss(softmax=True, to_onehot_y=not args.one_hot)
    texts = []
    kind = "one-hot targets" if args.one_hot else "integer labels"
    where = f"shape {shape} ({logits.numel():,} logits), {kind}, {device}, float32"
    texts.append(benchmark(
        f"dice loss fwd+bwd, {where}",
        {"losskit": lambda: losskit.dice_loss(logits, labels),
         "monai.DiceLoss": lambda: monai_dice(logits, labels_monai)},
        (logits,), rounds=args.rounds, checks=args.checks))
    texts.append(benchmark(
        f"dice + CE loss fwd+bwd, {where}",
        {"losskit": lambda: losskit.dice_ce_loss(logits, labels),
         "monai.DiceCELoss": lambda: monai_dice_ce(logits, labels_monai)},
        (logits,), rounds=args.rounds, checks=args.checks))
    if args.binary_size:
        del logits, labels, labels_monai
        edge = args.binary_size
        binary = torch.randn((args.batch, 1, edge, edge, edge), generator=gen).to(device).requires_grad_()
        mask = (torch.rand(binary.shape, generator=gen) < 0.1).float().to(device)
        monai_binary = DiceLoss(sigmoid=True)
        texts.append(benchmark(
            f"binary sigmoid dice fwd+bwd, shape {tuple(binary.shape)}, float mask, {device}, float32",
            {"losskit": lambda: losskit.dice_loss(binary, mask, activation="sigmoid"),
             "monai.DiceLoss(sigmoid=True)": lambda: monai_binary(binary, mask)},
            (binary,), rounds=args.rounds, checks=args.checks))
    return "\n\n".join(texts)


if __name__ == "__main__":
    main()
