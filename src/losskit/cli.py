"""The ``losskit`` command: ``compare`` (the arena), ``list``, ``info`` and ``plot``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="losskit", description="Loss functions for PyTorch: compare, list, "
                                     "explain and plot them.")
    sub = parser.add_subparsers(dest="command", required=True)

    compare = sub.add_parser("compare", help="train small models with different losses side by side and report",
                             description="Train one small model per loss on the same data, seed and schedule, "
                             "then print a table and write OUT/report.html and OUT/results.json.")
    compare.add_argument("--task", default="segmentation",
                         help="segmentation (default), classification, regression or detection")
    compare.add_argument("--losses", help='comma-separated loss specs, e.g. "ce,dice,0.5*dice+0.5*ce" '
                         "(the task's defaults if omitted)")
    compare.add_argument("--epochs", type=int)
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    compare.add_argument("--lr", type=float)
    compare.add_argument("--batch-size", type=int)
    compare.add_argument("--out", default="losskit-compare", help="output folder (default: losskit-compare)")
    compare.add_argument("--device", default="cpu")
    compare.add_argument("--resume", action="store_true", help="continue an interrupted comparison in --out")
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")

    sub.add_parser("list", help="registered losses by family")
    info = sub.add_parser("info", help="a loss's formula, defaults and peer conventions")
    info.add_argument("name")
    plot = sub.add_parser("plot", help="plot losses and their gradients against the margin, residual or overlap")
    plot.add_argument("names", nargs="+", help="registered loss names")
    plot.add_argument("--out", default="losses.png", help="PNG file to write (default: losses.png)")
    return parser


def split_specs(text: str) -> list[str]:
    """Comma-separated specs; commas inside parentheses belong to a spec's options."""
    specs, depth, current = [], 0, []
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            specs.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    specs.append("".join(current).strip())
    return [s for s in specs if s]


def _compare(args: argparse.Namespace) -> int:
    from losskit.arena.report import print_results
    from losskit.arena.runner import compare

    results = compare(args.task, split_specs(args.losses) if args.losses else None, epochs=args.epochs,
                      seed=args.seed, optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
                      out=args.out, device=args.device, resume=args.resume, progress=not args.no_progress)
    if results["config"].get("world_size", 1) == 1 or _rank() == 0:
        from rich.console import Console

        # a terminal sets its own width; a pipe or a log file gets one wide enough for the table
        print_results(results, None if sys.stdout.isatty() else Console(width=140))  # the table and the verdict
        print(f"report: {args.out}/report.html")
    return 0


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _list() -> int:
    import losskit

    for family in losskit.families():
        print(f"{family}: {', '.join(losskit.available(family))}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "compare":
            return _compare(args)
        if args.command == "list":
            return _list()
        if args.command == "info":
            from losskit.arena.info import loss_info

            print(loss_info(args.name))
            return 0
        from losskit.arena.plots import plot_losses

        print(plot_losses(args.names, args.out))
        return 0
    except ValueError as exc:  # bad arguments: one line, with the suggestion the message carries
        print(f"losskit: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("losskit: interrupted; the partial report is written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `losskit info NAME | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
