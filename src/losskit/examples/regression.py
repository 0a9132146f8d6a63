"""Contract-suite specs for the regression losses, and their accuracy regimes.

Residuals are drawn with ``|e|`` inside bands that avoid each loss's kinks (0 for L1 and the
quantile loss, ``delta``/``beta``/``width`` where the pieces meet), so gradcheck is meaningful.
The accuracy regimes draw them from other bands: 30 to 1e4 (large values), 1e-6 to 1e-4 (a
loss near 0), and the typical bands over 1e6 elements.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from losskit.examples import probes
from losskit.examples.base import Case, Regime, Spec, elementwise_weight, large, same_shape, typical

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


def _quantile_case(*bands: tuple[float, float]) -> Callable[[int, torch.Generator], Case]:
    def make(n: int, gen: torch.Generator) -> Case:
        quantiles = (0.1, 0.5, 0.9)
        target = torch.randn((n, FEATURES), generator=gen, dtype=torch.float64)
        residual = _residual_case(*bands)(n * len(quantiles), gen)
        size = (residual.input - residual.target).view(n, len(quantiles), FEATURES).transpose(1, 2)
        return Case(target.unsqueeze(-1) + size, target, {"quantiles": quantiles})

    return make


def _robust_case(*bands: tuple[float, float]) -> Callable[[int, torch.Generator], Case]:
    # One alpha and one scale per feature, covering the Welsch-like, Cauchy-like and super-quadratic
    # sides of the family; none sits on the closed-form values 0 and 2.
    def make(n: int, gen: torch.Generator) -> Case:
        alpha = torch.tensor([-1.5, 0.7, 3.0], dtype=torch.float64)
        scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
        case = _residual_case(*bands)(n, gen)
        case.kwargs = {"alpha": alpha, "scale": scale}
        return case

    return make


def _gaussian_case(*bands: tuple[float, float]) -> Callable[[int, torch.Generator], Case]:
    def make(n: int, gen: torch.Generator) -> Case:
        case = _residual_case(*bands)(n, gen)
        case.kwargs = {"var": _uniform((n, FEATURES), gen, 0.2, 2.0)}
        return case

    return make


def _poisson_case(n: int, gen: torch.Generator) -> Case:
    log_rate = torch.randn((n, FEATURES), generator=gen, dtype=torch.float64)
    counts = torch.poisson(torch.full((n, FEATURES), 2.0, dtype=torch.float64), generator=gen)
    return Case(log_rate, counts, {"full": True})


# --- accuracy regimes ---------------------------------------------------------------------------

NO_CLASSES = {"imbalance": "a regression target has no positives to be outnumbered",
              "tiny_boxes": "not a box loss", "huge_boxes": "not a box loss"}


def _regimes(case_for: Callable[..., Callable[[int, torch.Generator], Case]],
             *bands: tuple[float, float], **options) -> dict[str, Regime]:
    """``case_for(*bands, **options)`` is the family's ``make``; the regimes change the bands."""
    typical_make = case_for(*bands, **options)
    return {"typical": typical(typical_make),
            "saturated": typical(case_for((30.0, 1e4), **options), n=128),
            "near_converged": typical(case_for((1e-6, 1e-4), **options), n=128),
            "large": large(lambda gen: typical_make(333_334, gen))}


def _poisson_regimes() -> dict[str, Regime]:
    """Log-rates: up to 30 (rates of 1e13), a rate of 1e-5 to 3e-4 where no event happened (the
    loss is the rate), and 1e6 typical elements."""

    def saturated(gen: torch.Generator) -> Case:
        log_rate = _uniform((128, FEATURES), gen, -30.0, 30.0)
        return Case(log_rate, torch.poisson(log_rate.clamp(max=8.0).exp(), generator=gen), {"full": True})

    def near_converged(gen: torch.Generator) -> Case:
        return Case(_uniform((128, FEATURES), gen, -11.5, -8.0), torch.zeros(128, FEATURES, dtype=torch.float64),
                    {"full": True})

    return {"typical": typical(_poisson_case), "saturated": Regime(saturated),
            "near_converged": Regime(near_converged), "large": large(lambda gen: _poisson_case(333_334, gen))}


def _spec(case_for, *bands: tuple[float, float], **options) -> Spec:
    return Spec(make=case_for(*bands, **options), unit_shape=same_shape, weight=elementwise_weight,
                regimes=_regimes(case_for, *bands, **options), not_applicable=NO_CLASSES)


SPECS: dict[str, Spec] = {
    "mse": _spec(_residual_case, (0.0, 2.0)),
    "l1": _spec(_residual_case, (0.05, 2.0)),
    "huber": _spec(_residual_case, (0.0, 0.4), (0.6, 2.0), delta=0.5),
    "smooth_l1": _spec(_residual_case, (0.0, 0.6), (0.9, 2.0), beta=0.75),
    "log_cosh": _spec(_residual_case, (0.0, 3.0)),
    "quantile": _spec(_quantile_case, (0.1, 2.0)),
    "charbonnier": _spec(_residual_case, (0.0, 2.0), eps=0.1),
    "wing": _spec(_residual_case, (0.05, 1.5), (2.5, 4.0), width=2.0, curvature=0.5),
    "balanced_l1": _spec(_residual_case, (0.05, 0.9), (1.1, 2.0)),
    "general_robust": Spec(make=_robust_case((0.05, 2.0)), unit_shape=same_shape, weight=elementwise_weight,
                           grad_kwargs=("alpha", "scale"), regimes=_regimes(_robust_case, (0.05, 2.0)),
                           not_applicable=NO_CLASSES),
    "gaussian_nll": Spec(make=_gaussian_case((0.0, 2.0)), unit_shape=same_shape, weight=elementwise_weight,
                         grad_kwargs=("var",), probe=probes.RESIDUAL_SWEEP.using(var=torch.ones(())),
                         regimes={k: v for k, v in _regimes(_gaussian_case, (0.0, 2.0)).items()
                                  if k != "near_converged"},
                         not_applicable={**NO_CLASSES, "near_converged": "the Gaussian NLL has no zero: its "
                                         "minimum over the mean, log(var) / 2, takes any sign"}),
    "poisson_nll": Spec(make=_poisson_case, unit_shape=same_shape, weight=elementwise_weight,
                        regimes=_poisson_regimes(), not_applicable=NO_CLASSES),
}
