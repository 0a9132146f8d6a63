"""dice_loss and dice_ce_loss forward+backward on (2, 8, 96, 96, 96) logits: losskit vs MONAI.

Integer labels; MONAI gets them as (N, 1, ...) with ``softmax=True, to_onehot_y=True``
(``--one-hot``: both get one-hot float targets, MONAI without ``to_onehot_y``).
Goal: losskit at least 2x faster than MONAI with at most 1/3 of its peak memory. Peak memory
includes the logits' gradient, which every implementation must return (54.0 MiB at the default
shape). A third table is binary segmentation: one sigmoid channel, (2, 1, 128, 128, 128),
against a float mask, versus MONAI ``DiceLoss(sigmoid=True)``.

A last table gives memory as a CPU user sees it, for the Dice and Dice + CE steps: the growth of
the process's peak resident set (RSS) over one forward+backward, each measured in its own
fresh interpreter with the inputs made before the high-water mark is reset
(:func:`benchmarks.harness.rss_profile`), beside the tensor tracker of the tables above. The
first step of a process also faults in the pages of library code it runs for the first time
(shown apart); "after warm-up" runs the same loss once on a small input first, as every later
step of a training run finds it.

    python -m benchmarks.bench_segmentation [--device cuda] [--size 96] [--binary-size 128] [--one-hot]
        [--no-rss | --rss-losses dice,dice_ce]
"""

from __future__ import annotations

import argparse

import torch

import losskit
from benchmarks.harness import benchmark, cpu_peak_bytes, rss_available, rss_profile


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
    parser.add_argument("--no-rss", action="store_true", help="skip the resident-set table (CPU, Linux)")
    parser.add_argument("--rss-losses", default="dice,dice_ce", help="losses of the resident-set table, "
                        "comma-separated (four fresh processes each; default dice,dice_ce)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.classes, args.size, args.size, args.size)
    logits, labels, labels_monai = _inputs(shape, args.one_hot, gen, device)
    monai_dice, monai_dice_ce = (_monai(name, args.one_hot) for name in ("dice", "dice_ce"))
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
    if device.type == "cpu" and rss_available() and not args.no_rss:
        losses = [loss for loss in args.rss_losses.split(",") if loss]
        trackers = {(library, loss): _tracker_peak(library, loss, logits, labels, labels_monai)
                    for library in ("losskit", "monai") for loss in losses}
        texts.append(_rss_table(args, shape, where, losses, trackers))
    if args.binary_size:
        del logits, labels, labels_monai
        edge = args.binary_size
        binary = torch.randn((args.batch, 1, edge, edge, edge), generator=gen).to(device).requires_grad_()
        mask = (torch.rand(binary.shape, generator=gen) < 0.1).float().to(device)
        from monai.losses import DiceLoss

        monai_binary = DiceLoss(sigmoid=True)
        texts.append(benchmark(
            f"binary sigmoid dice fwd+bwd, shape {tuple(binary.shape)}, float mask, {device}, float32",
            {"losskit": lambda: losskit.dice_loss(binary, mask, activation="sigmoid"),
             "monai.DiceLoss(sigmoid=True)": lambda: monai_binary(binary, mask)},
            (binary,), rounds=args.rounds, checks=args.checks))
    return "\n\n".join(texts)


def _inputs(shape: tuple[int, ...], one_hot: bool, gen: torch.Generator,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (with a gradient), losskit's labels and MONAI's, as the tables use them."""
    logits = torch.randn(shape, generator=gen).to(device).requires_grad_()
    labels = torch.randint(shape[1], (shape[0], *shape[2:]), generator=gen).to(device)
    labels_monai = labels.unsqueeze(1)
    if one_hot:
        labels = labels_monai = torch.nn.functional.one_hot(labels, shape[1]).movedim(-1, 1).float()
    return logits, labels, labels_monai


def _monai(loss: str, one_hot: bool):
    from monai.losses import DiceCELoss, DiceLoss

    cls = DiceLoss if loss == "dice" else DiceCELoss
    return cls(softmax=True, to_onehot_y=not one_hot)


def _call(library: str, loss: str, one_hot: bool):
    """The loss of ``library`` as ``f(logits, losskit_labels, monai_labels)``."""
    if library == "losskit":
        fn = losskit.dice_loss if loss == "dice" else losskit.dice_ce_loss
        return lambda logits, labels, _: fn(logits, labels)
    module = _monai(loss, one_hot)
    return lambda logits, _, labels_monai: module(logits, labels_monai)


def _tracker_peak(library: str, loss: str, logits, labels, labels_monai) -> int:
    call = _call(library, loss, labels.is_floating_point())

    def step() -> None:
        logits.grad = None
        call(logits, labels, labels_monai).backward()

    with losskit.set_checks(False):
        return cpu_peak_bytes(step)


def rss_step(library: str, loss: str, shape: list[int], one_hot: bool, warm: bool):
    """A factory for :func:`benchmarks.harness.rss_profile`: make the inputs (and, with ``warm``,
    run the loss once on a small input of the same classes), return one forward+backward."""
    gen = torch.Generator().manual_seed(0)
    call = _call(library, loss, one_hot)
    if warm:  # code paged in, threads started, the allocator's heap grown to a small step's size
        small = (shape[0], shape[1], *[4] * (len(shape) - 2))
        x, t, t_monai = _inputs(small, one_hot, gen, torch.device("cpu"))
        call(x, t, t_monai).backward()
        del x, t, t_monai
    logits, labels, labels_monai = _inputs(tuple(shape), one_hot, gen, torch.device("cpu"))

    def step() -> None:
        call(logits, labels, labels_monai).backward()

    return step


def _rss_table(args, shape: tuple[int, ...], where: str, losses: list[str],
               trackers: dict[tuple[str, str], int]) -> str:
    mb = 2**20
    gradient = torch.Size(shape).numel() * 4
    head = (f"{'step':<22}{'tracker (MB)':>14}{'RSS, 1st step (MB)':>20}{'of it code (MB)':>17}"
            f"{'RSS, warm (MB)':>16}")
    lines = [f"peak resident-set growth of one fwd+bwd, each in a fresh process, {where}, "
             f"threads={args.threads or torch.get_num_threads()} (gradient {gradient / mb:.1f} MB)", head]
    for loss in losses:
        cold, warm = {}, {}
        for library in ("losskit", "monai"):
            key = (library, loss)
            cold[library], warm[library] = (
                rss_profile("benchmarks.bench_segmentation:rss_step", library, loss, list(shape), args.one_hot,
                            after_warm_up, threads=args.threads) for after_warm_up in (False, True))
            lines.append(f"{library + ' ' + loss:<22}{trackers[key] / mb:>14.1f}"
                         f"{cold[library]['growth'] / mb:>20.1f}{cold[library]['file'] / mb:>17.1f}"
                         f"{warm[library]['growth'] / mb:>16.1f}")

        def ratio(measured: dict[str, dict[str, int]]) -> float:
            return measured["monai"]["growth"] / max(measured["losskit"]["growth"], 1)

        tracker_ratio = trackers[("monai", loss)] / max(trackers[("losskit", loss)], 1)
        lines.append(f"{'  monai / losskit':<22}{tracker_ratio:>13.2f}x{ratio(cold):>19.2f}x{'':>17}"
                     f"{ratio(warm):>15.2f}x")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
