r"""GRPO and TRL's ``GRPOTrainer`` loss types (registry name ``grpo``; re-exported by
:mod:`losskit.functional.policy`, whose module docstring states the sign convention, the masks and
the aggregations).

The per-token objective of each loss type, the sequence masks (off-policy, top-entropy) and the
importance-sampling correction of a separate sampler (vLLM) are applied in TRL's order: the
policy term, times the masks, times the sampler correction, plus :math:`\beta` times the KL.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from losskit._core.checks import check_bool, check_floating, check_number, check_one_of, check_same_device
from losskit._core.numerics import upcast
from losskit._core.reduction import Reduction, check_reduction
from losskit.functional._log_probs import (
    _LOG_RATIO_LIMIT,
    REWARD_SCALES,
    Aggregation,
    Diagnostics,
    _as_mask,
    _check_group_size,
    _check_input,
    _check_log_probs,
    _check_same_shape,
    _check_token_options,
    _check_unit_interval_open,
    _finish,
    _group_advantages,
    _kl_estimate,
    _masked_mean,
    _ppo_diagnostics,
    _sequence_log_ratio,
    _zero_masked,
    check_variants,
)

GRPO_VARIANTS: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo")

# The aggregation each of TRL's loss types reduces with (TRL's "bnpo" and "dapo" differ only in
# the token count they divide by: this process's, or the whole step's, which is normalizer=).
VARIANT_AGGREGATION: dict[str, str] = {"grpo": "sequence_mean", "sapo": "sequence_mean", "bnpo": "token_mean",
                                       "dapo": "token_mean", "cispo": "token_mean", "dr_grpo": "sequence_sum_norm"}


def _policy_term(variant: str, lp: Tensor, log_w: Tensor, adv: Tensor, clip_low: float, clip_high: float,
                 delta: float | None, sapo_temperatures: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """The per-token policy loss of ``variant`` and the importance weight ``w = exp(log_w)``."""
    w = log_w.clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT).exp()
    if variant == "cispo":
        # CISPO: REINFORCE with the importance weight capped and detached, so no token's gradient is
        # clipped away. TRL caps w at epsilon_high itself (clip_eps_high here), not at 1 + epsilon_high.
        return -w.clamp(max=clip_high).detach() * adv * lp, w
    if variant == "sapo":
        # SAPO: a smooth gate in place of the hard clip, 4 sigma(tau (w - 1)) / tau (slope 1 at w = 1).
        tau = torch.where(adv > 0, sapo_temperatures[0], sapo_temperatures[1]).to(w.dtype)
        return -(torch.sigmoid(tau * (w - 1)) * 4 / tau) * adv, w
    clipped = w.clamp(1.0 - clip_low, 1.0 + clip_high)
    unclipped = w if delta is None else w.clamp(max=delta)  # two-sided clipping: a cap for A < 0 too
    return torch.maximum(-unclipped * adv, -clipped * adv), w


def _off_policy_keep(adv: Tensor, lp: Tensor, sampling: Tensor, mask: Tensor | None, threshold: float) -> Tensor:
    """DeepSeek-V3.2's off-policy sequence mask: drop a sequence with a negative advantage whose mean
    per-token KL(sampler || policy) exceeds ``threshold``; (N, 1)."""
    kl = _zero_masked(sampling - lp.detach(), mask)
    count = kl.new_tensor(float(kl.shape[-1])) if mask is None else mask.sum(-1, keepdim=True).clamp(min=1)
    mean_kl = kl.sum(-1, keepdim=True) / count
    return ((adv >= 0) | (mean_kl <= threshold)).to(lp.dtype)


def _top_entropy_keep(entropies: Tensor, mask: Tensor | None, quantile: float) -> Tensor:
    """Keep the tokens whose entropy is at or above the ``1 - quantile`` quantile of the valid ones
    (boolean indexing: one host sync)."""
    valid = entropies.detach() if mask is None else entropies.detach()[mask]
    if valid.numel() == 0:
        return torch.zeros_like(entropies, dtype=torch.bool)
    threshold = torch.quantile(valid.float(), 1.0 - quantile).to(entropies.dtype)
    keep = entropies.detach() >= threshold
    return keep if mask is None else keep & mask


def _check_grpo_extras(log_probs: Tensor, *, sampling_log_probs, importance_sampling_ratio, entropies,
                       off_policy_mask_threshold, top_entropy_quantile, delta, sapo_temperature_pos,
                       sapo_temperature_neg, use_bias_correction_kl) -> tuple:
    if sampling_log_probs is not None:
        _check_same_shape("log_probs", log_probs, "sampling_log_probs", sampling_log_probs, role="")
    if importance_sampling_ratio is not None:
        check_floating("importance_sampling_ratio", importance_sampling_ratio)
        if importance_sampling_ratio.shape not in (log_probs.shape, log_probs.shape[:1]):
            raise ValueError(f"importance_sampling_ratio must have shape {tuple(log_probs.shape)} (per token) or "
                             f"{tuple(log_probs.shape[:1])} (per sequence), got "
                             f"{tuple(importance_sampling_ratio.shape)}")
    if off_policy_mask_threshold is not None:
        check_number("off_policy_mask_threshold", off_policy_mask_threshold)
    quantile = check_number("top_entropy_quantile", top_entropy_quantile, low=0.0, high=1.0, low_open=True)
    if quantile < 1.0:
        if entropies is None:
            raise ValueError(f"top_entropy_quantile={quantile:g} keeps the highest-entropy tokens: pass entropies")
        _check_same_shape("log_probs", log_probs, "entropies", entropies, role="")
    if delta is not None:
        delta = check_number("delta", delta, low=1.0, low_open=True)
    temperatures = (check_number("sapo_temperature_pos", sapo_temperature_pos, low=0.0, low_open=True),
                    check_number("sapo_temperature_neg", sapo_temperature_neg, low=0.0, low_open=True))
    check_bool("use_bias_correction_kl", use_bias_correction_kl)
    return quantile, delta, temperatures


def grpo_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    *,
    rewards: Tensor,
    group_size: int,
    variant: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"] = "dapo",
    ref_log_probs: Tensor | None = None,
    beta: float = 0.0,
    use_bias_correction_kl: bool = False,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    delta: float | None = None,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    scale_rewards: Literal["group", "batch", "none"] = "group",
    eps: float = 1e-4,
    ratio_level: Literal["token", "sequence"] = "token",
    importance_sampling_ratio: Tensor | None = None,
    sampling_log_probs: Tensor | None = None,
    off_policy_mask_threshold: float | None = None,
    entropies: Tensor | None = None,
    top_entropy_quantile: float = 1.0,
    mask: Tensor | None = None,
    aggregation: Aggregation | None = None,
    max_length: float | None = None,
    return_diagnostics: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor | tuple[Tensor, Diagnostics]:
    r"""GRPO and TRL's ``GRPOTrainer`` loss types: a policy-gradient loss with group-normalized advantages.

    Each prompt gets ``group_size`` sampled completions; a completion's advantage is its reward
    relative to its group, so no value network is needed. Every token of completion :math:`i`
    gets the same advantage :math:`A_i`; with the importance weight
    :math:`w_{i,t} = \pi_\theta / \pi_{\theta_\text{old}}` (per token, or GSPO's length-normalized
    sequence weight with ``ratio_level="sequence"``) the per-token loss is

    .. math::
        A_i = \frac{R_i - \mathrm{mean}(R_\text{group})}{\mathrm{std}(R_\text{group}) + \varepsilon}

        \text{grpo, bnpo, dr\_grpo, dapo:}\quad
        \ell_{i,t} = -\min\big(\min(w_{i,t}, \delta) A_i,\ \mathrm{clip}(w_{i,t}, 1-\epsilon_\text{low},
        1+\epsilon_\text{high}) A_i\big)

        \text{cispo:}\quad \ell_{i,t} = -\,\mathrm{sg}\big[\min(w_{i,t}, \epsilon_\text{high})\big]\, A_i \log\pi_\theta
        \qquad
        \text{sapo:}\quad \ell_{i,t} = -\frac{4}{\tau}\,\sigma\big(\tau (w_{i,t} - 1)\big) A_i,\
        \tau = \tau_+ \text{ if } A_i > 0 \text{ else } \tau_-

    then multiplied by the off-policy mask (a sequence with :math:`A_i < 0` whose mean per-token
    :math:`\log\pi_\text{sampler} - \log\pi_\theta` exceeds ``off_policy_mask_threshold`` is
    dropped), by the top-entropy mask (only tokens whose ``entropies`` are in the top
    ``top_entropy_quantile`` of the batch's valid tokens count) and by ``importance_sampling_ratio``
    (the sampler correction of :func:`losskit.rl.vllm_importance_sampling_ratio`), plus
    :math:`\beta` times the :math:`k_3` estimate of the KL to the reference policy (times
    :math:`w_{i,t}` with ``use_bias_correction_kl``). ``variant`` picks the loss type and its
    aggregation: ``"grpo"`` and ``"sapo"`` the sequence mean, ``"bnpo"``, ``"dapo"`` and
    ``"cispo"`` the token mean (TRL's ``"dapo"`` and ``"cispo"`` divide by the token count of the
    whole step: pass it as ``normalizer``), ``"dr_grpo"`` the sequence sum over ``max_length``
    (pass TRL's ``max_completion_length``); ``aggregation`` overrides it.

    The std is the unbiased one (as in TRL). ``scale_rewards="none"`` only centres (Dr. GRPO),
    ``"batch"`` divides by the std of all rewards in the batch. With a single update per
    generation, pass ``old_log_probs=log_probs.detach()`` (the weight is then 1 and only its
    gradient acts).

    Args:
        log_probs: Per-token log-probabilities of the completions under the current policy.
        old_log_probs: The same under the policy that generated them (detached).
        rewards: One scalar reward per completion, :math:`(N,)`, groups of ``group_size``
            consecutive completions of the same prompt.
        group_size: Completions per prompt, ``>= 2``.
        variant: TRL's ``loss_type``: ``"grpo"`` | ``"bnpo"`` | ``"dr_grpo"`` | ``"dapo"`` (TRL's
            default) | ``"cispo"`` | ``"sapo"``.
        ref_log_probs: Per-token log-probabilities under the reference policy; needed when ``beta > 0``.
        beta: KL coefficient :math:`\beta \ge 0` (the paper: 0.04; TRL's default: 0).
        use_bias_correction_kl: Weigh the KL estimate by :math:`w` (TRL's option, default ``True``
            there; ``False`` here, the paper's).
        clip_eps: :math:`\epsilon_\text{low}` (and :math:`\epsilon_\text{high}` unless given); TRL's ``epsilon``.
        clip_eps_high: :math:`\epsilon_\text{high}` (TRL's ``epsilon_high``); with ``"cispo"`` the cap on :math:`w`.
        delta: Two-sided clipping: the cap :math:`\delta > 1` on the unclipped weight (TRL's ``delta``), or ``None``.
        sapo_temperature_pos: :math:`\tau_+ > 0` of ``"sapo"`` (1.0, as TRL).
        sapo_temperature_neg: :math:`\tau_- > 0` of ``"sapo"`` (1.05, as TRL).
        scale_rewards: ``"group"`` | ``"batch"`` | ``"none"``.
        eps: Added to the std (TRL's 1e-4).
        ratio_level: ``"token"`` or ``"sequence"`` (GSPO; TRL's ``importance_sampling_level``).
        importance_sampling_ratio: Per token :math:`(N, T)` or per sequence :math:`(N,)`, detached:
            the sampler correction multiplied into the policy term, or ``None``.
        sampling_log_probs: Per-token log-probabilities under the sampler, for the off-policy mask
            (default: ``old_log_probs``).
        off_policy_mask_threshold: The mean per-token KL above which a negative-advantage sequence
            is dropped (TRL's ``off_policy_mask_threshold``), or ``None``.
        entropies: Per-token entropies of the policy :math:`(N, T)`, for ``top_entropy_quantile``.
        top_entropy_quantile: :math:`\rho \in (0, 1]`, the fraction of the highest-entropy tokens
            that count (1: all). Computing the quantile syncs with the host.
        mask: Bool or integer, ``True`` where the token counts (the completion mask).
        aggregation: ``"token_mean"`` | ``"sequence_mean"`` | ``"sequence_sum_norm"``, or ``None``
            for the variant's.
        max_length: The constant divisor of ``"sequence_sum_norm"``.
        return_diagnostics: Also return PPO's clip fractions, ``approx_kl`` and ``ratio_mean``,
            ``reward_mean``, ``reward_std``, ``advantage_std`` and, with a reference, ``kl`` (the mean k3).
        weight: Weights broadcastable to the natural unit.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - log_probs, old_log_probs, ref_log_probs, sampling_log_probs, entropies: :math:`(N, T)` (or :math:`(N,)`).
        - rewards: :math:`(N,)`, :math:`N` a multiple of ``group_size``.
        - output: scalar; with ``reduction="none"`` the input's shape (token mean) or :math:`(N,)`.

    Returns:
        The loss in the input's dtype, or ``(loss, diagnostics)``. Empty input gives 0 with a gradient.

    Raises:
        ValueError: Mismatched shapes, ``N`` not a multiple of ``group_size``, ``beta > 0`` without
            ``ref_log_probs``, an unknown ``variant`` (with the closest names),
            ``top_entropy_quantile < 1`` without ``entropies``, positive log-probabilities (value
            check), options out of range.
        TypeError: Non-floating inputs, a non-int ``group_size``, a floating ``mask``.

    Examples:
        >>> import torch, losskit
        >>> lp = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
        >>> rewards = torch.tensor([1.0, 0.0])  # one group of 2: A = (+0.5, -0.5) / (0.7071 + 1e-4)
        >>> losskit.grpo_loss(lp, lp.detach(), rewards=rewards, group_size=2)  # weight 1: mean of -A
        tensor(0.)
        >>> losskit.grpo_loss(lp, lp.detach(), rewards=rewards, group_size=2, reduction="none")
        tensor([[-0.7070, -0.7070],
                [ 0.7070,  0.7070]])
        >>> losskit.grpo_loss(lp, lp.detach(), rewards=rewards, group_size=2, variant="sapo",
        ...                   reduction="none")  # -(4 / tau) sigma(0) A: -2A for A > 0, -1.905 A below
        tensor([-1.4140,  1.3467])

    References:
        Shao et al., "DeepSeekMath" (GRPO), 2024. Liu et al., "Understanding R1-Zero-Like Training"
        (Dr. GRPO), 2025. Yu et al., "DAPO", 2025. Zheng et al., "Group Sequence Policy
        Optimization" (GSPO), 2025. MiniMax, "MiniMax-M1" (CISPO), 2025. Gao et al., "Soft Adaptive
        Policy Optimization" (SAPO), 2025. Wang et al., "Beyond the 80/20 Rule" (top-entropy
        tokens), 2025. DeepSeek-AI, "DeepSeek-V3.2" (off-policy sequence masking, the
        bias-corrected KL), 2025. Yao et al., "Your Efficient RL Framework Secretly Brings You
        Off-Policy RL Training" (the sampler correction), 2025. Names and defaults: TRL 1.x's
        ``GRPOTrainer``; Liger-Kernel's ``LigerFusedLinearGRPOLoss``.
    """
    check_reduction(reduction, normalizer)
    _check_input("log_probs", log_probs)
    _check_same_shape("log_probs", log_probs, "old_log_probs", old_log_probs)
    check_floating("rewards", rewards)
    check_same_device("log_probs", log_probs, "rewards", rewards)
    if rewards.shape != log_probs.shape[:1]:
        raise ValueError(f"rewards must have shape ({log_probs.shape[0]},), one per completion, got shape "
                         f"{tuple(rewards.shape)}")
    _check_group_size(group_size, rewards.shape[0])
    if not isinstance(variant, str):
        raise TypeError(f"variant must be one name from {GRPO_VARIANTS}, got {type(variant).__name__}")
    check_variants(variant, None, GRPO_VARIANTS)
    aggregation = VARIANT_AGGREGATION[variant] if aggregation is None else aggregation
    _check_token_options(aggregation, max_length, return_diagnostics, weight)
    beta = check_number("beta", beta, low=0.0)
    if ref_log_probs is not None:
        _check_same_shape("log_probs", log_probs, "ref_log_probs", ref_log_probs, role="")
    elif beta > 0:
        raise ValueError(f"beta={beta:g} weighs a KL to the reference policy: pass ref_log_probs")
    clip_low = _check_unit_interval_open("clip_eps", clip_eps)
    clip_high = clip_low if clip_eps_high is None else check_number("clip_eps_high", clip_eps_high, low=0.0)
    check_one_of("scale_rewards", scale_rewards, REWARD_SCALES)
    eps = check_number("eps", eps, low=0.0)
    check_one_of("ratio_level", ratio_level, ("token", "sequence"))
    quantile, delta, temperatures = _check_grpo_extras(
        log_probs, sampling_log_probs=sampling_log_probs, importance_sampling_ratio=importance_sampling_ratio,
        entropies=entropies, off_policy_mask_threshold=off_policy_mask_threshold,
        top_entropy_quantile=top_entropy_quantile, delta=delta, sapo_temperature_pos=sapo_temperature_pos,
        sapo_temperature_neg=sapo_temperature_neg, use_bias_correction_kl=use_bias_correction_kl)
    mask = _as_mask(mask, "log_probs", log_probs)
    _check_log_probs({"log_probs": log_probs, "old_log_probs": old_log_probs, "ref_log_probs": ref_log_probs,
                      "sampling_log_probs": sampling_log_probs}, mask)

    lp = _zero_masked(upcast(log_probs), mask)
    dtype = lp.dtype
    old = _zero_masked(upcast(old_log_probs).detach().to(dtype), mask)
    r = upcast(rewards).detach().to(dtype)
    adv = _group_advantages(r, group_size, scale_rewards, eps)
    adv_t = adv.unsqueeze(-1) if lp.dim() == 2 else adv
    log_ratio = lp - old
    if ratio_level == "sequence":
        log_ratio = _sequence_log_ratio(log_ratio, mask)
    per_token, ratio = _policy_term(variant, lp, log_ratio, adv_t, clip_low, clip_high, delta, temperatures)
    if off_policy_mask_threshold is not None and lp.dim() == 2:
        sampling = old if sampling_log_probs is None else _zero_masked(
            upcast(sampling_log_probs).detach().to(dtype), mask)
        per_token = per_token * _off_policy_keep(adv_t, lp, sampling, mask, off_policy_mask_threshold)
    if quantile < 1.0:
        per_token = per_token * _top_entropy_keep(upcast(entropies).to(dtype), mask, quantile).to(dtype)
    if importance_sampling_ratio is not None:
        is_ratio = upcast(importance_sampling_ratio).detach().to(dtype)
        per_token = per_token * (is_ratio.unsqueeze(-1) if is_ratio.shape != lp.shape else is_ratio)
    kl = None
    if ref_log_probs is not None:
        ref = _zero_masked(upcast(ref_log_probs).detach().to(dtype), mask)
        kl = _kl_estimate(lp, ref, "k3")
        if beta > 0:
            per_token = per_token + beta * (kl * ratio if use_bias_correction_kl else kl)
    loss = _finish(per_token, mask, aggregation=aggregation, max_length=max_length, weight=weight,
                   reduction=reduction, normalizer=normalizer, input=log_probs,
                   inputs={"log_probs": log_probs, "old_log_probs": old_log_probs, "rewards": rewards,
                           "ref_log_probs": ref_log_probs})
    if not return_diagnostics:
        return loss
    diagnostics = _ppo_diagnostics(ratio, log_ratio, adv_t.expand_as(lp), mask, clip_low, clip_high, None)
    diagnostics["reward_mean"] = _masked_mean(r, None)
    diagnostics["reward_std"] = _masked_mean((r - _masked_mean(r, None)) ** 2, None).sqrt()
    diagnostics["advantage_std"] = _masked_mean((adv - _masked_mean(adv, None)) ** 2, None).sqrt()
    if kl is not None:
        diagnostics["kl"] = _masked_mean(kl, mask)
    return loss, diagnostics

