"""Contract-suite specs for the classification losses."""

from __future__ import annotations

import torch

from tests.specs import Case, Spec, class_weight, elementwise_weight, same_shape, without_class_dim

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


def _softmax_spec(make, **kwargs) -> Spec:
    return Spec(make=make, unit_shape=without_class_dim, weight=class_weight(C), **kwargs)


COUNTS = [50.0, 20.0, 10.0, 5.0, 1.0]

SPECS: dict[str, Spec] = {
    "cross_entropy": _softmax_spec(_index_case(label_smoothing=0.1, z_loss=1e-3)),
    "poly1_cross_entropy": _softmax_spec(_index_case(epsilon=1.0)),
    "softmax_focal": _softmax_spec(_index_case(gamma=2.0, alpha=[0.5, 1.0, 1.0, 2.0, 1.0])),
    "logit_adjusted_cross_entropy": _softmax_spec(_index_case(class_prior=COUNTS, tau=1.0)),
    "balanced_softmax": _softmax_spec(_index_case(class_counts=COUNTS)),
    "ldam": _softmax_spec(_index_case(class_counts=COUNTS, scale=5.0)),
    # The squared hinge is differentiable once; its second derivative jumps where the hinge opens.
    "multi_margin": _softmax_spec(_index_case(p=2, margin=0.5), gradgrad=False),
    "binary_cross_entropy": Spec(make=_smoothed_binary_case, unit_shape=same_shape, weight=elementwise_weight),
    "sigmoid_focal": Spec(make=_binary_case, unit_shape=same_shape, weight=elementwise_weight),
    # ASL's clip makes the negative term piecewise; at random logits no point sits on the clip.
    "asymmetric": Spec(make=_hard_binary_case, unit_shape=same_shape, weight=elementwise_weight, gradgrad=False),
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
