"""Contract-suite specs for the divergence losses."""

from __future__ import annotations

import torch
from torch import Tensor

from tests.specs import Case, Spec, without_class_dim

NUM_CLASSES = 5


def _make(n: int, gen: torch.Generator, **kwargs) -> Case:
    """Logits (n, 5) and a target that is the softmax of other random logits (strictly positive)."""
    logits = torch.randn(n, NUM_CLASSES, generator=gen, dtype=torch.float64)
    target = torch.softmax(torch.randn(n, NUM_CLASSES, generator=gen, dtype=torch.float64), dim=1)
    return Case(logits, target, dict(kwargs))


def per_sample_weight(case: Case, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """A positive weight per sample (the natural unit); it is also the effective weight."""
    w = torch.rand(without_class_dim(case), generator=gen, dtype=torch.float64) + 0.5
    return w, w


SPECS: dict[str, Spec] = {
    "kl_div": Spec(make=_make, unit_shape=without_class_dim, weight=per_sample_weight),
    "js_div": Spec(
        make=lambda n, gen: _make(n, gen, beta=0.3),
        unit_shape=without_class_dim,
        weight=per_sample_weight,
    ),
}
