"""Contract-suite specs for the regression losses.

Residuals are drawn with ``|e|`` inside bands that avoid each loss's kinks (0 for L1 and the
quantile loss, ``delta``/``beta``/``width`` where the pieces meet), so gradcheck is meaningful.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tests.specs import Case, Spec, elementwise_weight, same_shape

FEATURES = 3


def _uniform(shape: tuple[int, ...], gen: torch.Generator, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)


def _residual_case(*bands: tuple[float, float], **kwargs) -> Callable[[int, torch.Generator], Case]:
    """``make(n, gen)``: target ~ N(0, 1), input = target + e, ``|e|`` in one of ``bands``, random sign."""

    def make(n: int, gen: torch.Generator) -> Case:
        shape = (n, FEATURES)
        target = torch.randn(shape, generator=gen, dtype=torch.float64)
        band = torch.randint(len(bands), shape, generator=gen)
        low = torch.tensor([b[0] for b in bands], dtype=torch.float64)[band]
        high = torch.tensor([b[1] for b in bands], dtype=torch.float64)[band]
        size = low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)
        sign = torch.randint(2, shape, generator=gen).to(torch.float64) * 2 - 1
        return Case(target + sign * size, target, dict(kwargs))

    return make


def _quantile_case(n: int, gen: torch.Generator) -> Case:
    quantiles = (0.1, 0.5, 0.9)
    target = torch.randn((n, FEATURES), generator=gen, dtype=torch.float64)
    size = _uniform((n, FEATURES, len(quantiles)), gen, 0.1, 2.0)
    sign = torch.randint(2, size.shape, generator=gen).to(torch.float64) * 2 - 1
    return Case(target.unsqueeze(-1) + sign * size, target, {"quantiles": quantiles})


def _robust_case(n: int, gen: torch.Generator) -> Case:
    # One alpha and one scale per feature, covering the Welsch-like, Cauchy-like and super-quadratic
    # sides of the family; none sits on the closed-form values 0 and 2.
    alpha = torch.tensor([-1.5, 0.7, 3.0], dtype=torch.float64)
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    case = _residual_case((0.05, 2.0))(n, gen)
    case.kwargs = {"alpha": alpha, "scale": scale}
    return case


def _gaussian_case(n: int, gen: torch.Generator) -> Case:
    case = _residual_case((0.0, 2.0))(n, gen)
    case.kwargs = {"var": _uniform((n, FEATURES), gen, 0.2, 2.0)}
    return case


def _poisson_case(n: int, gen: torch.Generator) -> Case:
    log_rate = torch.randn((n, FEATURES), generator=gen, dtype=torch.float64)
    counts = torch.poisson(torch.full((n, FEATURES), 2.0, dtype=torch.float64), generator=gen)
    return Case(log_rate, counts, {"full": True})


def _spec(make: Callable[[int, torch.Generator], Case]) -> Spec:
    return Spec(make=make, unit_shape=same_shape, weight=elementwise_weight)


SPECS: dict[str, Spec] = {
    "mse": _spec(_residual_case((0.0, 2.0))),
    "l1": _spec(_residual_case((0.05, 2.0))),
    "huber": _spec(_residual_case((0.0, 0.4), (0.6, 2.0), delta=0.5)),
    "smooth_l1": _spec(_residual_case((0.0, 0.6), (0.9, 2.0), beta=0.75)),
    "log_cosh": _spec(_residual_case((0.0, 3.0))),
    "quantile": _spec(_quantile_case),
    "charbonnier": _spec(_residual_case((0.0, 2.0), eps=0.1)),
    "wing": _spec(_residual_case((0.05, 1.5), (2.5, 4.0), width=2.0, curvature=0.5)),
    "balanced_l1": _spec(_residual_case((0.05, 0.9), (1.1, 2.0))),
    "general_robust": Spec(make=_robust_case, unit_shape=same_shape, weight=elementwise_weight,
                           grad_kwargs=("alpha", "scale")),
    "gaussian_nll": Spec(make=_gaussian_case, unit_shape=same_shape, weight=elementwise_weight,
                         grad_kwargs=("var",)),
    "poisson_nll": _spec(_poisson_case),
}
