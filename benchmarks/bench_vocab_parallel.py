"""Vocabulary-parallel fused cross-entropy on 2 ranks vs the naive 2-rank form vs one process.

Forward+backward of a language model's loss head, hidden (N, D) replicated, weight (V, D) and
bias (V,) split by vocabulary over the ranks (gloo on the CPU here, NCCL where GPUs are), float32,
10% of the targets ignored. Three methods:

* ``vocab-parallel fused``: ``fused_linear_cross_entropy(h, w_r, target, bias=b_r, process_group=g)``:
  no rank forms more than one chunk of its block's logits;
* ``vocab-parallel naive``: ``vocab_parallel_cross_entropy(h @ w_r.T + b_r, target, process_group=g)``:
  each rank materializes its block of the logits (N, V/2) and their gradient;
* ``one process``: ``fused_linear_cross_entropy`` on the full head, on rank 0 alone (the others wait).

Time: the methods run interleaved round by round (a barrier before each), median of the rounds,
on rank 0. Memory: the peak of what one forward+backward step allocates on rank 0, tracked by
:func:`benchmarks.harness.cpu_peak_bytes` (CUDA's peak on a GPU), minus the gradients every method
must hold (hidden's, and the weight's and bias's of the block): the "added memory". The goals:
the fused form's added memory at most 10% of the naive block's logits and gradient, and its time
at most 1.3x the naive form's.

    python -m benchmarks.bench_vocab_parallel [--tokens 2048] [--hidden 1024] [--vocab 32064]
        [--rounds 3] [--chunk-size K] [--smoke]

starts two ranks itself; under ``torchrun --nproc-per-node 2 -m benchmarks.bench_vocab_parallel``
it uses the ranks torchrun starts (NCCL when CUDA is available).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

import losskit.functional as LF
from benchmarks.harness import cpu_peak_bytes, cuda_peak_bytes

METHODS = ("vocab-parallel fused", "vocab-parallel naive", "one process")


def _inputs(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(args.tokens, args.hidden, generator=gen)
    w = torch.randn(args.vocab, args.hidden, generator=gen) * args.hidden**-0.5
    b = torch.randn(args.vocab, generator=gen) * 0.1
    target = torch.randint(args.vocab, (args.tokens,), generator=gen)
    target[::10] = -100
    return h.to(device), w.to(device), b.to(device), target.to(device)


def _steps(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, Callable[[], None]], int, int]:
    """One forward+backward step per method, the block's gradient bytes, and the naive block's
    logits-and-gradient bytes."""
    h, w, b, target = _inputs(args, device)
    world, me = dist.get_world_size(), dist.get_rank()
    per = -(-args.vocab // world)
    block = slice(me * per, min((me + 1) * per, args.vocab))
    wr, br = w[block].clone(), b[block].clone()
    group = dist.group.WORLD

    def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
        return [t.detach().requires_grad_() for t in tensors]

    def fused() -> None:
        hh, ww, bb = leaves(h, wr, br)
        LF.fused_linear_cross_entropy(hh, ww, target, bias=bb, process_group=group,
                                      chunk_size=args.chunk_size).backward()

    def naive() -> None:
        hh, ww, bb = leaves(h, wr, br)
        LF.vocab_parallel_cross_entropy(hh @ ww.T + bb, target, process_group=group).backward()

    def single() -> None:
        if me == 0:
            hh, ww, bb = leaves(h, w, b)
            LF.fused_linear_cross_entropy(hh, ww, target, bias=bb, chunk_size=args.chunk_size).backward()

    rows = block.stop - block.start
    gradients = (args.tokens * args.hidden + rows * args.hidden + rows) * 4
    logits = 2 * args.tokens * rows * 4
    return dict(zip(METHODS, (fused, naive, single), strict=True)), gradients, logits


def _timed(step: Callable[[], None], device: torch.device) -> float:
    dist.barrier()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()
    return time.perf_counter() - start


def _run(args: argparse.Namespace) -> None:
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    steps, gradients, logits = _steps(args, device)
    for step in steps.values():  # warm-up
        step()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(args.rounds):
        for method, step in steps.items():
            times[method].append(_timed(step, device))
    peaks = {}
    for method, step in steps.items():
        dist.barrier()
        peaks[method] = cuda_peak_bytes(step, device) if device.type == "cuda" else cpu_peak_bytes(step)
    if dist.get_rank() != 0:
        return
    print(f"2-rank vocabulary-parallel loss head: N={args.tokens}, D={args.hidden}, V={args.vocab} "
          f"({args.vocab // dist.get_world_size()} per rank), float32, {device.type}, "
          f"chunk_size={args.chunk_size}, {args.rounds} rounds, rank 0")
    naive_time = statistics.median(times["vocab-parallel naive"])
    header = ("method", "median s", "/ naive", "peak MB", "added MB", "added / naive logits+grad")
    print(f"{header[0]:<22} {header[1]:>9} {header[2]:>8} {header[3]:>9} {header[4]:>9} {header[5]:>26}")
    for method in METHODS:
        t = statistics.median(times[method])
        added = peaks[method] - (gradients if method != "one process" else 0)
        print(f"{method:<22} {t:9.3f} {t / naive_time:8.2f} {peaks[method] / 1e6:9.1f} {added / 1e6:9.1f} "
              f"{added / logits:26.3f}")
    print(f"naive block logits + gradient: {logits / 1e6:.1f} MB; block gradients (h, w_r, b_r): "
          f"{gradients / 1e6:.1f} MB (one process: the full head's gradients are counted in its peak)")


def _worker(rank: int, world: int, init: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        _run(args)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32064)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one round (the test suite's run)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.tokens, args.hidden, args.vocab, args.rounds = 64, 16, 301, 1
    if "RANK" in os.environ:  # under torchrun
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
        try:
            _run(args)
        finally:
            dist.destroy_process_group()
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.multiprocessing.start_processes(_worker, args=(2, os.path.join(folder, "init"), args), nprocs=2,
                                              start_method="fork")


if __name__ == "__main__":
    main()
