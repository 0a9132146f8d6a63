"""Accurate elementwise functions from Triton's core operations, where the core language has none.

Triton's libdevice has them on CUDA but not in the interpreter the tests run in, so these are
written with Kahan's rounding-compensated forms, which keep full relative precision near 0 (where
``log(1 + u)``, ``exp(v) - 1`` or a ``tanh`` from exponentials would cancel to a few digits).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def log1p(u):
    """``log(1 + u)``: the rounding of ``w = 1 + u`` is undone by ``u / (w - 1)`` (Kahan)."""
    w = 1 + u
    return tl.where(w == 1, u, tl.log(w) * (u / tl.where(w == 1, 1.0, w - 1)))


@triton.jit
def expm1(v):
    """``exp(v) - 1`` (Kahan): ``(w - 1) * v / log(w)`` with ``w = exp(v)``; -1 where ``w`` underflows."""
    w = tl.exp(v)
    safe = tl.where((w == 1) | (w == 0), 2.0, w)
    return tl.where(w == 1, v, tl.where(w == 0, -1.0, (safe - 1) * (v / tl.log(safe))))


@triton.jit
def tanh(u):
    """``tanh(u) = -expm1(-2|u|) / (2 + expm1(-2|u|))`` with the sign of ``u``: no cancellation."""
    e = expm1(-2 * tl.abs(u))
    magnitude = -e / (2 + e)
    return tl.where(u < 0, -magnitude, magnitude)


def scalar_options(dtype: torch.dtype, device: torch.device, *values: float) -> Tensor:
    """A kernel's scalar options as a tensor in its compute dtype on ``device``: exact in float64
    (a Python float reaches a compiled kernel as float32). Filled on the device, one value at a
    time: no copy from the host, so no synchronization and nothing a CUDA graph cannot capture."""
    options = torch.empty(len(values), dtype=dtype, device=device)
    for i, value in enumerate(values):
        options[i].fill_(value)
    return options
