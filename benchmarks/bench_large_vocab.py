"""fused_linear_cross_entropy vs the naive head (full logits), eager and under torch.compile.

Forward+backward of the loss head of a language model: hidden (N, D), weight (V, D), bias (V,),
float32 on the CPU, 10% of the targets ignored. Three methods:

* ``fused``: ``losskit.fused_linear_cross_entropy(hidden, weight, target, bias=bias)``;
* ``naive``: ``losskit.cross_entropy(hidden @ weight.T + bias, target)`` (full logits);
* ``naive+compile``: the same under ``torch.compile``.

Time: the methods run interleaved round by round in this process (background load hits them
alike); the median is reported. Memory: each method runs once more in a child process of its
own, where the peak resident set (``VmHWM``) of one forward+backward step is compared with the
resident set holding the inputs *and* buffers the size of the three gradients (touched). The
difference is the memory a method adds beyond what any method must hold (inputs, weight, and
the gradients of hidden, weight and bias). The child's allocator hands big blocks back to the
system on free (``MALLOC_MMAP_THRESHOLD_``), its peak is reset after a warm-up step
(``/proc/self/clear_refs``), and the result is ``added memory``.

The reference shape of the published figures, N=8192, D=2048, V=128256, needs about 8.4 GB for
the naive logits and their gradient and a minute per naive step on a 2-core CPU; the default
here is scaled down to N=2048, D=1024, V=32064 (naive step a few seconds, under 2 GB in all).

    python -m benchmarks.bench_large_vocab [--tokens 2048] [--hidden 1024] [--vocab 32064]
        [--rounds 3] [--methods fused naive naive+compile] [--chunk-size K] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

import losskit
from benchmarks.harness import Result, report

METHODS = ("fused", "naive", "naive+compile")


def _inputs(tokens: int, hidden: int, vocab: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    h = (torch.randn(tokens, hidden, generator=gen)).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen) * hidden**-0.5).requires_grad_()
    b = (torch.randn(vocab, generator=gen) * 0.1).requires_grad_()
    target = torch.randint(vocab, (tokens,), generator=gen)
    target[::10] = -100
    return h, w, b, target


def _naive(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return losskit.cross_entropy(h @ w.T + b, target)


def _forward(method: str, chunk_size: int | None) -> Callable[..., torch.Tensor]:
    if method == "fused":
        return lambda h, w, b, t: losskit.fused_linear_cross_entropy(h, w, t, bias=b, chunk_size=chunk_size)
    if method == "naive":
        return _naive
    if method == "naive+compile":
        return torch.compile(_naive)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _step(forward: Callable[..., torch.Tensor], tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    h, w, b, target = tensors
    for x in (h, w, b):
        x.grad = None
    loss = forward(h, w, b, target)
    loss.backward()
    return loss.detach()


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _child(args: argparse.Namespace) -> None:
    """One method's memory in a fresh process: print {"baseline", "peak", "added"} as JSON."""
    torch.set_num_threads(args.threads)
    tensors = _inputs(args.tokens, args.hidden, args.vocab)
    forward = _forward(args.child, args.chunk_size)
    _step(forward, tensors)  # warm-up: compilation, thread pools, library workspaces
    h, w, b, _ = tensors
    for x in (h, w, b):
        x.grad = None
    must_hold = [torch.full_like(x, 1.0) for x in (h, w, b)]  # the gradients any method returns
    baseline = _status_bytes("VmRSS")
    del must_hold
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current resident set
    _step(forward, tensors)
    peak = _status_bytes("VmHWM")
    print(json.dumps({"baseline": baseline, "peak": peak, "added": max(peak - baseline, 0)}))


def _memory(method: str, args: argparse.Namespace) -> dict[str, int]:
    command = [sys.executable, "-m", "benchmarks.bench_large_vocab", "--child", method,
               "--tokens", str(args.tokens), "--hidden", str(args.hidden), "--vocab", str(args.vocab),
               "--threads", str(args.threads)]
    if args.chunk_size is not None:
        command += ["--chunk-size", str(args.chunk_size)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 20)}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env, cwd=root).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32064)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--checks", action="store_true", help="keep losskit's value checks on")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one round, no compile (a test)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.tokens, args.hidden, args.vocab, args.rounds = 64, 32, 500, 1
        args.methods = [m for m in args.methods if m != "naive+compile"]
    with losskit.set_checks(args.checks):  # restored on return: a caller (the test suite) keeps its setting
        if args.child is not None:
            _child(args)
            return ""
        return _compare(args)


def _compare(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)

    tensors = _inputs(args.tokens, args.hidden, args.vocab)
    forwards = {method: _forward(method, args.chunk_size) for method in args.methods}
    values = {method: _step(forward, tensors).item() for method, forward in forwards.items()}  # + warm-up
    reference = values[args.methods[0]]
    for method, value in values.items():
        assert abs(value - reference) <= 1e-5 * abs(reference), f"{method} computes {value}, not {reference}"
    times: dict[str, list[float]] = {method: [] for method in forwards}
    for _ in range(args.rounds):
        for method, forward in forwards.items():
            start = time.perf_counter()
            _step(forward, tensors)
            times[method].append(time.perf_counter() - start)
    memory = {method: _memory(method, args) for method in forwards}

    n, d, v = args.tokens, args.hidden, args.vocab
    title = (f"loss head fwd+bwd: hidden ({n}, {d}), weight ({v}, {d}), bias, 10% ignored, cpu, float32, "
             f"threads={args.threads}, value checks {'on' if args.checks else 'off'}, {args.rounds} rounds\n"
             f"(scaled down from N=8192, D=2048, V=128256, whose naive step needs ~8.4 GB and ~1 min here)\n"
             f"memory = added memory: peak RSS of one step minus RSS holding inputs and gradient-sized buffers")
    results = [Result(method, statistics.median(times[method]), memory[method]["added"]) for method in forwards]
    lines = [report(title, results, reference=args.methods[0])]
    logits = n * v * 4
    lines.append(f"full logits would take {logits / 2**20:.1f} MB; inputs {(n * d + v * d + v) * 4 / 2**20:.1f} MB")
    if "fused" in forwards and "naive" in forwards:
        fused, naive = memory["fused"]["added"], memory["naive"]["added"]
        ratio_t = statistics.median(times["fused"]) / statistics.median(times["naive"])
        lines.append(f"fused / naive: added memory {fused / 2**20:.1f} / {naive / 2**20:.1f} MB = "
                     f"{fused / max(naive, 1):.1%} (goal <= 10%), time {ratio_t:.2f}x (goal <= 1.2x)")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
