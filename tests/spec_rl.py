"""Contract-suite specs for the rl and preference losses (see tests/specs.py).

Policy losses get log-probabilities of shape (n, 3) (three tokens per sequence), kept away from 0;
preference losses one log-probability per sequence. The options exercise the non-default paths
(clip-higher, dual clip, value clipping, sequence aggregations, label smoothing, a KL term).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tests.specs import Case, Spec, elementwise_weight

F64 = torch.float64
T = 3


def _log_probs(gen: torch.Generator, *shape: int, low: float = 0.2, high: float = 3.0) -> Tensor:
    """Log-probabilities uniform in [-high, -low]."""
    return -(low + (high - low) * torch.rand(*shape, generator=gen, dtype=F64))


def _f32(x: Tensor) -> Tensor:
    """Float64 values that float32 holds exactly: a tensor option stored in a module config is a
    list, rebuilt in the default dtype, and the round trip must give back the same values. (The
    losses detach these tensors, so they are options, not differentiated arguments.)"""
    return x.float().double()


def per_sequence_weight(case: Case, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    w = torch.rand(case.input.shape[0], generator=gen, dtype=F64) + 0.5
    return w, w


def per_sequence(case: Case) -> tuple[int, ...]:
    return (case.input.shape[0],)


def same_shape(case: Case) -> tuple[int, ...]:
    return tuple(case.input.shape)


def _reinforce(n: int, gen: torch.Generator) -> Case:
    lp = _log_probs(gen, n, T)
    returns = torch.randn(n, generator=gen, dtype=F64)  # one return per sequence
    return Case(lp, returns, {"baseline": 0.25})


def _ppo(n: int, gen: torch.Generator) -> Case:
    old = _log_probs(gen, n, T)
    lp = (old + 0.4 * torch.randn(n, T, generator=gen, dtype=F64)).clamp(max=-0.05)
    advantages = _f32(torch.randn(n, T, generator=gen, dtype=F64))
    return Case(lp, old, {"advantages": advantages, "clip_eps": 0.2, "clip_eps_high": 0.28, "dual_clip": 3.0})


def _value(n: int, gen: torch.Generator) -> Case:
    old = _f32(torch.randn(n, T, generator=gen, dtype=F64))
    values = old + 0.4 * torch.randn(n, T, generator=gen, dtype=F64)
    returns = torch.randn(n, T, generator=gen, dtype=F64)
    return Case(values, returns, {"old_values": old, "clip_eps": 0.2})


def _kl(n: int, gen: torch.Generator) -> Case:
    lp, ref = _log_probs(gen, n, T), _log_probs(gen, n, T)
    return Case(lp, ref, {"estimator": "k3", "aggregation": "sequence_mean"})


def _grpo(n: int, gen: torch.Generator) -> Case:
    old = _log_probs(gen, n, T)
    lp = (old + 0.3 * torch.randn(n, T, generator=gen, dtype=F64)).clamp(max=-0.05)
    ref = _f32(_log_probs(gen, n, T))
    rewards = _f32(torch.randn(n, generator=gen, dtype=F64))
    group_size = 2 if n % 2 == 0 else n  # the property suite asks for n = 3
    return Case(lp, old, {"rewards": rewards, "group_size": group_size, "ref_log_probs": ref, "beta": 0.04,
                          "clip_eps_high": 0.28, "aggregation": "sequence_sum_norm", "max_length": 4.0})


def _pairs(n: int, gen: torch.Generator, low: float, high: float, **kwargs) -> Case:
    return Case(_log_probs(gen, n, low=low, high=high), _log_probs(gen, n, low=low, high=high), dict(kwargs))


def _dpo(n: int, gen: torch.Generator) -> Case:
    case = _pairs(n, gen, 5.0, 15.0, beta=0.1, label_smoothing=0.1)
    case.kwargs["ref_chosen_log_probs"] = _f32(_log_probs(gen, n, low=5.0, high=15.0))
    case.kwargs["ref_rejected_log_probs"] = _f32(_log_probs(gen, n, low=5.0, high=15.0))
    return case


def _kto(n: int, gen: torch.Generator) -> Case:
    case = _pairs(n, gen, 5.0, 15.0, kl=0.1, desirable_weight=1.0, undesirable_weight=1.33)
    case.kwargs["desirable"] = (torch.rand(n, generator=gen) < 0.5).tolist()
    return case


SPECS: dict[str, Spec] = {
    "reinforce": Spec(make=_reinforce, unit_shape=same_shape, weight=elementwise_weight),
    "ppo_clip": Spec(make=_ppo, unit_shape=same_shape, weight=elementwise_weight),
    "value": Spec(make=_value, unit_shape=same_shape, weight=elementwise_weight),
    "kl_penalty": Spec(make=_kl, unit_shape=per_sequence, weight=per_sequence_weight),
    "grpo": Spec(make=_grpo, unit_shape=per_sequence, weight=per_sequence_weight),
    "dpo": Spec(make=_dpo, unit_shape=same_shape, weight=elementwise_weight),
    "simpo": Spec(make=lambda n, gen: _pairs(n, gen, 0.5, 2.0, beta=2.0, gamma=0.5), unit_shape=same_shape,
                  weight=elementwise_weight),
    "orpo": Spec(make=lambda n, gen: _pairs(n, gen, 0.2, 2.0, beta=0.1), unit_shape=same_shape,
                 weight=elementwise_weight),
    "kto": Spec(make=_kto, unit_shape=same_shape, weight=elementwise_weight),
}
