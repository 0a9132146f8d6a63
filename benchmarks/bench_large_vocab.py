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

With ``--device cuda`` the comparison is the GPU one: by default the reference shape N=8192,
D=4096, V=128256 in bfloat16; ``fused`` (``backend="auto"``: the Triton kernel per chunk),
``fused-torch`` (the same chunks in torch operations), ``naive``, ``naive+compile``, and, when
installed, Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` (``liger``) and Apple's Cut
Cross-Entropy ``linear_cross_entropy`` (``cce``). Memory is the CUDA allocator's peak during one
step beyond what was allocated before it (inputs; gradients included), time the median of
interleaved rounds, and throughput the 6 N D V flops of the three matrix products over the time,
against the GPU's bf16 peak.

    python -m benchmarks.bench_large_vocab --device cuda [--tokens 8192] [--hidden 4096] [--vocab 128256]
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
from benchmarks.harness import Result, bf16_peak_tflops, cuda_peak_bytes, report

METHODS = ("fused", "naive", "naive+compile")
CUDA_METHODS = ("fused", "fused-torch", "naive", "naive+compile", "liger", "cce")


def _inputs(tokens: int, hidden: int, vocab: int, device: str = "cpu",
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=gen)
    w = torch.randn(vocab, hidden, generator=gen) * hidden**-0.5
    b = torch.randn(vocab, generator=gen) * 0.1
    target = torch.randint(vocab, (tokens,), generator=gen)
    target[::10] = -100
    h, w, b = (x.to(device=device, dtype=dtype).requires_grad_() for x in (h, w, b))
    return h, w, b, target.to(device)


def _naive(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return losskit.cross_entropy(h @ w.T + b, target)


def _forward(method: str, chunk_size: int | None) -> Callable[..., torch.Tensor] | None:
    """The method's loss function, or None for a peer that is not installed."""
    if method in ("fused", "fused-torch"):
        backend = "torch" if method == "fused-torch" else "auto"
        return lambda h, w, b, t: losskit.fused_linear_cross_entropy(h, w, t, bias=b, chunk_size=chunk_size,
                                                                     backend=backend)
    if method == "naive":
        return _naive
    if method == "naive+compile":
        return torch.compile(_naive)
    if method == "liger":
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except ImportError:
            return None
        liger = LigerFusedLinearCrossEntropyLoss()
        return lambda h, w, b, t: liger(w, h, t, b)
    if method == "cce":
        try:
            from cut_cross_entropy import linear_cross_entropy
        except ImportError:
            return None
        return lambda h, w, b, t: linear_cross_entropy(h, w, t, bias=b)
    raise ValueError(f"method must be one of {CUDA_METHODS}, got {method!r}")


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
    parser.add_argument("--tokens", type=int, default=None, help="2048 on a CPU, 8192 on CUDA")
    parser.add_argument("--hidden", type=int, default=None, help="1024 on a CPU, 4096 on CUDA")
    parser.add_argument("--vocab", type=int, default=None, help="32064 on a CPU, 128256 on CUDA")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=None, choices=CUDA_METHODS,
                        help=f"default: {' '.join(METHODS)} on a CPU, all that are installed on CUDA")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16-peak-tflops", type=float, default=None, help="the GPU's peak, if not in the table")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--checks", action="store_true", help="keep losskit's value checks on")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one round, no compile (a test)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    for name, cpu_default, cuda_default in (("tokens", 2048, 8192), ("hidden", 1024, 4096), ("vocab", 32064, 128256)):
        if getattr(args, name) is None:
            setattr(args, name, cuda_default if cuda else cpu_default)
    if args.methods is None:
        args.methods = list(CUDA_METHODS if cuda else METHODS)
    if args.smoke:
        args.tokens, args.hidden, args.vocab, args.rounds = 64, 32, 500, 1
        args.methods = [m for m in args.methods if m != "naive+compile"]
    with losskit.set_checks(args.checks):  # restored on return: a caller (the test suite) keeps its setting
        if args.child is not None:
            _child(args)
            return ""
        return _compare_cuda(args) if cuda else _compare(args)


def _compare(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)

    tensors = _inputs(args.tokens, args.hidden, args.vocab)
    forwards = {m: f for m in args.methods if (f := _forward(m, args.chunk_size)) is not None}
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


def _compare_cuda(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    tensors = _inputs(args.tokens, args.hidden, args.vocab, args.device, torch.bfloat16)
    forwards = {m: f for m in args.methods if (f := _forward(m, args.chunk_size)) is not None}
    missing = [m for m in args.methods if m not in forwards]
    values = {method: _step(forward, tensors).float().item() for method, forward in forwards.items()}  # + warm-up
    reference = values[next(iter(forwards))]
    times: dict[str, list[float]] = {method: [] for method in forwards}
    for _ in range(args.rounds):
        for method, forward in forwards.items():
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            _step(forward, tensors)
            torch.cuda.synchronize(device)
            times[method].append(time.perf_counter() - start)
    memory = {method: cuda_peak_bytes(lambda f=forward: _step(f, tensors), device)
              for method, forward in forwards.items()}
    n, d, v = args.tokens, args.hidden, args.vocab
    name = torch.cuda.get_device_name(device)
    title = (f"loss head fwd+bwd: hidden ({n}, {d}), weight ({v}, {d}), bias, 10% ignored, {name}, bfloat16, "
             f"{args.rounds} rounds; memory = CUDA allocator peak of one step beyond the inputs"
             + (f"; not installed: {', '.join(missing)}" if missing else ""))
    results = [Result(method, statistics.median(times[method]), memory[method]) for method in forwards]
    lines = [report(title, results, reference=next(iter(forwards)))]
    peak = bf16_peak_tflops(device, args.bf16_peak_tflops)
    for method in forwards:
        tflops = 6 * n * d * v / statistics.median(times[method]) / 1e12
        share = f" ({tflops / peak:.0%} of the {peak:.0f} TFLOPS bf16 peak)" if peak else ""
        lines.append(f"{method:<16} loss {values[method]:.6f} (first: {reference:.6f}), {tflops:.0f} TFLOPS{share}")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
