"""Accuracy regimes of the fused log-probabilities and the objectives built on them (not in the
registry: they take hidden states, a head and token targets; see losskit/examples/large_vocab.py).

``fused_linear_log_probs`` is checked in every regime through the negative log-likelihood it
gives (its sum or mean over the counted tokens). The objectives apply the unfused losses, whose
own regimes live in losskit/examples/rl.py, to those log-probabilities; here they are checked on
typical and saturated heads. As in losskit/examples/large_vocab.py, most regimes use the identity
head (``D = V``): the hidden states are the logits.
"""

from __future__ import annotations

import functools

import torch

from losskit.examples.base import NOT_BOXES, Budget, Case, Regime, Spec, typical, uniform
from losskit.examples.large_vocab import HEAD_IN_HALF, V, _eye, _logits, _random_head
from losskit.functional import fused_policy, fused_preference

L = 8  # tokens per sequence of the objectives' cases
PROMPT = 2  # the first tokens of each sequence are the prompt (ignore_index)


# --- the primitive, as the negative log-likelihood of the counted tokens ------------------------


def _nll(input, target, *, head, reduction, **options):
    nll = -fused_policy.fused_linear_log_probs(input, head, target, **options)
    if reduction == "none":
        return nll
    total = nll.sum()
    return total if reduction == "sum" else total / (target != -100).sum().clamp_min(1)


def _tokens_case(logits: torch.Tensor, target: torch.Tensor, **options) -> Case:
    return Case(logits, target, {"head": _eye(), **options})


def _tokens_typical(n: int, gen: torch.Generator) -> Case:
    target = torch.randint(V, (n,), generator=gen)
    target[::5] = -100
    return _tokens_case(2 * torch.randn((n, V), generator=gen, dtype=torch.float64), target, temperature=0.8)


def _tokens_regimes() -> dict[str, Regime]:
    def saturated(gen: torch.Generator) -> Case:
        return _tokens_case(uniform((256, V), -30.0, 30.0, gen), torch.randint(V, (256,), generator=gen))

    def near_converged(gen: torch.Generator) -> Case:
        """The target's logit 12 to 16 ahead: log p between -1e-4 and -1e-6."""
        target = torch.randint(V, (256,), generator=gen)
        logits = 0.5 * torch.randn((256, V), generator=gen, dtype=torch.float64)
        return _tokens_case(logits.scatter_add(1, target[:, None], uniform((256, 1), 12.0, 16.0, gen)), target)

    def many(gen: torch.Generator) -> Case:
        hidden, head = _random_head(2048, 64, 512, gen)
        return Case(hidden, torch.randint(512, (2048,), generator=gen), {"head": head})

    def imbalance(gen: torch.Generator) -> Case:
        hidden, head = _random_head(10, 16, 100_000, gen)
        return Case(hidden, torch.randint(100_000, (10,), generator=gen), {"head": head})

    return {"typical": typical(_tokens_typical), "saturated": Regime(saturated),
            "near_converged": Regime(near_converged), "large": Regime(many, reductions=("mean",), logits=_logits),
            "imbalance": Regime(imbalance, reductions=("none", "sum"), logits=_logits)}


# --- the objectives: B sequences of L tokens, their hidden states the logits ---------------------


def _sequences(n: int, gen: torch.Generator, logits: torch.Tensor | None = None, **options) -> Case:
    """``n`` sequences (an even number for the pairwise objectives: chosen, then rejected)."""
    if logits is None:
        logits = 2 * torch.randn((n, L, V), generator=gen, dtype=torch.float64)
    target = torch.randint(V, (n, L), generator=gen)
    target[:, :PROMPT] = -100
    return Case(logits, target, {"head": _eye(), **options})


def _ref(n: int, gen: torch.Generator) -> torch.Tensor:
    return -uniform((n,), 5.0, 40.0, gen)


def _make(objective: str):
    def make(n: int, gen: torch.Generator, logits: torch.Tensor | None = None) -> Case:
        n = 2 * max(n // 2, 1)
        if objective in ("dpo", "kto"):
            options = {"ref_log_probs": _ref(n, gen)}
            if objective == "kto":
                options["desirable"] = (torch.arange(n) % 3 == 0).tolist()
        elif objective == "grpo":
            options = {"rewards": torch.randn(n, generator=gen, dtype=torch.float64), "group_size": 2,
                       "old_log_probs": -uniform((n, L), 0.05, 6.0, gen), "aggregation": "sequence_mean",
                       "temperature": 0.9}
        elif objective == "ppo":
            options = {"advantages": torch.randn(n, generator=gen, dtype=torch.float64),
                       "old_log_probs": -uniform((n, L), 0.05, 6.0, gen)}
        else:
            options = {}
        return _sequences(n, gen, logits, **options)

    return make


def _objective(function):
    def call(input, target, *, head, **options):
        return function(input, head, target, **options)

    return call


def _objective_regimes(make) -> dict[str, Regime]:
    def saturated(gen: torch.Generator) -> Case:
        return make(16, gen, uniform((16, L, V), -30.0, 30.0, gen))

    return {"typical": typical(make, n=16), "saturated": Regime(saturated)}


_HEAD_REGIMES = ("the head's regimes (near-converged tokens, 1e6 logits, one correct token in 1e5) are "
                 "fused_linear_log_probs's; the objective on the log-probabilities is the unfused loss's, "
                 "with its own regimes in losskit/examples/rl.py")
_NOT_OBJECTIVE = {**NOT_BOXES, "near_converged": _HEAD_REGIMES, "large": _HEAD_REGIMES, "imbalance": _HEAD_REGIMES}

_PAIRED = {"dpo": fused_preference.fused_linear_dpo_loss, "simpo": fused_preference.fused_linear_simpo_loss,
           "orpo": fused_preference.fused_linear_orpo_loss, "cpo": fused_preference.fused_linear_cpo_loss}
_PER_SEQUENCE = {"kto": fused_preference.fused_linear_kto_loss, "grpo": fused_policy.fused_linear_grpo_loss}


# Measured 1.2e-4 to 1.3e-3 over seeds 0 to 2 (float32): the unfused kto_loss's own precision, not the head's.
_KTO_SATURATED = Budget(grad=5e-3, half=HEAD_IN_HALF.half, why=(
    "saturated heads give sequence log-probabilities of -100 to -300, so KTO's beta * (reward - z0) reaches "
    "+-10 and beyond; on the flat side of its sigmoid torch.sigmoid's backward forms s (1 - s) from the "
    "rounded s (s = 0.99995 at 10: 1 - s = 4.5e-5 known to 6e-8, 1.3e-3 relative). losskit.kto_loss on the "
    "same float32 log-probabilities has the same error; losskit/examples/rl.py's saturated regime keeps "
    "beta * reward within 3, where it does not show"))


def _objective_spec(name: str, function) -> Spec:
    make = _make(name)
    if name in _PAIRED:
        unit = lambda case: (case.input.shape[0] // 2,)  # noqa: E731 - one loss per pair
    elif name in _PER_SEQUENCE:
        unit = lambda case: (case.input.shape[0],)  # noqa: E731
    else:
        unit = lambda case: tuple(case.target.shape)  # noqa: E731 - PPO's token mean: per token
    return Spec(make=make, unit_shape=unit, function=_objective(function), regimes=_objective_regimes(make),
                not_applicable=_NOT_OBJECTIVE, budget=HEAD_IN_HALF,
                budgets={"saturated": _KTO_SATURATED} if name == "kto" else {})


FUSED: dict[str, Spec] = {
    "fused_linear_log_probs": Spec(make=_tokens_typical, unit_shape=lambda case: tuple(case.target.shape),
                                   function=_nll, regimes=_tokens_regimes(), not_applicable=NOT_BOXES,
                                   budget=HEAD_IN_HALF),
    **{f"fused_linear_{name}_loss": _objective_spec(name, function)
       for name, function in {**_PAIRED, **_PER_SEQUENCE, "ppo": fused_policy.fused_linear_ppo_loss}.items()},
}

# TRL's other loss types, through the fused forms (the unfused functions' own checks are in
# tests/test_dpo_variants.py and tests/test_grpo_variants.py).
_VARIANTS = {
    "dpo[mpo]": ("dpo", {"variant": ["sigmoid_norm", "apo_down", "discopop"], "variant_weights": [1.0, 0.5, 0.5]}),
    "dpo[sppo_hard+nca_pair+bco_pair]": ("dpo", {"variant": ["sppo_hard", "nca_pair", "bco_pair"]}),
    "dpo[aot]": ("dpo", {"variant": "aot"}),
    "dpo[robust,js_divergence]": ("dpo", {"variant": "robust", "label_smoothing": 0.1,
                                          "f_divergence_type": "js_divergence"}),
    "kto[apo_zero_unpaired]": ("kto", {"variant": "apo_zero_unpaired"}),
    "cpo[ipo]": ("cpo", {"variant": "ipo"}),
    "cpo[alphapo]": ("cpo", {"variant": "alphapo", "alphapo_alpha": 0.25}),
    "grpo[cispo]": ("grpo", {"variant": "cispo", "clip_eps_high": 4.0}),
    "grpo[sapo,delta]": ("grpo", {"variant": "sapo", "delta": 1.5}),
}


# Measured 3.6e-5 (float32, seed 0).
_ALPHAPO_SATURATED = Budget(value=2e-4, half=HEAD_IN_HALF.half, why=(
    "AlphaPO's reward (1 - e^(-a l)) / a has relative condition number about a |l| e^(-a l) / |1 - e^(-a l)| "
    "in the average log-probability l: saturated heads give l near -30, a = 0.25, so the float32 rounding "
    "of l (3e-6 absolute) is amplified about 7.5 times, then again by the difference of two such rewards"))


def _variant_spec(objective: str, options: dict) -> Spec:
    functions = {**_PAIRED, **_PER_SEQUENCE}
    spec = _objective_spec(objective, functools.partial(functions[objective], **options))
    if options.get("alphapo_alpha"):
        spec.budgets = {"saturated": _ALPHAPO_SATURATED}
    return spec


FUSED.update({f"fused_linear_{objective}_loss{key[key.index('['):]}": _variant_spec(objective, options)
              for key, (objective, options) in _VARIANTS.items()})
