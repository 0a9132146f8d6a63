"""Dtype policy shared by every loss.

Half and bfloat16 inputs are computed in float32 and the result is cast back to the input
dtype; float32 and float64 are computed as they are. Integer inputs where a floating input
is expected are an error raised by the checks, never a silent cast.
"""

from __future__ import annotations

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a loss computes in for inputs of ``dtype``."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def upcast(x: Tensor) -> Tensor:
    """``x`` in its compute dtype (a no-op for float32 and float64)."""
    return x.float() if x.dtype in _LOW_PRECISION else x


def as_option_tensor(value, like: Tensor) -> Tensor:
    """A tensor option (class weights, priors, quantiles) on ``like``'s device and dtype."""
    return torch.as_tensor(value, device=like.device).to(like.dtype)


def tiny(dtype: torch.dtype) -> float:
    """The smallest positive normal number of ``dtype``: a denominator floor that changes no real value."""
    return torch.finfo(dtype).tiny


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of ``dtype``: the default for smoothing terms that must not change the result."""
    return torch.finfo(dtype).eps


def finite_log(log_values: Tensor) -> Tensor:
    """Log-probabilities with ``-inf`` raised to the dtype's most negative finite number.

    A class with probability 0 (a masked logit, a zero target) has log-probability ``-inf``;
    the floor keeps ``0 * log p`` at 0 instead of NaN, and the clamp's gradient there is 0,
    which is the true gradient of a term whose probability is 0.
    """
    return log_values.clamp_min(torch.finfo(log_values.dtype).min)
