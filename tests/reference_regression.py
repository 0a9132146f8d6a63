"""Float64 references for the regression losses, written from the papers' formulas.

Plain Python loops over elements (numpy only for the partition integral); nothing here imports
losskit, so the tests compare two independent implementations. Each function takes tensors
or arrays and returns a float64 numpy array of the elementwise loss.
"""

from __future__ import annotations

import math

import numpy as np


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _elementwise(fn, input, target) -> np.ndarray:
    """``fn(input - target)`` element by element."""
    e = _array(input) - _array(target)
    return np.array([fn(float(v)) for v in e.ravel()]).reshape(e.shape)


def log_cosh(input, target) -> np.ndarray:
    # cosh overflows float64 beyond |e| = 710; there log cosh e = |e| - log 2 to double precision.
    return _elementwise(lambda e: math.log(math.cosh(e)) if abs(e) < 700 else abs(e) - math.log(2), input, target)


def pinball(residual: float, q: float) -> float:
    """Koenker and Bassett's check function at ``residual = target - input``."""
    return q * residual if residual >= 0 else (q - 1) * residual


def quantile(input, target, quantiles) -> np.ndarray:
    """One quantile: ``input``'s shape. Several: ``input`` (..., Q), ``target`` (...)."""
    x, y = _array(input), _array(target)
    if np.ndim(quantiles) == 0:
        pairs = zip(x.ravel(), y.ravel(), strict=True)
        return np.array([pinball(t - i, float(quantiles)) for i, t in pairs]).reshape(x.shape)
    qs = [float(q) for q in quantiles]
    rows_x = x.reshape(-1, len(qs))
    rows_y = y.ravel()
    out = [[pinball(rows_y[r] - rows_x[r, k], q) for k, q in enumerate(qs)] for r in range(len(rows_y))]
    return np.array(out).reshape(x.shape)


def charbonnier(input, target, eps: float) -> np.ndarray:
    return _elementwise(lambda e: math.sqrt(e * e + eps * eps) - eps, input, target)


def wing(input, target, w: float, eps: float) -> np.ndarray:
    """Feng et al. 2018, eq. (5)."""
    c = w - w * math.log(1 + w / eps)
    return _elementwise(lambda e: w * math.log(1 + abs(e) / eps) if abs(e) < w else abs(e) - c, input, target)


def balanced_l1(input, target, alpha: float, gamma: float, beta: float) -> np.ndarray:
    """Pang et al. 2019, eq. (8), with the threshold ``beta`` as in MMDetection."""
    b = math.exp(gamma / alpha) - 1

    def fn(e: float) -> float:
        a = abs(e)
        if a < beta:
            return alpha / b * (b * a + 1) * math.log(b * a / beta + 1) - alpha * a
        return gamma * a + gamma / b - alpha * beta

    return _elementwise(fn, input, target)


def barron_rho(x: float, alpha: float, c: float) -> float:
    """Barron 2019, eq. (1), with the limits of eq. (3)-(7) at alpha = 2, 0, -inf, +inf."""
    z = (x / c) ** 2
    if alpha == 2:
        return 0.5 * z
    if alpha == 0:
        return math.log(0.5 * z + 1)
    if alpha == -math.inf:
        return 1 - math.exp(-0.5 * z)
    if alpha == math.inf:
        return math.exp(0.5 * z) - 1
    d = abs(alpha - 2)
    return d / alpha * ((z / d + 1) ** (alpha / 2) - 1)


def general_robust(input, target, alpha: float, scale: float) -> np.ndarray:
    return _elementwise(lambda e: barron_rho(e, alpha, scale), input, target)


def barron_log_partition(alpha: float) -> float:
    """log of the integral of exp(-rho(x, alpha, 1)) over the real line.

    The substitution x = sinh(u) makes the integrand decay at least like exp(-|u|) (the
    Cauchy-like tail at alpha = 0), and the trapezoid rule on an analytic, decaying integrand
    converges geometrically; |u| <= 42 leaves out less than 1e-17.
    """
    u = np.arange(-42.0, 42.0 + 1e-12, 0.002)
    x = np.sinh(u)
    z = x**2
    if alpha == 2:
        rho = 0.5 * z
    elif alpha == 0:
        rho = np.log1p(0.5 * z)
    else:
        d = abs(alpha - 2)
        rho = d / alpha * ((z / d + 1) ** (alpha / 2) - 1)
    return math.log(np.sum(np.exp(-rho) * np.cosh(u)) * 0.002)
