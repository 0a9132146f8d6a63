"""Contract-suite specs for the region (overlap) segmentation losses.

Small 2-D cases: logits ``(n, 3, 4, 5)`` with index targets, ``n`` may be 0. The natural unit is
one value per (sample, class), ``(n, 3)`` (``(n, 2)`` without the background); generalized Dice
and Dice+CE are per sample, ``(n,)``. Weights are random per unit.
"""

from __future__ import annotations

import torch

from losskit.examples.base import NOT_BOXES, Case, Spec, dense_index_case, dense_regimes

C = 3
SPATIAL = (4, 5)


def _case(**kwargs):
    return dense_index_case(C, SPATIAL, 1.5, **kwargs)


def _per_class_shape(case: Case) -> tuple[int, ...]:
    kept = C if case.kwargs.get("include_background", True) else C - 1
    return (case.input.shape[0], kept)


def _per_sample_shape(case: Case) -> tuple[int, ...]:
    return (case.input.shape[0],)


def _unit_weight(shape_of):
    def make(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.rand(shape_of(case), generator=gen, dtype=torch.float64) + 0.5
        return w, w

    return make


def _per_class(**kwargs) -> Spec:
    return Spec(make=_case(**kwargs), unit_shape=_per_class_shape, weight=_unit_weight(_per_class_shape),
                regimes=dense_regimes(C, SPATIAL, 1.5, **kwargs), not_applicable=NOT_BOXES)


def _per_sample(**kwargs) -> Spec:
    return Spec(make=_case(**kwargs), unit_shape=_per_sample_shape, weight=_unit_weight(_per_sample_shape),
                regimes=dense_regimes(C, SPATIAL, 1.5, **kwargs), not_applicable=NOT_BOXES)


SPECS: dict[str, Spec] = {
    "dice": _per_class(),
    "jaccard": _per_class(include_background=False),
    "tversky": _per_class(alpha=0.3, beta=0.7),
    "focal_tversky": _per_class(gamma=4 / 3),
    "generalized_dice": _per_sample(weight_type="square"),
    "mcc": _per_class(),
    "dice_ce": _per_sample(lambda_dice=1.0, lambda_ce=0.5),
}
