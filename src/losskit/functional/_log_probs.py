"""What the policy (:mod:`losskit.functional.policy`) and preference
(:mod:`losskit.functional.preference`) objectives share: checks of log-probabilities, masks and
token options, masked means and token aggregation, and the one check of a preference pair's inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

from losskit._core.checks import (
    check_bool,
    check_floating,
    check_int,
    check_number,
    check_one_of,
    check_same_device,
    check_tensor,
    checks_enabled,
    did_you_mean,
    excerpt,
)
from losskit._core.numerics import exp_tail, safe_divide
from losskit._core.reduction import Reduction, check_reduction, reduce_loss

Aggregation = Literal["token_mean", "sequence_mean", "sequence_sum_norm"]
AGGREGATIONS: tuple[str, ...] = ("token_mean", "sequence_mean", "sequence_sum_norm")

# exp() of a log-ratio beyond +/-20 (a ratio of 5e8) is clamped: PPO clips such ratios anyway, and
# the clamp keeps values and gradients finite in every dtype instead of producing inf * 0 = NaN.
_LOG_RATIO_LIMIT = 20.0

Diagnostics = dict[str, Tensor]


# --- shared validation ------------------------------------------------------------------------


def _check_input(name: str, x: object) -> Tensor:
    check_floating(name, x)
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension: (N,) or (N, T), got a scalar")
    return x


def _check_same_shape(input_name: str, input: Tensor, name: str, x: object, role: str = "target") -> Tensor:
    check_floating(f"{name} ({role})" if role else name, x)
    check_same_device(input_name, input, name, x)
    if x.shape != input.shape:
        where = f"{name} (the {role})" if role else name
        raise ValueError(f"{where} must have the shape of {input_name} {tuple(input.shape)}, "
                         f"got shape {tuple(x.shape)}")
    return x


def _per_token(name: str, x: object, input_name: str, input: Tensor, role: str = "") -> Tensor:
    """A tensor of the input's shape (one value per token) or, for 2-D input, (N,) (one per sequence),
    returned broadcastable to the input."""
    where = f"{name} (the {role})" if role else name
    check_floating(where, x)
    check_same_device(input_name, input, name, x)
    if x.shape == input.shape:
        return x
    if input.dim() == 2 and x.shape == input.shape[:1]:
        return x.unsqueeze(-1)
    options = f"{tuple(input.shape)} (one value per token)"
    if input.dim() == 2:
        options += f" or {tuple(input.shape[:1])} (one per sequence)"
    raise ValueError(f"{where} must have the shape {options}, like {input_name}, got shape {tuple(x.shape)}")


def _as_mask(mask: object, input_name: str, input: Tensor) -> Tensor | None:
    if mask is None:
        return None
    check_tensor("mask", mask)
    check_same_device(input_name, input, "mask", mask)
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"mask must be a bool or integer tensor (True or 1 where the token counts, such as an "
                        f"attention mask), got dtype {mask.dtype}; for fractional weights use weight=")
    if mask.shape != input.shape:
        raise ValueError(f"mask must have the shape of {input_name} {tuple(input.shape)}, got shape "
                         f"{tuple(mask.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _check_token_options(aggregation: object, max_length: object, return_diagnostics: object,
                         weight: object) -> None:
    check_one_of("aggregation", aggregation, AGGREGATIONS)
    if max_length is not None:
        if aggregation != "sequence_sum_norm":
            raise ValueError(f"max_length is used only by aggregation='sequence_sum_norm', got "
                             f"aggregation={aggregation!r}")
        check_number("max_length", max_length, low=0.0, low_open=True)
    check_bool("return_diagnostics", return_diagnostics)
    if weight is not None:
        check_tensor("weight", weight)


def _check_log_probs(named: Mapping[str, Tensor | None], mask: Tensor | None = None) -> None:
    """Value check: log-probabilities are <= 0 (``-inf`` allowed; NaN is left to the result check).

    One host sync for all the tensors together; masked positions may hold anything.
    """
    if not checks_enabled():
        return
    named = {k: v for k, v in named.items() if v is not None and v.numel() > 0}
    if not named:
        return
    flags = []
    for x in named.values():
        bad = x > 0
        if mask is not None and bad.shape == mask.shape:
            bad = bad & mask
        flags.append(bad.any())
    flags = torch.stack(flags)
    if not bool(flags.any()):
        return
    name, x = next((n, x) for (n, x), f in zip(named.items(), flags.tolist(), strict=True) if f)
    raise ValueError(f"{name} must hold log-probabilities (<= 0); found values up to {x.max().item():g}. "
                     "Pass log_softmax(logits, -1) gathered at the taken tokens (summed or averaged per "
                     "sequence where the loss says so), not logits")


def _check_unit_interval_open(name: str, value: object, high: float = 1.0) -> float:
    return check_number(name, value, low=0.0, high=high, high_open=True)


# --- shared computation -----------------------------------------------------------------------


def _zero_masked(x: Tensor, mask: Tensor | None) -> Tensor:
    """Masked positions set to 0 before any arithmetic, so padding (even NaN or -inf) gets a zero gradient."""
    return x if mask is None else torch.where(mask, x, x.new_zeros(()))


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Detached mean over the valid positions (0 when there are none)."""
    x = x.detach()
    if mask is None:
        return x.mean() if x.numel() else x.new_zeros(())
    x = x.expand(mask.shape)
    return safe_divide(torch.where(mask, x, x.new_zeros(())).sum(), mask.sum())


def _sequence_log_ratio(log_ratio: Tensor, mask: Tensor | None) -> Tensor:
    """Length-normalized sequence log-ratio (GSPO), repeated over the tokens."""
    if log_ratio.dim() < 2:
        return log_ratio
    if mask is None:
        return log_ratio.mean(-1, keepdim=True).expand_as(log_ratio) if log_ratio.shape[-1] else log_ratio
    total = torch.where(mask, log_ratio, 0.0).sum(-1, keepdim=True)
    return safe_divide(total, mask.sum(-1, keepdim=True)).expand_as(log_ratio)


def _aggregate(per_token: Tensor, mask: Tensor | None, aggregation: str,
               max_length: float | None) -> tuple[Tensor, Tensor | None]:
    """The natural unit for ``aggregation`` and the mask of valid units."""
    if aggregation == "token_mean":
        return per_token, mask
    flat = per_token.dim() == 1
    x = per_token.unsqueeze(-1) if flat else per_token
    m = None if mask is None else (mask.unsqueeze(-1) if flat else mask)
    x = _zero_masked(x, m)
    total = x.sum(-1)
    if aggregation == "sequence_mean":
        if m is None:
            return safe_divide(total, x.shape[-1]), None
        count = m.sum(-1)
        return safe_divide(total, count), count > 0
    return safe_divide(total, x.shape[-1]) if max_length is None else total / max_length, None


def _finish(per_token: Tensor, mask: Tensor | None, *, aggregation: str, max_length: float | None,
            weight: Tensor | None, reduction: Reduction, normalizer, input: Tensor,
            inputs: Mapping[str, Tensor]) -> Tensor:
    unit, unit_mask = _aggregate(per_token, mask, aggregation, max_length)
    return reduce_loss(unit, reduction, weight=weight, mask=unit_mask, normalizer=normalizer,
                       out_dtype=input.dtype, inputs=inputs)



def _result(loss: Tensor, diagnostics: Diagnostics, return_diagnostics: bool):
    return (loss, diagnostics) if return_diagnostics else loss



def _preference_options(beta: object, label_smoothing: object, return_diagnostics: object,
                        weight: object) -> tuple[float, float]:
    beta = check_number("beta", beta, low=0.0, low_open=True)
    label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=0.5, high_open=True)
    check_bool("return_diagnostics", return_diagnostics)
    if weight is not None:
        check_tensor("weight", weight)
    return beta, label_smoothing


def _check_both_or_neither(names: tuple[str, str], values: tuple[object, object], chosen: Tensor, why: str,
                           floating: bool) -> None:
    for name, value in zip(names, values, strict=True):
        if value is None:
            continue
        if floating:
            _check_same_shape("chosen_log_probs", chosen, name, value, role="")
        else:
            check_tensor(name, value)
            if value.shape != chosen.shape:
                raise ValueError(f"{name} must have the shape of chosen_log_probs {tuple(chosen.shape)}, got shape "
                                 f"{tuple(value.shape)}")
    if (values[0] is None) != (values[1] is None):
        raise ValueError(f"pass both {names[0]} and {names[1]}, or neither ({why})")


def check_pair_inputs(chosen: object, rejected: object, *, reduction: object, normalizer: object, beta: object,
                      label_smoothing: object, return_diagnostics: object, weight: object,
                      refs: tuple[object, object] = (None, None),
                      lengths: tuple[object, object] = (None, None)) -> tuple[float, float]:
    """The checks every pairwise preference loss (DPO, SimPO, ORPO) makes, in one place: the
    reduction, the (chosen, rejected) log-probabilities and their optional reference
    log-probabilities and token counts (same shape, both or neither), ``beta``,
    ``label_smoothing``, ``return_diagnostics`` and ``weight``. Returns ``(beta, label_smoothing)``."""
    check_reduction(reduction, normalizer)
    check_floating("chosen_log_probs", chosen)
    _check_same_shape("chosen_log_probs", chosen, "rejected_log_probs", rejected)
    _check_both_or_neither(("ref_chosen_log_probs", "ref_rejected_log_probs"), refs, chosen, "reference-free",
                           floating=True)
    _check_both_or_neither(("chosen_lengths", "rejected_lengths"), lengths, chosen, "inputs already averaged",
                           floating=False)
    beta, label_smoothing = _preference_options(beta, label_smoothing, return_diagnostics, weight)
    named = {"chosen_log_probs": chosen, "rejected_log_probs": rejected,
             "ref_chosen_log_probs": refs[0], "ref_rejected_log_probs": refs[1]}
    _check_log_probs({k: v for k, v in named.items() if v is not None})
    return beta, label_smoothing


def check_variants(variant: object, variant_weights: object, choices: tuple[str, ...]) -> list[tuple[str, float]]:
    """``variant`` (one name, or a list of names mixed as TRL's MPO mixes its ``loss_type`` list) and
    ``variant_weights`` (one number per name, default 1 each) as ``[(name, weight), ...]``.

    An unknown name raises with the closest known ones; weights that do not pair with the names raise."""
    names = [variant] if isinstance(variant, str) else variant
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(v, str) for v in names):
        raise TypeError(f"variant must be a name or a non-empty list of names from {choices}, got {excerpt(variant)}")
    for name in names:
        if name not in choices:
            raise ValueError(f"variant must be one of {choices}, got {excerpt(name)}{did_you_mean(name, choices)}")
    if len(set(names)) != len(names):
        raise ValueError(f"variant lists a name twice: {list(names)}")
    if variant_weights is None:
        return [(name, 1.0) for name in names]
    weights = [variant_weights] if isinstance(variant_weights, (int, float)) else variant_weights
    if isinstance(weights, Tensor) and weights.dim() == 1:  # a module holds its list of weights as a buffer
        weights = weights.tolist()
    if not isinstance(weights, (list, tuple)) or len(weights) != len(names):
        raise ValueError(f"variant_weights must hold one number per variant ({len(names)}: {list(names)}), got "
                         f"{excerpt(variant_weights)}")
    return [(name, check_number(f"variant_weights[{i}]", w, low=0.0))
            for i, (name, w) in enumerate(zip(names, weights, strict=True))]


# --- what the clipped policy objectives share --------------------------------------------------

REWARD_SCALES: tuple[str, ...] = ("group", "batch", "none")
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")


def _group_advantages(rewards: Tensor, group_size: int, scale: str, eps: float) -> Tensor:
    """GRPO's group-relative advantages: rewards centred on their group's mean, divided by a std."""
    if rewards.numel() == 0:
        return rewards
    grouped = rewards.reshape(-1, group_size)
    centred = grouped - grouped.mean(1, keepdim=True)
    if scale == "group":
        centred = centred / (grouped.std(1, keepdim=True) + eps)
    elif scale == "batch" and rewards.numel():
        centred = centred / (rewards.std() + eps)
    return centred.reshape(rewards.shape)


def _check_group_size(group_size: object, n: int) -> int:
    check_int("group_size", group_size, low=2)  # a group's mean is the baseline of its members
    if n % group_size:
        raise ValueError(f"the number of sequences ({n}) must be a multiple of group_size={group_size}: "
                         "rewards hold consecutive groups of completions of the same prompt")
    return group_size


def _clipped_surrogate(log_ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float,
                       dual_clip: float | None) -> tuple[Tensor, Tensor]:
    """PPO's per-token loss ``-min(r A, clip(r) A)`` (dual-clipped for A < 0) and the ratio r."""
    ratio = log_ratio.clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -dual_clip * advantages), loss)
    return loss, ratio


def _ppo_diagnostics(ratio: Tensor, log_ratio: Tensor, advantages: Tensor, mask: Tensor | None,
                     clip_low: float, clip_high: float, dual_clip: float | None) -> Diagnostics:
    ratio, log_ratio, advantages = ratio.detach(), log_ratio.detach(), advantages.detach()
    low = (ratio < 1.0 - clip_low) & (advantages < 0)
    high = (ratio > 1.0 + clip_high) & (advantages > 0)
    out = {
        "clip_fraction": _masked_mean((low | high).to(ratio.dtype), mask),
        "clip_fraction_low": _masked_mean(low.to(ratio.dtype), mask),
        "clip_fraction_high": _masked_mean(high.to(ratio.dtype), mask),
        # k3 estimate of KL(old || new) from samples of the old policy: (r - 1) - log r.
        "approx_kl": _masked_mean((ratio - 1.0) - log_ratio.clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT), mask),
        "ratio_mean": _masked_mean(ratio, mask),
    }
    if dual_clip is not None:
        out["dual_clip_fraction"] = _masked_mean(((advantages < 0) & (ratio > dual_clip)).to(ratio.dtype), mask)
    return out


def _kl_estimate(log_probs: Tensor, ref_log_probs: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1, k2, k3)."""
    log_r = (ref_log_probs - log_probs).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)  # log pi_ref / pi
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    return exp_tail(log_r)  # e^d - 1 - d, exact near d = 0 where expm1(d) - d cancels
