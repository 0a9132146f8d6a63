"""Time and memory of loss implementations side by side, in one process, reported as ratios.

Each candidate is a zero-argument callable that runs one forward and backward pass. Every
candidate runs on the same inputs, interleaved round by round so that background load on the
machine affects all of them alike; the reported time is the median over rounds.

Memory:
* on CUDA, the peak allocated during one pass above what was allocated before it;
* on CPU (no allocator statistics), the bytes autograd keeps alive between forward and
  backward (the saved tensors, unique storages, excluding the caller's own inputs): the
  memory a loss adds to a training step's activation footprint.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Result:
    label: str
    seconds: float
    memory_bytes: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_bytes(run: Callable[[], torch.Tensor], exclude: tuple[torch.Tensor, ...] = ()) -> int:
    """Bytes of tensors autograd saves for backward during ``run()`` (unique storages)."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = run()
    loss.backward()
    return sum(seen.values())


def cuda_peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def compare(
    forwards: dict[str, Callable[[], torch.Tensor]],
    inputs: tuple[torch.Tensor, ...],
    *,
    held: tuple[torch.Tensor, ...] = (),
    rounds: int = 15,
    warmup: int = 3,
) -> list[Result]:
    """Time forward+backward of each candidate; ``forwards[label]()`` returns a scalar loss.

    ``inputs`` are the tensors whose ``.grad`` is reset between runs; they and ``held`` (targets)
    belong to the caller, so they do not count as memory the loss adds.
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
            for x in inputs:
                x.grad = None
            memory = saved_bytes(forward, exclude=inputs + held)
        results.append(Result(label, statistics.median(times[label]), memory))
    return results


def report(title: str, results: list[Result], *, reference: str = "losskit") -> str:
    """A table: time, ratio (other / reference: > 1 means the reference is faster) and memory."""
    ref = next(r for r in results if r.label == reference)
    lines = [title, f"{'implementation':<34}{'time (ms)':>11}{'time ratio':>12}{'memory (MB)':>13}{'mem ratio':>11}"]
    for r in results:
        time_ratio = r.seconds / ref.seconds
        mem_ratio = r.memory_bytes / ref.memory_bytes if ref.memory_bytes else float("nan")
        lines.append(
            f"{r.label:<34}{r.seconds * 1e3:>11.2f}{time_ratio:>12.2f}{r.memory_bytes / 2**20:>13.1f}{mem_ratio:>11.2f}"
        )
    return "\n".join(lines)
