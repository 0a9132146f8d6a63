r"""The numerics of the robust regression losses: Huber's function without squaring a large residual,
:math:`(1 + z) \operatorname{log1p}(z) - z` to full precision (balanced L1), Barron's :math:`\rho` for
every :math:`\alpha`, and the quadrature nodes of his partition function."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from losskit._core.numerics import eps as machine_eps

# Series coefficients of (1 + z) log1p(z) - z = sum_{k >= 2} (-1)^k z^k / (k (k - 1)), highest first.
_G_SERIES = tuple((-1) ** k / (k * (k - 1)) for k in range(16, 1, -1))


def _one_plus_log1p_minus(z: Tensor) -> Tensor:
    r""":math:`(1 + z) \operatorname{log1p}(z) - z \ge 0` for :math:`z \ge 0`, to full relative
    precision: its Taylor series below 1/4 (where the two terms cancel to :math:`z^2 / 2`), the
    formula above."""
    near = z < 0.25
    u = torch.where(near, z, torch.zeros_like(z))
    series = torch.full_like(u, _G_SERIES[0])
    for coefficient in _G_SERIES[1:]:
        series = series * u + coefficient
    return torch.where(near, series * u * u, (1 + z) * torch.log1p(z) - z)


def _rho(sq: Tensor, alpha: Tensor) -> Tensor:
    """Barron's rho as a function of the squared scaled residual ``sq = (x / c)^2``, any alpha."""
    tiny = machine_eps(sq.dtype)
    half = 0.5 * sq
    # Infinite alphas get their own branch; alpha = 1 keeps the general branch finite there,
    # because a NaN in an unselected torch.where branch still turns its gradient into NaN.
    # (isinf, not isfinite: a NaN alpha must stay NaN.)
    a = torch.where(torch.isinf(alpha), torch.ones_like(alpha), alpha)
    # |a - 2| and |a| are kept away from 0 (with a's sign) so the divisions stay finite near
    # a = 0 and a = 2; exactly there the closed forms below take over.
    b = (a - 2).abs().clamp_min(tiny)
    a_safe = torch.where(a >= 0, a.clamp_min(tiny), a.clamp_max(-tiny))
    # (1 + sq/b)^(a/2) - 1 through expm1/log1p stays accurate when the power is near 1.
    general = b / a_safe * torch.expm1(0.5 * a_safe * torch.log1p(sq / b))
    loss = torch.where(a == 2, half, torch.where(a == 0, torch.log1p(half), general))
    loss = torch.where(alpha == -math.inf, -torch.expm1(-half), loss)
    pos_inf = alpha == math.inf
    return torch.where(pos_inf, torch.expm1(torch.where(pos_inf, half, 0.0)), loss)


def _partition_nodes(n: int) -> tuple[Tensor, Tensor]:
    """Quadrature nodes ``x`` on [0, inf) and their log-weights for integrals of exp(-rho), float64."""
    t, w = np.polynomial.legendre.leggauss(n)
    s = 0.5 * (t + 1.0)
    # x = tan(theta) maps [0, inf) to [0, pi/2) and turns the heavy 1/x^2 tail at alpha = 0 into
    # a bounded integrand; theta = pi/2 (1 - (1 - s)^3) then crowds nodes towards pi/2, where
    # small alphas leave a log-type endpoint singularity that plain Gauss-Legendre resolves slowly.
    theta = 0.5 * np.pi * (1.0 - (1.0 - s) ** 3)
    dtheta_ds = 1.5 * np.pi * (1.0 - s) ** 2
    log_w = np.log(0.5 * w * dtheta_ds) - 2.0 * np.log(np.cos(theta))
    return torch.from_numpy(np.tan(theta)), torch.from_numpy(log_w)


# Built once at import: torch.compile cannot trace numpy's leggauss.
_PARTITION_X, _PARTITION_LOG_W = _partition_nodes(64)


def _huber(e: Tensor, delta: float) -> Tensor:
    # The min/linear split is exact on both sides and never squares a large residual. The linear
    # part is relu(|e| - delta), not |e| - min(|e|, delta): the latter's gradient, 1 - 1 + e/delta
    # inside the bowl, cancels to a few digits for a small residual.
    a = e.abs()
    quadratic = a.clamp_max(delta)
    return 0.5 * quadratic**2 + delta * (a - delta).relu()
