"""Boundary and Hausdorff-DT losses (distance maps included) vs MONAI, and the distance transform vs scipy.

Losses: forward+backward on (2, 4, S, S, S) float32 logits with integer labels, the distance maps
computed inside every call (losskit: batched torch; MONAI 1.6.1: scipy per sample and class), vs
``monai.losses.BoundaryLoss`` / ``HausdorffDTLoss`` with ``softmax=True, to_onehot_y=True``.
The labels are blobs (the argmax of a smooth random field), so distances are those of organ-like
regions rather than of salt-and-pepper noise.

Transform: :func:`losskit.segmentation.distance_transform` on the 2 x 3 foreground masks at once
vs ``scipy.ndimage.distance_transform_edt`` in a loop over them.

    python -m benchmarks.bench_distance [--device cuda] [--size 64] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from benchmarks.harness import benchmark
from losskit import boundary_loss, hausdorff_dt_loss
from losskit.segmentation import distance_transform


def blob_labels(batch: int, classes: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Integer labels ``(batch, size, size, size)``: argmax of a trilinearly upsampled 4^3 random field."""
    coarse = torch.randn(batch, classes, 4, 4, 4, generator=gen)
    field = torch.nn.functional.interpolate(coarse, size=(size,) * 3, mode="trilinear", align_corners=False)
    return field.argmax(1)


def _median_seconds(fn, device: torch.device, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64, help="spatial edge S of the (2, 4, S, S, S) volume")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's); "
                        "1 gives stable CPU figures on a loaded machine, where 2-thread barriers stall")
    parser.add_argument("--checks", action="store_true", help="keep losskit's value checks on (default: off, "
                        "as the peers run none)")
    args = parser.parse_args(argv)

    from monai.losses import BoundaryLoss, HausdorffDTLoss
    from scipy import ndimage

    warnings.filterwarnings("ignore", module="monai")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    shape = (2, 4, args.size, args.size, args.size)
    logits = torch.randn(shape, generator=gen).mul(2).to(device).requires_grad_()
    labels = blob_labels(shape[0], shape[1], args.size, gen).to(device)
    where = f"logits {shape} float32, integer labels, {device}"
    texts = []

    monai_boundary = BoundaryLoss(softmax=True, to_onehot_y=True)  # include_background=True by default
    texts.append(benchmark(
        f"boundary loss fwd+bwd incl. signed distance maps, {where}",
        {"losskit": lambda: boundary_loss(logits, labels, include_background=True),
         "monai.BoundaryLoss": lambda: monai_boundary(logits, labels[:, None])},
        (logits,), rounds=args.rounds, checks=args.checks))

    monai_hausdorff = HausdorffDTLoss(softmax=True, to_onehot_y=True)  # include_background=False
    texts.append(benchmark(
        f"Hausdorff-DT loss fwd+bwd incl. 4 distance transforms per (sample, class), {where}",
        {"losskit": lambda: hausdorff_dt_loss(logits, labels),
         "monai.HausdorffDTLoss": lambda: monai_hausdorff(logits, labels[:, None])},
        (logits,), rounds=args.rounds, checks=args.checks))

    # The transform alone: the 2 x 3 foreground masks.
    masks = torch.stack([labels == c for c in range(1, shape[1])], 1).flatten(0, 1)
    ours = distance_transform(masks)
    reference = [ndimage.distance_transform_edt(m) for m in masks.cpu().numpy()]
    for d, r in zip(ours.cpu(), reference, strict=True):
        assert torch.allclose(d.double(), torch.from_numpy(r), rtol=1e-6, atol=1e-5), "distance maps differ"
    t_ours = _median_seconds(lambda: distance_transform(masks), device, args.rounds)
    t_scipy = _median_seconds(lambda: [ndimage.distance_transform_edt(m) for m in masks.cpu().numpy()],
                              device, args.rounds)
    lines = [f"exact Euclidean distance transform of {tuple(masks.shape)} bool masks, {device}, "
             f"threads={torch.get_num_threads()}",
             f"{'implementation':<46}{'time (ms)':>11}{'time ratio':>12}",
             f"{'losskit.segmentation.distance_transform':<46}{t_ours * 1e3:>11.2f}{1.0:>12.2f}",
             f"{'scipy.ndimage.distance_transform_edt (loop)':<46}{t_scipy * 1e3:>11.2f}{t_scipy / t_ours:>12.2f}"]
    print("\n".join(lines))
    texts.append("\n".join(lines))
    return "\n\n".join(texts)


if __name__ == "__main__":
    main()
