"""Contract-suite specs for the distance-map and skeleton losses (boundary, Hausdorff-DT, clDice)."""

from __future__ import annotations

import torch

from losskit.examples.base import NOT_BOXES, Case, Spec, dense_index_case, dense_regimes

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


def _spec(signed: bool = False, **kwargs) -> Spec:
    regimes = dense_regimes(C, SPATIAL, 2, **kwargs)
    not_applicable = dict(NOT_BOXES)
    if signed:
        del regimes["near_converged"]
        not_applicable["near_converged"] = ("the signed distance map is negative inside the target, so the loss "
                                            "converges to a negative value, not to 0")
    return Spec(make=_case(**kwargs), unit_shape=_units, weight=_class_weight, regimes=regimes,
                not_applicable=not_applicable)


SPECS: dict[str, Spec] = {
    # Linear in the probabilities; the map is a constant of the target.
    "boundary": _spec(signed=True),
    # The maps depend on p > 0.5 only (piecewise constant); random logits keep p away from 0.5.
    "hausdorff_dt": _spec(alpha=2.0),
    # Max pooling and relu are piecewise linear. At random inputs no two pooled values tie, and where a
    # relu's argument is exactly 0 it is 0 on a whole neighbourhood, so the loss is smooth there.
    "cldice": _spec(iterations=2),
}
