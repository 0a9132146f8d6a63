"""Contract-suite specs for the contrastive losses (see tests/specs.py).

Each case is a small batch of random float64 embeddings. For the label-driven losses every
anchor has a positive (and, for the triplet loss, a negative), so the plain mean of
``reduction="none"`` is the loss's mean and gradcheck exercises real terms: SupCon uses two views
per sample; the triplet case holds ``2n`` embeddings in ``n`` pairs of two classes each.
"""

from __future__ import annotations

import torch

from tests.specs import Case, Spec

DIM = 5


def _paired(n: int, gen: torch.Generator) -> Case:
    u = torch.randn((n, DIM), generator=gen, dtype=torch.float64)
    v = u + 0.5 * torch.randn((n, DIM), generator=gen, dtype=torch.float64)
    return Case(u, v, {"temperature": 0.5})


def _views(n: int, gen: torch.Generator) -> Case:
    z = torch.randn((n, 2, DIM), generator=gen, dtype=torch.float64)
    return Case(z, torch.arange(n) % 2, {"temperature": 0.5})


def _pairs_of_classes(n: int, gen: torch.Generator) -> Case:
    # 2n embeddings, labels 0 0 1 1 2 2 ...: every anchor has one positive and 2n - 2 negatives.
    x = torch.randn((2 * n, DIM), generator=gen, dtype=torch.float64)
    return Case(x, torch.arange(2 * n) // 2, {"margin": 2.0})


def _unit_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    shape = case.input.shape[:-1]
    w = torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5
    return w, w


def _leading(case: Case) -> tuple[int, ...]:
    return tuple(case.input.shape[:-1])


SPECS: dict[str, Spec] = {
    "info_nce": Spec(make=_paired, unit_shape=_leading, weight=_unit_weight),
    "supervised_contrastive": Spec(make=_views, unit_shape=_leading, weight=_unit_weight),
    # Batch-hard picks a max and a min: twice differentiable where no two candidates tie (random inputs).
    "triplet_margin": Spec(make=_pairs_of_classes, unit_shape=_leading, weight=_unit_weight),
}
