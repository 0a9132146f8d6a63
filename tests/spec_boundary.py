"""Contract-suite specs for the distance-map and skeleton losses (boundary, Hausdorff-DT, clDice)."""

from __future__ import annotations

import torch

from tests.specs import Case, Spec, dense_index_case

C = 3  # classes; include_background=False keeps C - 1 = 2 of them
SPATIAL = (6, 7)


def _case(**kwargs):
    return dense_index_case(C, SPATIAL, 2, **kwargs)


def _units(case: Case) -> tuple[int, ...]:
    return (case.input.shape[0], C - 1)


def _class_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One weight per kept class; every (sample, class) unit carries its class's weight."""
    w = torch.rand(C - 1, generator=gen, dtype=torch.float64) + 0.5
    return w, w.expand(case.input.shape[0], C - 1)


SPECS: dict[str, Spec] = {
    # Linear in the probabilities; the map is a constant of the target.
    "boundary": Spec(make=_case(), unit_shape=_units, weight=_class_weight),
    # The maps depend on p > 0.5 only (piecewise constant); random logits keep p away from 0.5.
    "hausdorff_dt": Spec(make=_case(alpha=2.0), unit_shape=_units, weight=_class_weight),
    # Max pooling and relu are piecewise linear. At random inputs no two pooled values tie, and where a
    # relu's argument is exactly 0 it is 0 on a whole neighbourhood, so the loss is smooth there.
    "cldice": Spec(make=_case(iterations=2), unit_shape=_units, weight=_class_weight),
}
