"""Contract-suite specs for the large vocab losses (see losskit/examples/base.py), and the accuracy
regimes of the fused large-vocabulary losses, which are not in the registry.

The fused losses take hidden states and a head instead of logits. Most regimes use the identity
head (``D = V``, no bias), so the hidden states *are* the logits and each regime states them
directly; the large regimes use random heads of 2048 x 512 logits (and 10 tokens over a vocabulary
of 1e5, one correct token in 1e5). The contract differentiates the hidden states (for the
divergences, the student's).
"""

from __future__ import annotations

import torch

from losskit.examples.base import NOT_BOXES, Budget, Case, Regime, Spec, typical, uniform
from losskit.examples.divergence import CONVERGED, SURE_TEACHER
from losskit.functional import large_vocab

SPECS: dict[str, Spec] = {}

V = 12  # vocabulary of the identity-head regimes


def _cross_entropy(input, target, *, head, **options):
    return large_vocab.fused_linear_cross_entropy(input, head, target, **options)


def _kl(input, target, *, head, teacher_head, **options):
    return large_vocab.fused_linear_kl_div(input, head, target, teacher_head, **options)


def _js(input, target, *, head, teacher_head, **options):
    return large_vocab.fused_linear_js_div(input, head, target, teacher_head, **options)


def _logits(case: Case) -> torch.Tensor:
    """The student's logits (the regime claims are checked on them)."""
    return case.input @ case.kwargs["head"].T


def _eye() -> torch.Tensor:
    return torch.eye(V, dtype=torch.float64)


def _random_head(n: int, d: int, v: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = torch.randn((n, d), generator=gen, dtype=torch.float64)
    return hidden, torch.randn((v, d), generator=gen, dtype=torch.float64) * (2 / d**0.5)


# --- cross-entropy: the hidden states are the logits --------------------------------------------


def _ce_case(logits: torch.Tensor, target: torch.Tensor, **options) -> Case:
    return Case(logits, target, {"head": _eye(), **options})


def _ce_typical(n: int, gen: torch.Generator) -> Case:
    target = torch.randint(V, (n,), generator=gen)
    target[::5] = -100
    return _ce_case(2 * torch.randn((n, V), generator=gen, dtype=torch.float64), target, label_smoothing=0.1)


def _ce_regimes() -> dict[str, Regime]:
    def saturated(gen: torch.Generator) -> Case:
        return _ce_case(uniform((256, V), -30.0, 30.0, gen), torch.randint(V, (256,), generator=gen))

    def near_converged(gen: torch.Generator) -> Case:
        target = torch.randint(V, (256,), generator=gen)
        logits = 0.5 * torch.randn((256, V), generator=gen, dtype=torch.float64)
        return _ce_case(logits.scatter_add(1, target[:, None], uniform((256, 1), 12.0, 16.0, gen)), target)

    def many(gen: torch.Generator) -> Case:
        hidden, head = _random_head(2048, 64, 512, gen)
        return Case(hidden, torch.randint(512, (2048,), generator=gen), {"head": head})

    def imbalance(gen: torch.Generator) -> Case:
        hidden, head = _random_head(10, 16, 100_000, gen)
        return Case(hidden, torch.randint(100_000, (10,), generator=gen), {"head": head})

    return {"typical": typical(_ce_typical), "saturated": Regime(saturated), "near_converged": Regime(near_converged),
            "large": Regime(many, reductions=("mean",), logits=_logits),
            "imbalance": Regime(imbalance, reductions=("none", "sum"), logits=_logits)}


# --- divergences: the student's and the teacher's hidden states are their logits ----------------


def _pair(student: torch.Tensor, teacher: torch.Tensor, **options) -> Case:
    return Case(student, teacher, {"head": _eye(), "teacher_head": _eye(), **options})


def _divergence_regimes(**options) -> dict[str, Regime]:
    def typical_make(n: int, gen: torch.Generator) -> Case:
        return _pair(torch.randn((n, V), generator=gen, dtype=torch.float64),
                     torch.randn((n, V), generator=gen, dtype=torch.float64), **options)

    def saturated(gen: torch.Generator) -> Case:
        return _pair(uniform((256, V), -30.0, 30.0, gen), uniform((256, V), -30.0, 30.0, gen), **options)

    def near_converged(gen: torch.Generator) -> Case:
        teacher = 2 * torch.randn((256, V), generator=gen, dtype=torch.float64)
        return _pair(teacher + 1e-2 * torch.randn((256, V), generator=gen, dtype=torch.float64), teacher, **options)

    def many(gen: torch.Generator) -> Case:
        student, head = _random_head(2048, 64, 512, gen)
        teacher, teacher_head = _random_head(2048, 64, 512, gen)
        return Case(student, teacher, {"head": head, "teacher_head": teacher_head, **options})

    def imbalance(gen: torch.Generator) -> Case:
        """A teacher sure of one token of 1e5 (its logit 40 above the rest)."""
        student, head = _random_head(10, 16, 100_000, gen)
        teacher = torch.eye(10, 16, dtype=torch.float64) * 40.0
        teacher_head = torch.zeros((100_000, 16), dtype=torch.float64)
        teacher_head[torch.randperm(100_000, generator=gen)[:10], torch.arange(10)] = 1.0
        return Case(student, teacher, {"head": head, "teacher_head": teacher_head, **options})

    return {"typical": typical(typical_make), "saturated": Regime(saturated),
            "near_converged": Regime(near_converged), "large": Regime(many, reductions=("mean",), logits=_logits),
            "imbalance": Regime(imbalance, reductions=("none", "sum"), logits=_logits)}


# The fused losses run the head's matrix products in the inputs' dtype (as an autocast head does):
# in half precision every logit and every entry of the hidden state's gradient is a sum of D
# products rounded to that dtype, an error beyond the result's own rounding.
HEAD_IN_HALF = Budget(half=(1e-3, 5e-3), why=(
    "half precision runs the head's matrix products in the inputs' dtype: their rounding (bfloat16 "
    "2^-8 = 3.9e-3 per product sum) reaches the hidden state's gradient; measured 2.6e-3 (bfloat16) and "
    "1.9e-4 (float16) over 2048 x 512 logits"))


def _fused(function, make, regimes, **budgets) -> Spec:
    return Spec(make=make, unit_shape=lambda case: (case.input.shape[0],), function=function, regimes=regimes,
                not_applicable=NOT_BOXES, budget=HEAD_IN_HALF, budgets=budgets)


# Near convergence the divergences keep what their float32 logs allow (losskit/examples/divergence.py).
_CONVERGED = Budget(value=CONVERGED.value, half=HEAD_IN_HALF.half, why=CONVERGED.why)
_SURE_TEACHER = Budget(grad=SURE_TEACHER.grad, half=(1e-3, 2e-1), why=(
    SURE_TEACHER.why + "; in float16 the gradient of each of the 1e5 - 1 classes the teacher leaves out "
    "is about 1e-9, below float16's smallest subnormal (6e-8), and vanishes in the head's float16 "
    "product: 15% of the hidden state's gradient (measured). The loss computes that gradient in "
    "forward, before a loss scaler's factor is known, so scaling the loss does not bring it back"))


FUSED: dict[str, Spec] = {
    "fused_linear_cross_entropy": _fused(_cross_entropy, _ce_typical, _ce_regimes()),
    "fused_linear_kl_div": _fused(_kl, lambda n, gen: _divergence_regimes()["typical"].make(gen),
                                  _divergence_regimes(), near_converged=_CONVERGED),
    "fused_linear_js_div": _fused(_js, lambda n, gen: _divergence_regimes(beta=0.3)["typical"].make(gen),
                                  _divergence_regimes(beta=0.3), near_converged=_CONVERGED, imbalance=_SURE_TEACHER),
}
