"""The ``losskit`` command: ``compare`` (the arena), ``list``, ``info`` and ``plot``.

Errors are one line on stderr: a bad argument exits with 2, a failure while running (a file that
cannot be written, a missing optional dependency, a comparison in which no run finished) with 1,
an interruption with 130. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 0, got {text}")
    return value


def _seeds(text: str) -> list[int]:
    from losskit.arena.runner import parse_seeds

    try:
        return parse_seeds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _seeds_one(text: str) -> list[int]:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return [value]


def _parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error instead of one line")
    parser = _Parser(prog="losskit", parents=[debug],
                     description="Loss functions for PyTorch: compare, list, explain and plot them.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    compare = sub.add_parser(
        "compare", parents=[debug], help="train small models with different losses side by side and report",
        description="Train one small model per loss and seed on the same data and schedule, then print a table "
        "(mean and 95% interval over seeds per metric), each loss against the first (paired over seeds) and a "
        "verdict, and write OUT/report.html and OUT/results.json. Every argument is checked before anything "
        "trains. A folder that holds a previous comparison is refused unless --resume; checkpoints are read only "
        "with --resume, only when their settings and hashes match, and only as tensors "
        "(torch.load(weights_only=True)). Exit status: 0 when at least one run finished, 1 when none did or a "
        "file could not be written, 2 for a bad argument.")
    compare.add_argument("--task", help="segmentation (default), classification, regression, detection, rl, "
                         "tabular (--data FILE --target COLUMN) or segmentation-folder (--data DIR)")
    compare.add_argument("--obb", action="store_true",
                         help="with --task detection: rotated rectangles, trained with YOLOOBBLoss (specs obb, "
                         "obb-no-angle, obb-no-floor)")
    compare.add_argument("--losses", help='comma-separated loss specs, e.g. "ce,dice,0.5*dice+0.5*ce" '
                         "(the task's defaults if omitted); the first is the baseline")
    compare.add_argument("--epochs", type=_count, help="epochs per run, at least 1 (the task's default if omitted)")
    seeds = compare.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=_seeds, help="N (seeds 0 to N-1), a range A-B, or a list 1,5,9: every loss "
                       "runs with every seed (the task's default count if omitted)")
    seeds.add_argument("--seed", type=_seeds_one, dest="seeds", metavar="S",
                       help="one seed only (the same as --seeds S-S)")
    compare.add_argument("--optimizer", choices=("adam", "sgd"), help="adam (default) or sgd")
    compare.add_argument("--lr", type=_positive, help="learning rate, greater than 0 (the task's default if omitted)")
    compare.add_argument("--batch-size", type=_count, help="at least 1 (the task's default if omitted)")
    compare.add_argument("--data", help="tabular: a .csv or .parquet file; segmentation-folder: a folder with "
                         "images/*.png and masks/*.png")
    compare.add_argument("--target", help="tabular: the column to predict")
    compare.add_argument("--kind", choices=("classification", "regression"),
                         help="tabular: what the target is (inferred from the column if omitted)")
    compare.add_argument("--out", default="losskit-compare",
                         help="output folder (default: losskit-compare); one that holds a previous comparison is "
                         "refused unless --resume")
    compare.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:<index> or mps; one that exists")
    compare.add_argument("--jobs", type=_count, help="runs at once, each in its own worker process (default: as "
                         "many as the CPU cores allow; 1 on a GPU); the numbers do not depend on it")
    compare.add_argument("--threads", type=_count, help="PyTorch threads per run (default 1)")
    compare.add_argument("--executor", choices=("local", "ray"), default="local",
                         help="local (default) or ray: every run a Ray task (pip install 'losskit[ray]')")
    compare.add_argument("--address", help="the Ray cluster to use with --executor ray (default: ray.init()'s: a "
                         "running local cluster, or a new one)")
    compare.add_argument("--resume", action="store_true",
                         help="continue the comparison in --out: settings not given are taken from it, settings "
                         "that differ are refused; --epochs may be raised to train further")
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")

    sub.add_parser("list", parents=[debug], help="registered losses by family")
    info = sub.add_parser("info", parents=[debug], help="a loss's formula, defaults and peer conventions")
    info.add_argument("name")
    plot = sub.add_parser("plot", parents=[debug],
                          help="plot losses and their gradients against the margin, residual or overlap")
    plot.add_argument("names", nargs="+", help="registered loss names")
    plot.add_argument("--out", default="losses.png", help="PNG file to write (default: losses.png)")
    return parser


def _compare(args: argparse.Namespace) -> int:
    from losskit.arena.report import print_results
    from losskit.arena.runner import compare
    from losskit.compose.spec import split_specs

    task = args.task
    if args.obb:
        if task != "detection":
            raise ValueError(f"--obb goes with --task detection, got --task {task}")
        task = "detection-obb"
    results = compare(task, split_specs(args.losses) if args.losses else None, epochs=args.epochs,
                      seeds=args.seeds, optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
                      out=args.out, device=args.device, resume=args.resume, progress=not args.no_progress,
                      jobs=args.jobs, threads=args.threads, executor=args.executor, address=args.address,
                      data=args.data, target=args.target, kind=args.kind)
    if results["config"].get("world_size", 1) == 1 or _rank() == 0:
        from rich.console import Console

        # a terminal sets its own width; a pipe or a log file gets one wide enough for the table
        print_results(results, None if sys.stdout.isatty() else Console(width=140))  # the table and the verdict
        print(f"report: {args.out}/report.html")
    if not any(run["status"] == "finished" for run in results["runs"]):
        print("losskit: error: no run finished; the table says why", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _list() -> int:
    import losskit

    for family in losskit.families():
        print(f"{family}: {', '.join(losskit.available(family))}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "compare":
        return _compare(args)
    if args.command == "list":
        return _list()
    if args.command == "info":
        from losskit.cli.info import loss_info

        print(loss_info(args.name))
        return 0
    from losskit.cli.plots import plot_losses

    print(plot_losses(args.names, args.out))
    return 0


def _one_line(error: BaseException) -> str:
    from losskit.arena.runner import describe_error

    if isinstance(error, (ValueError, OSError, ModuleNotFoundError)):
        text = describe_error(error) if isinstance(error, ModuleNotFoundError) else str(error)
        return (text.strip().splitlines() or [type(error).__name__])[0]
    return describe_error(error)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"losskit: warning: {str(message).splitlines()[0]}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "debug", False):
        return _run(args)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return _run(args)
    except ValueError as exc:  # bad arguments: one line, with the suggestion the message carries
        print(f"losskit: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("losskit: interrupted; the partial report is written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `losskit info NAME | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except Exception as exc:  # a file that cannot be written, a missing dependency, a bug: one line
        print(f"losskit: error: {_one_line(exc)} (--debug shows the traceback)", file=sys.stderr)
        return EXIT_FAILED
