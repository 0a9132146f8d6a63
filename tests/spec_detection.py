"""Contract-suite specs for the dense-detection losses."""

from __future__ import annotations

import torch

from tests.specs import Case, Spec, elementwise_weight, same_shape

A, C = 3, 4  # anchors and classes per sample in the classification cases
SIDES, BINS = 4, 8  # box sides and bins per side in the DFL case


def _logits(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64) * 2


def _quality_case(n: int, gen: torch.Generator) -> Case:
    """(N, A, C) logits; IoU-like targets in [0.05, 0.95] on about a third of the entries, else 0."""
    logits = _logits((n, A, C), gen)
    positive = torch.rand((n, A, C), generator=gen) < 0.35
    score = torch.rand((n, A, C), generator=gen, dtype=torch.float64) * 0.9 + 0.05
    return Case(logits, torch.where(positive, score, torch.zeros_like(score)))


def _distance_case(n: int, gen: torch.Generator) -> Case:
    """(N, 4, 8) logits; distances in bin units with fractional parts in [0.1, 0.9] (no integer kinks)."""
    whole = torch.randint(BINS - 1, (n, SIDES), generator=gen).double()
    frac = torch.rand((n, SIDES), generator=gen, dtype=torch.float64) * 0.8 + 0.1
    return Case(_logits((n, SIDES, BINS), gen), whole + frac)


def _heatmap_case(n: int, gen: torch.Generator) -> Case:
    """(N, 2, 4, 4) logits; a heatmap in [0, 0.9] with a few exact peaks of 1."""
    heat = torch.rand((n, 2, 4, 4), generator=gen, dtype=torch.float64) ** 2 * 0.9
    peaks = torch.rand((n, 2, 4, 4), generator=gen) < 0.1
    return Case(_logits((n, 2, 4, 4), gen), torch.where(peaks, torch.ones_like(heat), heat))


def _per_distance(case: Case) -> tuple[int, ...]:
    return tuple(case.input.shape[:-1])


def _distance_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.rand(_per_distance(case), generator=gen, dtype=torch.float64) + 0.5
    return w, w


SPECS: dict[str, Spec] = {
    "varifocal": Spec(make=_quality_case, unit_shape=same_shape, weight=elementwise_weight),
    "quality_focal": Spec(make=_quality_case, unit_shape=same_shape, weight=elementwise_weight),
    "distribution_focal": Spec(make=_distance_case, unit_shape=_per_distance, weight=_distance_weight),
    "gaussian_focal": Spec(make=_heatmap_case, unit_shape=same_shape, weight=elementwise_weight),
}
