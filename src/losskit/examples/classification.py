"""Contract-suite specs for the classification losses, and their accuracy regimes."""

from __future__ import annotations

import math

import torch

from losskit.examples import probes
from losskit.examples.base import (
    Budget,
    Case,
    Regime,
    Spec,
    class_weight,
    elementwise_weight,
    large,
    same_shape,
    typical,
    uniform,
    without_class_dim,
)

C = 5  # classes in every softmax case


def _logits(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64) * 2


def _index_case(**kwargs):
    def make(n: int, gen: torch.Generator) -> Case:
        target = torch.randint(C, (n, 3), generator=gen)
        return Case(_logits((n, C, 3), gen), target, dict(kwargs))

    return make


def _soft_case(**kwargs):
    def make(n: int, gen: torch.Generator) -> Case:
        target = torch.softmax(_logits((n, C, 3), gen), dim=1)
        return Case(_logits((n, C, 3), gen), target, dict(kwargs))

    return make


def _binary_case(n: int, gen: torch.Generator) -> Case:
    # Soft targets exercise the general formulas; logits away from 0 where |x| kinks do not exist anyway.
    return Case(_logits((n, 4), gen), torch.rand((n, 4), generator=gen, dtype=torch.float64))


def _smoothed_binary_case(n: int, gen: torch.Generator) -> Case:
    case = _binary_case(n, gen)
    case.kwargs["label_smoothing"] = 0.1
    return case


def _hard_binary_case(n: int, gen: torch.Generator) -> Case:
    return Case(_logits((n, 4), gen), (torch.rand((n, 4), generator=gen) < 0.3).double())


# --- accuracy regimes ---------------------------------------------------------------------------

NOT_BOXES = {"tiny_boxes": "not a box loss", "huge_boxes": "not a box loss"}


def _rows_with_target_ahead(index: torch.Tensor, lead: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Logits ``(n, C)``: small noise, the target class ``lead`` ahead of the others."""
    logits = 0.5 * torch.randn((index.numel(), C), generator=gen, dtype=torch.float64)
    return logits.scatter_add(1, index.unsqueeze(1), lead.unsqueeze(1))


def _hinge_barely_open(gen: torch.Generator, margin: float, **options) -> Case:
    """Scores whose target leads every other class by the margin less 0.005 to 0.03: each hinge
    is barely open, so the (squared) hinge loss is small but not 0."""
    index = torch.randint(C, (512,), generator=gen)
    scores = -margin + uniform((512, C), 0.005, 0.03, gen)
    return Case(scores.scatter(1, index.unsqueeze(1), 0.0), index, {"margin": margin, **options})


def softmax_regimes(make, near_converged=None, lead: tuple[float, float] = (12.0, 16.0),
                    **options) -> dict[str, Regime]:
    """Index targets over C classes: saturated logits, a confident correct model (the target's
    logit ``lead`` ahead), 1e6 logits, and 1e5 samples of which one belongs to a rare class (the
    others confidently right)."""

    def saturated(gen: torch.Generator) -> Case:
        return Case(uniform((512, C), -30.0, 30.0, gen), torch.randint(C, (512,), generator=gen), dict(options))

    def confident(gen: torch.Generator) -> Case:
        index = torch.randint(C, (512,), generator=gen)
        return Case(_rows_with_target_ahead(index, uniform((512,), *lead, gen), gen), index, dict(options))

    def many(gen: torch.Generator) -> Case:
        return Case(2 * torch.randn((200_000, C), generator=gen, dtype=torch.float64),
                    torch.randint(C, (200_000,), generator=gen), dict(options))

    def imbalance(gen: torch.Generator) -> Case:
        index = torch.zeros(100_000, dtype=torch.long)
        index[int(torch.randint(100_000, (), generator=gen))] = C - 1
        logits = _rows_with_target_ahead(index, uniform((100_000,), 6.0, 10.0, gen), gen)
        logits[index == C - 1] = 2 * torch.randn((1, C), generator=gen, dtype=torch.float64)
        return Case(logits, index, dict(options))

    return {"typical": typical(make), "saturated": Regime(saturated),
            "near_converged": Regime(near_converged or confident), "large": large(many),
            "imbalance": Regime(imbalance, reductions=("sum", "mean"))}


def binary_regimes(make, shape_of=lambda n: (n, 4), **options) -> dict[str, Regime]:
    """Elementwise logits with 0/1 targets: saturated logits, every logit on its target's side by
    7 to 12, 1e6 logits with soft targets, and one positive among 1e5 easy negatives."""

    def saturated(gen: torch.Generator) -> Case:
        shape = shape_of(128)
        return Case(uniform(shape, -30.0, 30.0, gen), (torch.rand(shape, generator=gen) < 0.5).double(),
                    dict(options))

    def near_converged(gen: torch.Generator) -> Case:
        shape = shape_of(128)
        target = (torch.rand(shape, generator=gen) < 0.5).double()
        return Case((2 * target - 1) * uniform(shape, 7.0, 12.0, gen), target, dict(options))

    per_sample = math.prod(shape_of(1))

    def many(gen: torch.Generator) -> Case:
        shape = shape_of(-(-10**6 // per_sample))
        return Case(2 * torch.randn(shape, generator=gen, dtype=torch.float64),
                    torch.rand(shape, generator=gen, dtype=torch.float64), dict(options))

    def imbalance(gen: torch.Generator) -> Case:
        shape = shape_of(-(-10**5 // per_sample))
        target = torch.zeros(shape, dtype=torch.float64)
        target.view(-1)[int(torch.randint(target.numel(), (), generator=gen))] = 1.0
        logits = torch.where(target > 0, uniform(shape, -2.0, 2.0, gen), -uniform(shape, 5.0, 9.0, gen))
        return Case(logits, target, dict(options))

    return {"typical": typical(make), "saturated": Regime(saturated), "near_converged": Regime(near_converged),
            "large": large(many), "imbalance": Regime(imbalance, reductions=("sum", "mean"))}


def _softmax_spec(make, near_converged=None, regime_options=None, lead=(12.0, 16.0), **kwargs) -> Spec:
    """A softmax loss's spec; its regimes use the options of ``make`` unless ``regime_options``
    replaces them (label smoothing and z-loss keep a loss far from 0, so they have no
    near-converged regime; the typical one still runs them)."""
    options = make(0, torch.Generator()).kwargs if regime_options is None else regime_options
    return Spec(make=make, unit_shape=without_class_dim, weight=class_weight(C),
                regimes=softmax_regimes(make, near_converged, lead, **options), not_applicable=NOT_BOXES, **kwargs)


def _binary_spec(make, **options) -> Spec:
    return Spec(make=make, unit_shape=same_shape, weight=elementwise_weight,
                regimes=binary_regimes(make, **options), not_applicable=NOT_BOXES, probe=probes.BINARY_MARGIN)


COUNTS = [50.0, 20.0, 10.0, 5.0, 1.0]

SPECS: dict[str, Spec] = {
    "cross_entropy": _softmax_spec(_index_case(label_smoothing=0.1, z_loss=1e-3), regime_options={}),
    "poly1_cross_entropy": _softmax_spec(_index_case(epsilon=1.0)),
    "softmax_focal": _softmax_spec(_index_case(gamma=2.0, alpha=[0.5, 1.0, 1.0, 2.0, 1.0])),
    "logit_adjusted_cross_entropy": _softmax_spec(_index_case(class_prior=COUNTS, tau=1.0),
                                                  probe=probes.SOFTMAX_MARGIN.using(class_prior=[0.9, 0.1])),
    "balanced_softmax": _softmax_spec(_index_case(class_counts=COUNTS),
                                      probe=probes.SOFTMAX_MARGIN.using(class_counts=[90.0, 10.0])),
    # scale 5: a lead of 4 to 5 over margins of at most 0.5 (and noise of 0.5) gives logit gaps near 15.
    # On the probe, scale 1: the default of 30 would flatten every other curve of the figure.
    "ldam": _softmax_spec(_index_case(class_counts=COUNTS, scale=5.0), lead=(4.0, 5.0),
                          probe=probes.SOFTMAX_MARGIN.using(class_counts=[90.0, 10.0], scale=1.0)),
    # The squared hinge is differentiable once; its second derivative jumps where the hinge opens.
    "multi_margin": _softmax_spec(_index_case(p=2, margin=0.5), gradgrad=False,
                                  near_converged=lambda gen: _hinge_barely_open(gen, 0.5, p=2)),
    "binary_cross_entropy": _binary_spec(_smoothed_binary_case),
    "sigmoid_focal": _binary_spec(_binary_case),
    # ASL's clip makes the negative term piecewise; at random logits no point sits on the clip.
    "asymmetric": Spec(make=_hard_binary_case, unit_shape=same_shape, weight=elementwise_weight, gradgrad=False,
                       probe=probes.BINARY_MARGIN,
                       regimes=binary_regimes(_hard_binary_case), not_applicable=NOT_BOXES,
                       budget=Budget(value=1e-4, why=(
                           "a negative's term is (p - clip)^4 log(1 - p + clip): the shift conditions it by "
                           "4 p / (p - clip), so sigmoid's own rounding (6e-8) becomes 4e-5 where p is 2% above "
                           "the clip (measured 3.7e-5 in the typical regime); it grows without bound as p nears "
                           "the clip, where the term itself vanishes"))),
}


def _soft_effective_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class weights with probability targets: a sample's weight is sum_c w_c t_c."""
    w = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5
    return w, (case.target * w.view(1, C, 1)).sum(1)


def _soft_spec(**kwargs) -> Spec:
    return Spec(make=_soft_case(**kwargs), unit_shape=without_class_dim, weight=_soft_effective_weight)


# The same contract for probability targets, under distinct keys (they are not registry names).
SOFT_TARGET_SPECS: dict[str, Spec] = {
    "cross_entropy": _soft_spec(label_smoothing=0.1, z_loss=1e-3),
    "poly1_cross_entropy": _soft_spec(epsilon=1.0),
    "softmax_focal": _soft_spec(gamma=2.0),
    "balanced_softmax": _soft_spec(class_counts=COUNTS),
}
