"""Time and memory of loss implementations side by side, in one process, reported as ratios.

Each candidate is a zero-argument callable that runs one forward and backward pass. Every
candidate runs on the same inputs, interleaved round by round so that background load on the
machine affects all of them alike; the reported time is the median over rounds.

Memory, the peak of what one forward+backward pass allocates on top of the caller's tensors:
* on CUDA, from the caching allocator's statistics;
* on CPU (which keeps none), by watching every tensor that an op creates during the pass
  (a ``TorchDispatchMode``) and taking the largest total of those still alive after any op.
  This counts what autograd saves, what a custom ``autograd.Function`` keeps on ``ctx``, the
  temporaries and the gradient itself.
The tables of :func:`benchmark` also give each peak beyond the inputs' gradients, the floor
that every implementation has to allocate.

The tracker sees torch tensors only. What a CPU user sees is the process's resident set, which
also holds the allocator's cache, NumPy arrays and one-time costs (thread pools, workspaces).
:func:`rss_growth` measures that: in a fresh interpreter, after the inputs exist, it resets the
high-water mark (``5`` into ``/proc/self/clear_refs``), runs the step and reads ``VmHWM``.
``ru_maxrss`` cannot do this: after fork+exec it starts at the parent's size.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import losskit


@dataclass
class Result:
    label: str
    seconds: float
    memory_bytes: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _LiveBytes(TorchDispatchMode):
    """Track the storages ops create; record the peak of their total size while alive."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Views, in-place ops and out= return a storage the op was given: nothing new was allocated.
        given = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in given:
                storage = t.untyped_storage()
                known = self.storages.get(storage.data_ptr())
                if known is None or known[0].expired():  # a new storage, maybe at a reused address
                    self.storages[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
        live = {ptr: entry for ptr, entry in self.storages.items() if not entry[0].expired()}
        self.storages = live
        self.peak = max(self.peak, sum(size for _, size in live.values()))
        return out


def cpu_peak_bytes(step: Callable[[], None]) -> int:
    """Peak bytes of tensors created during ``step()`` and alive at the same time."""
    with _LiveBytes() as tracker:
        step()
    return tracker.peak


def cuda_peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def rss_available() -> bool:
    """Whether this system can reset and read the resident high-water mark (Linux)."""
    return os.path.exists("/proc/self/clear_refs")


def rss_growth(factory: str, *args: object, threads: int | None = None, warmup: int = 0) -> int:
    """Growth of the peak resident set while one step runs, measured in a fresh interpreter
    (``rss_profile(...)["growth"]``).

    ``factory`` is ``"module:function"``; in the child, ``function(*args)`` (JSON-able
    arguments) creates the inputs and returns a zero-argument ``step``. The child then runs
    ``step`` ``warmup`` times, resets ``VmHWM`` to the current resident set, runs ``step`` once
    and reports ``VmHWM`` minus the resident set at the reset: the memory the step added as the
    operating system sees it (allocator caching and temporaries the tensor tracker misses
    included). With ``warmup=0`` (the default) one-time costs count too, as on a user's first step.
    """
    return rss_profile(factory, *args, threads=threads, warmup=warmup)["growth"]


def rss_profile(factory: str, *args: object, threads: int | None = None, warmup: int = 0) -> dict[str, int]:
    """:func:`rss_growth`'s measurement, with where the memory went: ``"growth"`` (bytes, the peak
    resident set's growth) and ``"file"``, the growth of the file-backed resident set
    (``RssFile``): the pages of the libraries' code that the step ran for the first time in this
    process. The rest is anonymous memory: tensors, the allocator's heap, thread stacks."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = json.dumps({"factory": factory, "args": list(args), "threads": threads, "warmup": warmup})
    command = [sys.executable, "-c", "import sys, benchmarks.harness as h; h._rss_child(sys.argv[1])", spec]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=root).stdout
    return {key: int(value) for key, value in json.loads(out.strip().splitlines()[-1]).items()}


def _rss_child(spec_json: str) -> None:
    import importlib

    spec = json.loads(spec_json)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    module, _, name = spec["factory"].partition(":")
    with losskit.set_checks(False):
        step = getattr(importlib.import_module(module), name)(*spec["args"])
        for _ in range(spec["warmup"]):
            step()
        baseline, code = _status_bytes("VmRSS"), _status_bytes("RssFile")
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM := the current resident set
        step()
        peak = _status_bytes("VmHWM")
        code = _status_bytes("RssFile") - code
    print(json.dumps({"growth": max(peak - baseline, 0), "file": max(code, 0)}))


def compare(
    forwards: dict[str, Callable[[], torch.Tensor]],
    inputs: tuple[torch.Tensor, ...],
    *,
    rounds: int = 15,
    warmup: int = 3,
) -> list[Result]:
    """Time forward+backward of each candidate; ``forwards[label]()`` returns a scalar loss.

    ``inputs`` are the tensors whose ``.grad`` is reset between runs.
    """
    device = inputs[0].device

    def step(forward: Callable[[], torch.Tensor]) -> None:
        for x in inputs:
            x.grad = None
        forward().backward()

    for _ in range(warmup):
        for forward in forwards.values():
            step(forward)
    times: dict[str, list[float]] = {label: [] for label in forwards}
    for _ in range(rounds):
        for label, forward in forwards.items():
            _sync(device)
            start = time.perf_counter()
            step(forward)
            _sync(device)
            times[label].append(time.perf_counter() - start)
    results = []
    for label, forward in forwards.items():
        if device.type == "cuda":
            memory = cuda_peak_bytes(lambda f=forward: step(f), device)
        else:
            memory = cpu_peak_bytes(lambda f=forward: step(f))
        results.append(Result(label, statistics.median(times[label]), memory))
    return results


def report(title: str, results: list[Result], *, reference: str = "losskit", gradient_bytes: int = 0) -> str:
    """A table: time, ratio (other / reference: > 1 means the reference is faster) and memory.

    ``gradient_bytes`` (the inputs' gradients, which every implementation must allocate) adds a
    column with each peak beyond them: what the loss itself costs on top of that floor.
    """
    ref = next(r for r in results if r.label == reference)
    head = f"{'implementation':<34}{'time (ms)':>11}{'time ratio':>12}{'memory (MB)':>13}{'mem ratio':>11}"
    lines = [title, head + (f"{'beyond grads (MB)':>19}" if gradient_bytes else "")]
    for r in results:
        time_ratio = r.seconds / ref.seconds
        mem_ratio = r.memory_bytes / ref.memory_bytes if ref.memory_bytes else float("nan")
        line = (f"{r.label:<34}{r.seconds * 1e3:>11.2f}{time_ratio:>12.2f}"
                f"{r.memory_bytes / 2**20:>13.1f}{mem_ratio:>11.2f}")
        if gradient_bytes:
            line += f"{(r.memory_bytes - gradient_bytes) / 2**20:>19.1f}"
        lines.append(line)
    return "\n".join(lines)


def benchmark(title: str, forwards: dict[str, Callable[[], torch.Tensor]], inputs: tuple[torch.Tensor, ...], *,
              rounds: int, checks: bool, rtol: float = 1e-5, with_results: bool = False,
              ) -> str | tuple[str, list[Result]]:
    """Check that every candidate computes losskit's value, time them, print and return the table
    (and the results, with ``with_results=True``).

    ``checks`` switches losskit's value checks on for the timing (the peers run none).
    """
    values = {label: forward().item() for label, forward in forwards.items()}
    reference = values["losskit"]
    for label, value in values.items():
        assert abs(value - reference) <= rtol * abs(reference), f"{label} computes {value}, losskit {reference}"
    with losskit.set_checks(checks):
        results = compare(forwards, inputs, rounds=rounds)
    gradient_bytes = sum(x.numel() * x.element_size() for x in inputs if x.requires_grad)
    text = report(f"{title}, threads={torch.get_num_threads()}, value checks {'on' if checks else 'off'}", results,
                  gradient_bytes=gradient_bytes)
    print(text)
    return (text, results) if with_results else text


def cpu_model() -> str:
    """The CPU's model name, from ``lscpu`` or ``/proc/cpuinfo`` (Linux), else ``platform``."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


# Peak HBM bandwidth (GB/s, vendor figures) of common GPUs, by a substring of the device name.
HBM_PEAK_GBS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0,
                "A100 80GB PCIe": 1935.0, "A100": 1555.0, "L40S": 864.0, "A10G": 600.0, "RTX 4090": 1008.0}


def hbm_peak_gbs(device: torch.device, override: float | None = None) -> float | None:
    """The device's peak memory bandwidth in GB/s: ``override``, else the table above, else None."""
    if override is not None:
        return override
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in HBM_PEAK_GBS.items() if key in name), None)


# Dense bf16 peak (TFLOPS, vendor figures without sparsity), by a substring of the device name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "A10G": 70.0, "RTX 4090": 165.0}


def bf16_peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The device's dense bf16 peak in TFLOPS: ``override``, else the table above, else None."""
    if override is not None:
        return override
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def bandwidth(results: list[Result], bytes_moved: int, device: torch.device, peak_gbs: float | None = None) -> str:
    """Effective bandwidth of each candidate on CUDA: ``bytes_moved`` (the least traffic a fused
    forward+backward needs) over its median time, and its share of the GPU's HBM peak."""
    peak = hbm_peak_gbs(device, peak_gbs)
    name = torch.cuda.get_device_name(device)
    lines = [f"effective bandwidth, {bytes_moved / 1e6:.1f} MB moved at least, {name}, HBM peak "
             + (f"{peak:.0f} GB/s" if peak else "unknown (pass --hbm-peak-gbs)")]
    for r in results:
        gbs = bytes_moved / r.seconds / 1e9
        share = f"{gbs / peak:>8.1%}" if peak else ""
        lines.append(f"{r.label:<34}{gbs:>10.0f} GB/s{share}")
    text = "\n".join(lines)
    print(text)
    return text
