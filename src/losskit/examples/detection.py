"""Contract-suite specs for the dense-detection losses, and their accuracy regimes."""

from __future__ import annotations

import torch

from losskit.examples import probes
from losskit.examples.base import Case, Regime, Spec, elementwise_weight, large, same_shape, typical, uniform
from losskit.examples.classification import NOT_BOXES, binary_regimes, softmax_regimes
from losskit.examples.regression import NO_CLASSES, _residual_case
from losskit.examples.regression import _regimes as _residual_regimes

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


def _dfl_regimes() -> dict[str, Regime]:
    """Saturated logits over the bins; whole-bin distances with the logit of their bin 12 to 16
    ahead (the loss is then plain cross-entropy near 0); 1e6 logits."""

    def saturated(gen: torch.Generator) -> Case:
        case = _distance_case(256, gen)
        return Case(uniform(tuple(case.input.shape), -30.0, 30.0, gen), case.target)

    def near_converged(gen: torch.Generator) -> Case:
        bins = torch.randint(BINS - 1, (256, SIDES), generator=gen)  # the last bin is clamped away
        logits = 0.5 * torch.randn((256, SIDES, BINS), generator=gen, dtype=torch.float64)
        lead = uniform((256, SIDES, 1), 12.0, 16.0, gen)
        return Case(logits.scatter_add(-1, bins.unsqueeze(-1), lead), bins.double())

    return {"typical": typical(_distance_case), "saturated": Regime(saturated),
            "near_converged": Regime(near_converged), "large": large(lambda gen: _distance_case(31_250, gen))}


def _heatmap_shape(n: int) -> tuple[int, ...]:
    return (n, 2, 4, 4)


SEESAW_COUNTS = (400.0, 120.0, 30.0, 8.0, 1.0)  # cumulative samples of the C = 5 softmax classes


def _seesaw_case(n: int, gen: torch.Generator) -> Case:
    """(N, 5) logits, class indices (N,), long-tailed cumulative counts."""
    counts = torch.tensor(SEESAW_COUNTS, dtype=torch.float64)
    return Case(_logits((n, 5), gen), torch.randint(5, (n,), generator=gen), {"class_counts": counts})


def _per_sample_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.rand(case.input.shape[:1], generator=gen, dtype=torch.float64) + 0.5
    return w, w


# Gradient statistics of C = 4 foreground classes (the logits add the background column): a head
# class in balance (ratio 0.75), then ever rarer classes whose negatives dominate.
EQLV2_POS_GRAD = (300.0, 40.0, 2.0, 0.3)
EQLV2_NEG_GRAD = (400.0, 300.0, 250.0, 240.0)


def _eqlv2_statistics() -> dict[str, torch.Tensor]:
    return {"pos_grad": torch.tensor(EQLV2_POS_GRAD, dtype=torch.float64),
            "neg_grad": torch.tensor(EQLV2_NEG_GRAD, dtype=torch.float64)}


def _eqlv2_case(n: int, gen: torch.Generator) -> Case:
    """(N, 5) logits (4 classes and the background last), class indices (N,) in [0, 4]."""
    return Case(_logits((n, 5), gen), torch.randint(5, (n,), generator=gen), _eqlv2_statistics())


def _eqlv2_regimes() -> dict[str, Regime]:
    """Saturated logits; every logit 9 to 14 on its target's side (sigmoid BCE over all columns near
    0); 1e6 logits; 1e5 confident background proposals and one of the rarest class."""

    def saturated(gen: torch.Generator) -> Case:
        return Case(uniform((512, 5), -30.0, 30.0, gen), torch.randint(5, (512,), generator=gen), _eqlv2_statistics())

    def near_converged(gen: torch.Generator) -> Case:
        labels = torch.randint(5, (512,), generator=gen)
        sign = 2 * torch.nn.functional.one_hot(labels, 5).double() - 1
        return Case(sign * uniform((512, 5), 9.0, 14.0, gen), labels, _eqlv2_statistics())

    def many(gen: torch.Generator) -> Case:
        return Case(_logits((200_000, 5), gen), torch.randint(5, (200_000,), generator=gen), _eqlv2_statistics())

    def imbalance(gen: torch.Generator) -> Case:
        labels = torch.full((100_000,), 4)
        labels[int(torch.randint(100_000, (), generator=gen))] = 3
        sign = 2 * torch.nn.functional.one_hot(labels, 5).double() - 1
        confident = sign * uniform((100_000, 5), 5.0, 9.0, gen)
        logits = torch.where(labels[:, None] == 3, _logits((100_000, 5), gen), confident)
        return Case(logits, labels, _eqlv2_statistics())

    return {"typical": typical(_eqlv2_case), "saturated": Regime(saturated), "near_converged": Regime(near_converged),
            "large": large(many), "imbalance": Regime(imbalance, reductions=("sum", "mean"))}


SPECS: dict[str, Spec] = {
    "varifocal": Spec(make=_quality_case, unit_shape=same_shape, weight=elementwise_weight,
                      regimes=binary_regimes(_quality_case, shape_of=lambda n: (n, A, C)), not_applicable=NOT_BOXES),
    "quality_focal": Spec(make=_quality_case, unit_shape=same_shape, weight=elementwise_weight,
                          regimes=binary_regimes(_quality_case, shape_of=lambda n: (n, A, C)),
                          not_applicable=NOT_BOXES),
    "distribution_focal": Spec(make=_distance_case, unit_shape=_per_distance, weight=_distance_weight,
                               probe=probes.TARGET_BIN,
                               regimes=_dfl_regimes(),
                               not_applicable={**NOT_BOXES, "imbalance": "the loss is taken at positive anchors "
                                               "only: there are no negatives to outnumber them"}),
    "gaussian_focal": Spec(make=_heatmap_case, unit_shape=same_shape, weight=elementwise_weight,
                           regimes=binary_regimes(_heatmap_case, shape_of=_heatmap_shape), not_applicable=NOT_BOXES),
    "ghmc": Spec(make=_quality_case, unit_shape=same_shape, weight=elementwise_weight,
                 regimes=binary_regimes(_quality_case, shape_of=lambda n: (n, A, C)), not_applicable=NOT_BOXES),
    "ghmr": Spec(make=_residual_case((0.0, 0.05), (0.1, 2.0)), unit_shape=same_shape, weight=elementwise_weight,
                 regimes=_residual_regimes(_residual_case, (0.0, 0.05), (0.1, 2.0)), not_applicable=NO_CLASSES,
                 probe=probes.RESIDUAL_SWEEP),
    "seesaw": Spec(make=_seesaw_case, unit_shape=lambda case: tuple(case.input.shape[:1]),
                   weight=_per_sample_weight,
                   regimes=softmax_regimes(_seesaw_case, class_counts=torch.tensor(SEESAW_COUNTS, dtype=torch.float64)),
                   not_applicable=NOT_BOXES, probe=probes.SOFTMAX_MARGIN.using(class_counts=[90.0, 10.0])),
    "eqlv2": Spec(make=_eqlv2_case, unit_shape=lambda case: tuple(case.input.shape[:1]), weight=_per_sample_weight,
                  regimes=_eqlv2_regimes(), not_applicable=NOT_BOXES,
                  probe=probes.SOFTMAX_MARGIN.using(pos_grad=[2.0], neg_grad=[10.0])),
}
