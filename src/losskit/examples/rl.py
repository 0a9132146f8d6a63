"""Contract-suite specs for the rl and preference losses (see losskit/examples/base.py).

Policy losses get log-probabilities of shape (n, 3) (three tokens per sequence), kept away from 0;
preference losses one log-probability per sequence. The options exercise the non-default paths
(clip-higher, dual clip, value clipping, sequence aggregations, label smoothing, a KL term).
"""

from __future__ import annotations

import torch
from torch import Tensor

from losskit.examples import probes
from losskit.examples.base import NOT_BOXES, Case, Regime, Spec, elementwise_weight, large, typical, uniform

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


def _simpo(n: int, gen: torch.Generator) -> Case:
    return _pairs(n, gen, 0.5, 2.0, beta=2.0, gamma=0.5)


def _orpo(n: int, gen: torch.Generator) -> Case:
    return _pairs(n, gen, 0.2, 2.0, beta=0.1)


def _cpo(n: int, gen: torch.Generator) -> Case:
    # summed log-probabilities as the sigmoid loss type reads them; the NLL term on (alpha 0.7)
    return _pairs(n, gen, 5.0, 15.0, beta=0.1, alpha=0.7, label_smoothing=0.1)


def _kto(n: int, gen: torch.Generator) -> Case:
    case = _pairs(n, gen, 5.0, 15.0, kl=0.1, desirable_weight=1.0, undesirable_weight=1.33)
    case.kwargs["desirable"] = (torch.rand(n, generator=gen) < 0.5).tolist()
    return case


# --- accuracy regimes ---------------------------------------------------------------------------
# Saturated: the typical case with its input replaced by log-probabilities down to -30 (values
# down to -30 for the critic), so ratios and rewards reach e^30. Near converged: the losses that
# have a minimum of 0 get inputs a little from it (DPO-style rewards 10 apart, log-probabilities
# within 1e-2 of the reference, values within 1e-3 of the returns). Large: 1e6 tokens (sequences).

SIGNED = "the surrogate is -(advantage x ratio), of either sign: it has no minimum of 0 to converge to"
NOT_HERE = {**NOT_BOXES, "imbalance": "no positives and negatives: every sample is scored on its own"}


def _saturate(make, values: bool = False):
    def saturated(gen: torch.Generator) -> Case:
        case = make(64, gen)
        shape = tuple(case.input.shape)
        case.input = uniform(shape, -30.0, 30.0, gen) if values else _log_probs(gen, *shape, low=0.05, high=30.0)
        return case

    return saturated


def _regimes(make, near_converged=None, n_large: int = 333_334, values: bool = False) -> dict[str, Regime]:
    regimes = {"typical": typical(make), "saturated": Regime(_saturate(make, values)),
               "large": large(lambda gen: make(n_large, gen))}
    if near_converged is not None:
        regimes["near_converged"] = Regime(near_converged)
    return regimes


def _value_converged(gen: torch.Generator) -> Case:
    returns = torch.randn(64, T, generator=gen, dtype=F64)
    values = returns + uniform((64, T), -1e-3, 1e-3, gen)
    return Case(values, returns, {"old_values": _f32(values), "clip_eps": 0.2})


def _kl_converged(gen: torch.Generator) -> Case:
    lp = _log_probs(gen, 64, T)
    return Case(lp, lp + uniform((64, T), -1e-2, 1e-2, gen), {"estimator": "k3", "aggregation": "sequence_mean"})


def _preference_converged(loss: str):
    """Chosen sequences far ahead of rejected ones: every preference margin about 10."""

    def make(gen: torch.Generator) -> Case:
        n = 64
        if loss == "dpo":  # beta 0.1: reward margins of 80 to 120
            chosen, ref_rejected = _log_probs(gen, n, low=5.0, high=15.0), _log_probs(gen, n, low=5.0, high=15.0)
            return Case(chosen, ref_rejected - uniform((n,), 40.0, 60.0, gen),
                        {"beta": 0.1, "ref_chosen_log_probs": _f32(chosen - uniform((n,), 40.0, 60.0, gen)),
                         "ref_rejected_log_probs": _f32(ref_rejected)})
        if loss == "simpo":  # beta 2, gamma 0.5: (chosen - rejected) 5 to 7 apart
            chosen = _log_probs(gen, n, low=0.2, high=1.0)
            return Case(chosen, chosen - uniform((n,), 5.0, 7.0, gen), {"beta": 2.0, "gamma": 0.5})
        if loss == "orpo":  # the chosen answer almost certain (NLL 1e-5 to 1e-4), the rejected one not
            return Case(_log_probs(gen, n, low=1e-5, high=1e-4), _log_probs(gen, n, low=15.0, high=20.0),
                        {"beta": 0.1})
        if loss == "cpo":  # the chosen answer almost certain (NLL 1e-5 to 1e-4), beta 0.1: margins of 100 to 120
            return Case(_log_probs(gen, n, low=1e-5, high=1e-4), _log_probs(gen, n, low=100.0, high=120.0),
                        {"beta": 0.1, "alpha": 0.7})
        # kto, beta 0.1: rewards 80 to 120 above the reference point for desirable answers, below for the rest
        desirable = torch.rand(n, generator=gen) < 0.5
        low = _log_probs(gen, n, low=5.0, high=15.0)
        high = low - uniform((n,), 80.0, 120.0, gen)
        policy, ref = torch.where(desirable, low, high), torch.where(desirable, high, low)
        return Case(policy, _f32(ref), {"kl": 0.0, "desirable": desirable.tolist()})

    return make


SPECS: dict[str, Spec] = {
    "reinforce": Spec(make=_reinforce, unit_shape=same_shape, weight=elementwise_weight, regimes=_regimes(_reinforce),
                      probe=probes.RETURNS,
                      not_applicable={**NOT_HERE, "near_converged": SIGNED}),
    "ppo_clip": Spec(make=_ppo, unit_shape=same_shape, weight=elementwise_weight, regimes=_regimes(_ppo),
                     probe=probes.ADVANTAGES,
                     not_applicable={**NOT_HERE, "near_converged": SIGNED}),
    "value": Spec(make=_value, unit_shape=same_shape, weight=elementwise_weight,
                  probe=probes.VALUE,
                  regimes=_regimes(_value, _value_converged, values=True), not_applicable=NOT_HERE),
    "kl_penalty": Spec(make=_kl, unit_shape=per_sequence, weight=per_sequence_weight,
                       probe=probes.REFERENCE,
                       regimes=_regimes(_kl, _kl_converged), not_applicable=NOT_HERE),
    "grpo": Spec(make=_grpo, unit_shape=per_sequence, weight=per_sequence_weight, regimes=_regimes(_grpo),
                 probe=probes.GROUP_REWARDS,
                 not_applicable={**NOT_HERE, "near_converged": SIGNED}),
    "dpo": Spec(make=_dpo, unit_shape=same_shape, weight=elementwise_weight,
                probe=probes.AGAINST_REFERENCE,
                regimes=_regimes(_dpo, _preference_converged("dpo"), n_large=10**6), not_applicable=NOT_HERE),
    "simpo": Spec(make=_simpo, unit_shape=same_shape, weight=elementwise_weight,
                  regimes=_regimes(_simpo, _preference_converged("simpo"), n_large=10**6), not_applicable=NOT_HERE),
    "orpo": Spec(make=_orpo, unit_shape=same_shape, weight=elementwise_weight,
                 regimes=_regimes(_orpo, _preference_converged("orpo"), n_large=10**6), not_applicable=NOT_HERE),
    "cpo": Spec(make=_cpo, unit_shape=same_shape, weight=elementwise_weight,
                regimes=_regimes(_cpo, _preference_converged("cpo"), n_large=10**6), not_applicable=NOT_HERE),
    "kto": Spec(make=_kto, unit_shape=same_shape, weight=elementwise_weight,
                probe=probes.DESIRABLE,
                regimes=_regimes(_kto, _preference_converged("kto"), n_large=10**6), not_applicable=NOT_HERE),
}
