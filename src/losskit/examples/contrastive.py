"""Contract-suite specs for the contrastive losses (see losskit/examples/base.py).

Each case is a small batch of random float64 embeddings. For the label-driven losses every
anchor has a positive (and, for the triplet loss, a negative), so the plain mean of
``reduction="none"`` is the loss's mean and gradcheck exercises real terms: SupCon uses two views
per sample; the triplet case holds ``2n`` embeddings in ``n`` pairs of two classes each.
"""

from __future__ import annotations

import torch

from losskit.examples import probes
from losskit.examples.base import NOT_BOXES, Case, Regime, Spec, large, typical

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


# --- accuracy regimes ---------------------------------------------------------------------------
# A temperature of 1/30 on random unit embeddings gives logits of up to 30 of either sign.
# Embeddings near the basis vectors (sample i near e_i) make every positive similarity about 1 and
# every negative one about 0: at a temperature of 1/20 the loss is near 0. The large regime has
# 1000 anchors of dimension 1000 (1e6 embedding entries and similarities).


def _near_basis(rows: int, gen: torch.Generator, columns: int | None = None) -> torch.Tensor:
    basis = torch.eye(rows, columns or rows, dtype=torch.float64)
    return basis + 0.02 * torch.randn(basis.shape, generator=gen, dtype=torch.float64)


def _paired_at(temperature: float):
    """Random pairs at a low temperature: similarities of either sign, logits up to 30."""

    def make(n: int, gen: torch.Generator) -> Case:
        case = _paired(n, gen)
        case.kwargs["temperature"] = temperature
        return case

    return make


def _views_at(temperature: float):
    def make(n: int, gen: torch.Generator) -> Case:
        case = _views(n, gen)
        case.kwargs["temperature"] = temperature
        return case

    return make


def _paired_near_basis(temperature: float):
    def make(n: int, gen: torch.Generator) -> Case:
        return Case(_near_basis(n, gen), _near_basis(n, gen), {"temperature": temperature})

    return make


def _views_near_basis(temperature: float):
    def make(n: int, gen: torch.Generator) -> Case:
        z = torch.stack([_near_basis(n, gen), _near_basis(n, gen)], 1)
        return Case(z, torch.arange(n), {"temperature": temperature})

    return make


def _classes_near_basis(soft: bool):
    """2n embeddings, class k near 30 e_k: same-class distances about 0.4, others about 42."""

    def make(n: int, gen: torch.Generator) -> Case:
        x = 30 * torch.eye(n, dtype=torch.float64).repeat_interleave(2, 0)
        x = x + 0.2 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        return Case(x, torch.arange(2 * n) // 2, {"margin": 2.0, "soft": soft} if soft else {"margin": 2.0})

    return make


NO_IMBALANCE = {**NOT_BOXES, "imbalance": "every anchor has its own positives among the batch's negatives; "
                "the large regime puts 1 positive among 1000 candidates"}


def _similarities(case: Case) -> torch.Tensor:
    """The logits of a contrastive case: cosine similarities over the temperature."""
    z = torch.nn.functional.normalize(case.input.reshape(-1, case.input.shape[-1]), dim=-1)
    other = z if case.target.dtype == torch.long else torch.nn.functional.normalize(case.target, dim=-1)
    return z @ other.T / case.kwargs["temperature"]


def _regimes(make, saturated, near_converged, n_large: int = 1000, logits=_similarities) -> dict[str, Regime]:
    return {"typical": typical(make, n=16), "saturated": typical(saturated, n=64, logits=logits),
            "near_converged": typical(near_converged, n=64), "large": large(lambda gen: make(n_large, gen))}


def _large_paired(n: int, gen: torch.Generator) -> Case:
    u = torch.randn((n, n), generator=gen, dtype=torch.float64)
    return Case(u, u + 0.5 * torch.randn((n, n), generator=gen, dtype=torch.float64), {"temperature": 0.5})


SPECS: dict[str, Spec] = {
    "info_nce": Spec(make=_paired, unit_shape=_leading, weight=_unit_weight, not_applicable=NO_IMBALANCE,
                     probe=probes.PAIRS,
                     regimes=_regimes(_paired, _paired_at(1 / 30), _paired_near_basis(1 / 20))
                     | {"large": large(lambda gen: _large_paired(1000, gen))}),
    "supervised_contrastive": Spec(make=_views, unit_shape=_leading, weight=_unit_weight,
                                   not_applicable=NO_IMBALANCE,
                                   regimes=_regimes(_views, _views_at(1 / 30), _views_near_basis(1 / 20))
                                   | {"large": large(lambda gen: Case(
                                       torch.randn((500, 2, 1000), generator=gen, dtype=torch.float64),
                                       torch.arange(500) % 7, {"temperature": 0.5}))}),
    # Batch-hard picks a max and a min: twice differentiable where no two candidates tie (random inputs).
    # Near convergence the hinge is 0 exactly; the soft margin, softplus, is small there instead.
    "triplet_margin": Spec(make=_pairs_of_classes, unit_shape=_leading, weight=_unit_weight,
                           not_applicable=NO_IMBALANCE,
                           regimes=_regimes(_pairs_of_classes, _classes_near_basis(False), _classes_near_basis(True),
                                            logits=None)
                           | {"large": large(lambda gen: Case(
                               torch.randn((1000, 1000), generator=gen, dtype=torch.float64),
                               torch.arange(1000) // 2, {"margin": 2.0}))}),
}
