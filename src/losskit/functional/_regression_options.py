"""The regression losses' tensor options (quantiles, Barron's alpha and scale, the Gaussian
variance): checked, and converted to a tensor on the input's device and dtype."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from losskit._core.checks import (
    check_broadcastable,
    check_finite,
    check_floating,
    check_number,
    check_positive_values,
    checks_enabled,
)


def _quantile_tensor(quantiles: float | Sequence[float] | Tensor) -> float | Tensor:
    """A float for a single quantile, a 1-D tensor for several; the range is checked here."""
    if isinstance(quantiles, Tensor):
        if not quantiles.is_floating_point() or quantiles.dim() > 1:
            raise ValueError(f"quantiles must be a number or a 1-D floating tensor, got dtype "
                             f"{quantiles.dtype} and shape {tuple(quantiles.shape)}")
        if quantiles.dim() == 0:
            quantiles = quantiles.reshape(1)
        if checks_enabled() and quantiles.numel() and not bool(((quantiles > 0) & (quantiles < 1)).all()):
            raise ValueError(f"quantiles must lie in (0, 1), got {quantiles.tolist()}")
        return quantiles
    if isinstance(quantiles, (list, tuple)):
        if not quantiles:
            raise ValueError("quantiles must not be empty")
        values = [check_number("quantiles", q, low=0.0, high=1.0, low_open=True, high_open=True)
                  for q in quantiles]
        return torch.tensor(values, dtype=torch.float64)
    return check_number("quantiles", quantiles, low=0.0, high=1.0, low_open=True, high_open=True)


def _option_tensor(name: str, value: float | Tensor, like: Tensor) -> Tensor:
    """A float or tensor option as a tensor on ``like``'s device and dtype, broadcastable to ``like``."""
    if isinstance(value, Tensor):
        check_floating(name, value)
        check_broadcastable(name, value, like.shape, "input, shape", input=like)
        return value.to(like.dtype)
    return torch.tensor(value, device=like.device, dtype=like.dtype)


def _gaussian_var(var: float | Tensor, x: Tensor) -> Tensor:
    """``var`` broadcastable to ``x`` by PyTorch's rules, as a tensor in ``x``'s dtype."""
    if not isinstance(var, Tensor):
        return torch.tensor(check_number("var", var, low=0.0), device=x.device, dtype=x.dtype)
    check_floating("var", var)
    # PyTorch: a var one dimension short of input (same leading sizes) is one variance per row.
    if x.dim() and var.shape != x.shape and var.shape == x.shape[:-1]:
        var = var.unsqueeze(-1)
    check_broadcastable("var", var, x.shape, "input, shape", input=x)
    check_finite("var", var)
    check_positive_values("var", var, strict=False)
    return var.to(x.dtype)
