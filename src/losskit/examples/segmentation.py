"""Contract-suite specs for the region (overlap) segmentation losses.

Small 2-D cases: logits ``(n, 3, 4, 5)`` with index targets, ``n`` may be 0. The natural unit is
one value per (sample, class), ``(n, 3)`` (``(n, 2)`` without the background); generalized Dice,
generalized Wasserstein Dice and the compound losses are per sample, ``(n,)``. Weights are random per unit.
"""

from __future__ import annotations

import torch

from losskit.examples.base import NOT_BOXES, Case, Regime, Spec, dense_index_case, dense_regimes, uniform

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


def _focal_regimes(**kwargs) -> dict[str, Regime]:
    """:func:`dense_regimes` with a near-converged case for a sigmoid focal half: every logit 12 to 16
    from 0 on the right side (the labelled channel's positive, the others negative), so each
    channel's sigmoid is confident too, not only the softmax."""

    def near_converged(gen: torch.Generator) -> Case:
        target = torch.randint(C, (2, *SPATIAL), generator=gen)
        size = uniform((2, C, *SPATIAL), 12.0, 16.0, gen)
        labelled = torch.nn.functional.one_hot(target, C).movedim(-1, 1).bool()
        return Case(torch.where(labelled, size, -size), target, dict(kwargs))

    return {**dense_regimes(C, SPATIAL, 1.5, **kwargs), "near_converged": Regime(near_converged)}


def _compound_focal(**kwargs) -> Spec:
    return Spec(make=_case(**kwargs), unit_shape=_per_sample_shape, weight=_unit_weight(_per_sample_shape),
                regimes=_focal_regimes(**kwargs), not_applicable=NOT_BOXES)


# class 0 (background) at distance 1 from both others, classes 1 and 2 at 0.5 (Fidon et al.'s example)
DISTANCES = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]], dtype=torch.float64)


def _unified_focal_regimes(**kwargs) -> dict[str, Regime]:
    """:func:`dense_regimes` with a near-converged case whose labelled logit leads by 20 to 24: the
    foreground Tversky terms are square roots (``gamma=0.5``) of errors of about ``exp(-lead)``, so a
    lead of 12 leaves a loss above 1e-3."""

    def near_converged(gen: torch.Generator) -> Case:
        target = torch.randint(C, (2, *SPATIAL), generator=gen)
        logits = 0.5 * torch.randn((2, C, *SPATIAL), generator=gen, dtype=torch.float64)
        lead = uniform((2, 1, *SPATIAL), 20.0, 24.0, gen)
        return Case(logits.scatter_add(1, target.unsqueeze(1), lead), target, dict(kwargs))

    return {**dense_regimes(C, SPATIAL, 1.5, **kwargs), "near_converged": Regime(near_converged)}


SPECS: dict[str, Spec] = {
    "dice": _per_class(),
    "jaccard": _per_class(include_background=False),
    "tversky": _per_class(alpha=0.3, beta=0.7),
    "focal_tversky": _per_class(gamma=4 / 3),
    "generalized_dice": _per_sample(weight_type="square"),
    "mcc": _per_class(),
    "dice_ce": _per_sample(lambda_dice=1.0, lambda_ce=0.5),
    "dice_focal": _compound_focal(lambda_dice=1.0, lambda_focal=0.5, gamma=2.0),
    "generalized_dice_focal": _compound_focal(weight_type="square", alpha=0.25),
    "generalized_wasserstein_dice": _per_sample(dist_matrix=DISTANCES),
    "asymmetric_unified_focal": Spec(make=_case(), unit_shape=_per_sample_shape,
                                     weight=_unit_weight(_per_sample_shape), regimes=_unified_focal_regimes(),
                                     not_applicable=NOT_BOXES),
}
