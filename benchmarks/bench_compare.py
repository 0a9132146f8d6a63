"""``losskit compare --seeds 4 --jobs 2`` against ``--jobs 1``: wall time, and the same numbers.

Each command runs in a fresh process, as a user would run it (start-up, worker processes and the
report included), the two alternating round by round so that background load hits both alike.
The CPU time (user + system, the worker processes included) shows the work each did: on a
machine that other work keeps busy, a second process gets no more CPU, and the wall times
converge; the load average before and after is printed for that reason.
Every run computes with one thread (``--threads 1``) whatever the number of jobs, so the two must
give identical histories; the script checks that before it reports a time.

    python -m benchmarks.bench_compare [--task segmentation] [--seeds 4] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _histories(out: Path) -> list[tuple[str, int, list[dict]]]:
    """Each run's epochs without their timings: what must not depend on the number of jobs."""
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return [(r["spec"], r["seed"], [{k: v for k, v in e.items() if k != "seconds"} for e in r["epochs"]])
            for r in results["runs"]]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every finished child, its workers included
    return usage.ru_utime + usage.ru_stime


def _run(args: list[str], jobs: int, out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one command."""
    command = [sys.executable, "-m", "losskit", "compare", *args, "--jobs", str(jobs), "--threads", "1",
               "--no-progress", "--out", str(out)]
    started, cpu = time.perf_counter(), _cpu_seconds()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds, _cpu_seconds() - cpu


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="segmentation")
    parser.add_argument("--seeds", default="4")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--losses", help="comma-separated specs (the task's defaults if omitted)")
    parser.add_argument("--epochs", help="epochs per run (the task's default if omitted)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)

    common = ["--task", args.task, "--seeds", args.seeds]
    common += ["--losses", args.losses] if args.losses else []
    common += ["--epochs", args.epochs] if args.epochs else []
    times: dict[int, list[tuple[float, float]]] = {1: [], args.jobs: []}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        for round_ in range(args.rounds):
            order = (1, args.jobs) if round_ % 2 == 0 else (args.jobs, 1)
            for jobs in order:
                out = Path(tmp) / f"jobs{jobs}-round{round_}"
                times[jobs].append(_run(common, jobs, out))
                histories = _histories(out)
                reference = reference if reference is not None else histories
                if histories != reference:
                    raise AssertionError(f"--jobs {jobs} gave other numbers than --jobs {order[0]}")
        runs = len(reference)
    wall = {jobs: statistics.median(t for t, _ in runs_) for jobs, runs_ in times.items()}
    cpu = {jobs: statistics.median(c for _, c in runs_) for jobs, runs_ in times.items()}
    lines = [f"losskit compare {' '.join(common)} --threads 1: {runs} runs, {os.cpu_count()} CPUs, "
             f"{args.rounds} round(s), load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after",
             f"{'command':<12} {'wall (median)':>14} {'CPU (median)':>14}",
             *(f"{f'--jobs {jobs}':<12} {wall[jobs]:>12.1f} s {cpu[jobs]:>12.1f} s" for jobs in times),
             f"speed-up (jobs 1 / jobs {args.jobs}): {wall[1] / wall[args.jobs]:.2f}x; identical numbers: yes"]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
