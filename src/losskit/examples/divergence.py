"""Contract-suite specs for the divergence losses, and their accuracy regimes."""

from __future__ import annotations

import torch
from torch import Tensor

from losskit.examples.base import Budget, Case, Regime, Spec, large, typical, uniform, without_class_dim

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


def _regimes(**options) -> dict[str, Regime]:
    """Saturated logits and targets (probabilities down to 1e-26), a student within 1e-2 of its
    target in every logit, 1e6 logits, and one class of 1e5 holding all the target's mass."""

    def saturated(gen: torch.Generator) -> Case:
        logits = uniform((256, NUM_CLASSES), -30.0, 30.0, gen)
        return Case(logits, torch.softmax(uniform((256, NUM_CLASSES), -30.0, 30.0, gen), dim=1), dict(options))

    def near_converged(gen: torch.Generator) -> Case:
        logits = 2 * torch.randn(256, NUM_CLASSES, generator=gen, dtype=torch.float64)
        moved = logits + 1e-2 * torch.randn(256, NUM_CLASSES, generator=gen, dtype=torch.float64)
        return Case(logits, torch.softmax(moved, dim=1), dict(options))

    def many(gen: torch.Generator) -> Case:
        return _make(200_000, gen, **options)

    def imbalance(gen: torch.Generator) -> Case:
        logits = 2 * torch.randn(4, 100_000, generator=gen, dtype=torch.float64)
        target = torch.zeros_like(logits)
        target[torch.arange(4), torch.randint(100_000, (4,), generator=gen)] = 1.0
        return Case(logits, target, dict(options))

    return {"typical": typical(lambda n, gen: _make(n, gen, **options)), "saturated": Regime(saturated),
            "near_converged": Regime(near_converged), "large": large(many),
            "imbalance": Regime(imbalance, reductions=("none", "sum"))}


NOT_BOXES = {"tiny_boxes": "not a box loss", "huge_boxes": "not a box loss"}

# The divergences are sums of non-negative terms p psi(log p - log m) (losskit.functional.divergence.
# kl_terms), exact but for the rounding of log p and log m themselves (6e-8 |log p| in float32).
CONVERGED = Budget(value=2e-4, why=(
    "near convergence the divergence is second order in delta = log p - log q (KL ~ sum p delta^2 / 2), "
    "so the float32 rounding of the two logs, 6e-8 |log p|, becomes a relative error of about "
    "2 x 6e-8 |log p| / |delta|: 1e-4 per sample at |delta| = 1e-2 (a KL of 5e-5; measured 8.5e-5)"))

SURE_TEACHER = Budget(grad=3e-4, why=(
    "with all the target's mass on one class of 1e5, every other class's gradient is "
    "q_k (c - sum_j q_j c_j), a difference second order in the target class's q (1e-5): float32 keeps "
    "it to about 1e-2 of itself, which is 1.3e-4 of the gradient's norm (measured)"))

SPECS: dict[str, Spec] = {
    "kl_div": Spec(make=_make, unit_shape=without_class_dim, weight=per_sample_weight, regimes=_regimes(),
                   not_applicable=NOT_BOXES, budgets={"near_converged": CONVERGED}),
    "js_div": Spec(
        make=lambda n, gen: _make(n, gen, beta=0.3),
        unit_shape=without_class_dim,
        weight=per_sample_weight,
        regimes=_regimes(beta=0.3),
        not_applicable=NOT_BOXES,
        budgets={"near_converged": CONVERGED, "imbalance": SURE_TEACHER},
    ),
}
