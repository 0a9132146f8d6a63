r"""Reinforcement learning: returns, advantages, and the policy and preference objectives.

``import losskit.rl as rl``. The objectives are those of :mod:`losskit.functional` (re-exported
here); this module adds what turns rewards into the returns and advantages they consume:

* :func:`discounted_returns`: :math:`G_t = r_t + \gamma (1 - d_t) G_{t+1}`.
* :func:`gae`: generalized advantage estimation, with episode ends and bootstrapping.
* :func:`normalize_advantages`: standardization over the batch's valid entries.
* :func:`group_advantages`: GRPO's group-relative advantages.
* :func:`vllm_importance_sampling_ratio`: the sampler correction :func:`grpo_loss` takes.
* :func:`wpo_weights` and :func:`ld_dpo_log_probs`: what WPO and LD-DPO feed :func:`dpo_loss`.

Time runs along ``dim`` (0 by default: rollouts of shape ``(T, num_envs)``; pass ``dim=-1`` for
``(num_envs, T)`` or per-token rewards of shape ``(N, T)``). ``dones[t]`` is true when the
transition at step ``t`` ended its episode (gymnasium's ``terminated`` returned by step ``t``):
nothing after it is discounted back into step ``t``. The results are constants of the
objectives: they carry no gradient.

**Time limits.** A truncated episode (gymnasium's ``truncated``) did not terminate: its value
continues. Add :math:`\gamma V(s_\text{final})` to the reward of the truncated step and mark it
done (as Stable-Baselines3 does); marking it done without the bootstrap teaches the critic that
the time limit is a terminal state.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from losskit._core.checks import check_floating, check_number, check_one_of, check_tensor
from losskit.functional._log_probs import (
    REWARD_SCALES,
    _as_mask,
    _check_group_size,
    _check_log_probs,
    _group_advantages,
)
from losskit.functional.policy import (
    _normalize,
    entropy_bonus,
    grpo_loss,
    kl_penalty,
    ppo_clip_loss,
    reinforce_loss,
    value_loss,
)
from losskit.functional.preference import cpo_loss, dpo_loss, kto_loss, orpo_loss, simpo_loss


class Advantages(NamedTuple):
    """The result of :func:`gae`."""

    advantages: Tensor  # A_t
    returns: Tensor  # A_t + V_t: the value targets (lambda-returns)


def _time_first(name: str, x: Tensor, dim: int) -> Tensor:
    if x.dim() == 0:
        raise ValueError(f"{name} must have a time dimension, got a scalar")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim={dim} is out of range for {name} of shape {tuple(x.shape)}")
    return x.movedim(dim, 0)


def _not_done(dones: Tensor | None, rewards: Tensor, dim: int) -> Tensor:
    if dones is None:
        return torch.ones_like(rewards)
    check_tensor("dones", dones)
    if dones.shape != rewards.shape:
        raise ValueError(f"dones must have the shape of rewards {tuple(rewards.shape)}, got shape "
                         f"{tuple(dones.shape)}")
    return 1.0 - _time_first("dones", dones, dim).to(rewards.dtype)


def _bootstrap(name: str, value: float | Tensor | None, like: Tensor) -> Tensor:
    """The value after the last step, shaped like one time step of ``like`` (time first)."""
    if value is None:
        return like.new_zeros(like.shape[1:])
    if isinstance(value, Tensor):
        try:
            return torch.broadcast_to(value.detach().to(like.dtype), like.shape[1:])
        except RuntimeError:
            raise ValueError(f"{name} must broadcast to one time step of shape {tuple(like.shape[1:])}, got shape "
                             f"{tuple(value.shape)}") from None
    return like.new_full(like.shape[1:], check_number(name, value))


def discounted_returns(
    rewards: Tensor,
    dones: Tensor | None,
    gamma: float,
    *,
    bootstrap: float | Tensor | None = None,
    dim: int = 0,
) -> Tensor:
    r"""Discounted returns :math:`G_t = r_t + \gamma (1 - d_t)\, G_{t+1}`, with :math:`G_T` = ``bootstrap``.

    Args:
        rewards: Rewards, time along ``dim``.
        dones: Episode ends (bool, integer or float), the shape of ``rewards``; ``None`` for none.
        gamma: The discount :math:`\gamma \in [0, 1]`.
        bootstrap: The value of the state after the last step (a number or a tensor of one time
            step's shape); ``None`` for 0 (the rollout ends with its episodes).
        dim: The time dimension.

    Shape:
        - rewards, dones: :math:`(T, *)` (time along ``dim``); output: the same.

    Returns:
        The returns, in the rewards' dtype, without gradient.

    Raises:
        ValueError: Mismatched shapes, ``gamma`` outside :math:`[0, 1]`, ``dim`` out of range.
        TypeError: Non-floating rewards.

    Examples:
        >>> import torch
        >>> from losskit.rl import discounted_returns
        >>> rewards, dones = torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([0, 1, 0, 0])
        >>> discounted_returns(rewards, dones, 0.5, bootstrap=2.0)  # G3 = G2 = 2; G1 = 1 (done); G0 = 1.5
        tensor([1.5000, 1.0000, 2.0000, 2.0000])
    """
    check_floating("rewards", rewards)
    gamma = check_number("gamma", gamma, low=0.0, high=1.0)
    with torch.no_grad():
        r = _time_first("rewards", rewards, dim)
        not_done = _not_done(dones, rewards, dim)
        running = _bootstrap("bootstrap", bootstrap, r)
        out = torch.empty_like(r)
        for t in range(r.shape[0] - 1, -1, -1):
            running = r[t] + gamma * not_done[t] * running
            out[t] = running
        return out.movedim(0, dim)


def gae(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor | None,
    gamma: float,
    lam: float,
    *,
    next_value: float | Tensor | None = None,
    dim: int = 0,
) -> Advantages:
    r"""Generalized advantage estimation: advantages and value targets from rewards and value estimates.

    The exponentially weighted average of the :math:`n`-step advantage estimates: ``lam=0`` is
    the one-step TD error (low variance, biased by the critic), ``lam=1`` the discounted return
    minus the value (unbiased, high variance).

    .. math::
        \delta_t = r_t + \gamma (1 - d_t) V_{t+1} - V_t, \qquad
        A_t = \delta_t + \gamma\lambda (1 - d_t) A_{t+1}, \qquad R_t = A_t + V_t

    with :math:`V_T` = ``next_value`` (the critic's value of the state after the rollout, for
    bootstrapping; ``None`` for 0) and :math:`A_T = 0`. Values are detached.

    Args:
        rewards: Rewards, time along ``dim``.
        values: The critic's :math:`V(s_t)`, the shape of ``rewards``.
        dones: Episode ends, the shape of ``rewards``, or ``None``.
        gamma: The discount :math:`\gamma \in [0, 1]`.
        lam: :math:`\lambda \in [0, 1]`.
        next_value: :math:`V(s_T)`, a number or a tensor of one time step's shape, or ``None`` for 0.
        dim: The time dimension.

    Shape:
        - rewards, values, dones: :math:`(T, *)` (time along ``dim``); outputs: the same.

    Returns:
        ``Advantages(advantages, returns)``, without gradient; ``returns`` are the value targets.

    Raises:
        ValueError: Mismatched shapes, ``gamma`` or ``lam`` outside :math:`[0, 1]`.
        TypeError: Non-floating rewards or values.

    Examples:
        >>> import torch
        >>> from losskit.rl import gae
        >>> rewards, values = torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.5])
        >>> out = gae(rewards, values, None, 1.0, 1.0, next_value=0.0)  # returns 2, 1 minus values
        >>> out.advantages, out.returns
        (tensor([1.5000, 0.5000]), tensor([2., 1.]))

    References:
        Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage
        Estimation", ICLR 2016. The recursion is that of CleanRL and Stable-Baselines3 (whose
        ``dones`` / ``episode_starts`` flag the *next* step: shift by one).
    """
    check_floating("rewards", rewards)
    check_floating("values", values)
    if values.shape != rewards.shape:
        raise ValueError(f"values must have the shape of rewards {tuple(rewards.shape)}, got shape "
                         f"{tuple(values.shape)}")
    gamma = check_number("gamma", gamma, low=0.0, high=1.0)
    lam = check_number("lam", lam, low=0.0, high=1.0)
    with torch.no_grad():
        r = _time_first("rewards", rewards, dim)
        v = _time_first("values", values, dim).detach().to(r.dtype)
        not_done = _not_done(dones, rewards, dim)
        next_v = _bootstrap("next_value", next_value, r)
        advantages = torch.empty_like(r)
        last = torch.zeros_like(next_v)
        for t in range(r.shape[0] - 1, -1, -1):
            delta = r[t] + gamma * not_done[t] * next_v - v[t]
            last = delta + gamma * lam * not_done[t] * last
            advantages[t] = last
            next_v = v[t]
        return Advantages(advantages.movedim(0, dim), (advantages + v).movedim(0, dim))


def normalize_advantages(advantages: Tensor, *, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    r"""Standardize advantages: :math:`(A - \bar A) / (s_A + \varepsilon)` over the valid entries.

    The mean and the (Bessel-corrected) standard deviation are taken over the entries where
    ``mask`` is true (every entry without a mask): padding does not shift them. Normalize once,
    before both of PPO's surrogate terms (``ppo_clip_loss(normalize_advantages=True)`` does
    exactly this). Over a minibatch, as CleanRL and Stable-Baselines3 do; in distributed
    training the statistics are those of the local batch.

    Args:
        advantages: Advantages, any shape.
        mask: Bool or integer of the same shape, ``True`` where the entry counts.
        eps: Added to the standard deviation.

    Returns:
        The normalized advantages (padding positions hold values that should stay masked).

    Examples:
        >>> import torch
        >>> from losskit.rl import normalize_advantages
        >>> normalize_advantages(torch.tensor([1.0, 3.0]))  # mean 2, std sqrt(2)
        tensor([-0.7071,  0.7071])
    """
    check_floating("advantages", advantages)
    eps = check_number("eps", eps, low=0.0)
    mask = _as_mask(mask, "advantages", advantages)
    return _normalize(advantages, mask, eps)


def group_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    scale: Literal["group", "batch", "none"] = "group",
    eps: float = 1e-4,
) -> Tensor:
    r"""GRPO's group-relative advantages :math:`(R_i - \mathrm{mean}_\text{group}) / (\mathrm{std} + \varepsilon)`.

    ``rewards`` hold consecutive groups of ``group_size`` completions of the same prompt. The
    std is the unbiased one of each group (``scale="group"``, GRPO and TRL), of the whole batch
    (``"batch"``), or none at all (``"none"``, Dr. GRPO). :func:`losskit.grpo_loss` computes
    these itself.

    Args:
        rewards: One reward per completion, :math:`(N,)`.
        group_size: Completions per prompt, ``>= 2``, dividing :math:`N`.
        scale: ``"group"`` | ``"batch"`` | ``"none"``.
        eps: Added to the std (TRL's 1e-4).

    Returns:
        The advantages, :math:`(N,)`.

    Examples:
        >>> import torch
        >>> from losskit.rl import group_advantages
        >>> group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), 2, scale="none")
        tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    check_floating("rewards", rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (N,), got shape {tuple(rewards.shape)}")
    _check_group_size(group_size, rewards.shape[0])
    check_one_of("scale", scale, REWARD_SCALES)
    eps = check_number("eps", eps, low=0.0)
    return _group_advantages(rewards.detach(), group_size, scale, eps)


def _paired_tokens(name: str, x: Tensor, mask: Tensor | None) -> Tensor:
    """``mask`` as bool for ``x`` of shape (B, L), B even: the chosen sequences first, then the rejected."""
    check_floating(name, x)
    if x.dim() != 2 or x.shape[0] % 2:
        raise ValueError(f"{name} must have shape (B, L) with B even (the chosen sequences first, then the rejected "
                         f"ones: chosen and rejected batches of the same size), got shape {tuple(x.shape)}")
    m = _as_mask(mask, name, x)
    return torch.ones_like(x, dtype=torch.bool) if m is None else m


def wpo_weights(token_log_probs: Tensor, log_sum_sq_probs: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""WPO's per-pair weights :math:`w(y_w)\,w(y_l)`, to pass as :func:`dpo_loss`'s ``wpo_weights``.

    WPO reweights each preference pair by how likely the current policy is to generate it, with
    each token's probability aligned by the policy's own "self-probability"
    :math:`\sum_k p_k^2` at that position (so that a flat and a peaked distribution are comparable):

    .. math::
        w(y) = \exp\Big(\frac{1}{|y|}\sum_{t \in y} \big(\log p_t(y_t) - \log\textstyle\sum_k p_t(k)^2\big)\Big)

    Args:
        token_log_probs: :math:`\log p_t(y_t)` per token, :math:`(B, L)`: the :math:`B/2` chosen
            sequences first, then the :math:`B/2` rejected ones.
        log_sum_sq_probs: :math:`\log\sum_k p_t(k)^2` per token, :math:`(B, L)`:
            ``torch.logsumexp(2 * log_softmax(logits, -1), -1)``.
        mask: Bool or integer :math:`(B, L)`, ``True`` at completion tokens (default: all).

    Returns:
        :math:`(B/2,)`, detached (as TRL computes them, under ``no_grad``).

    Raises:
        ValueError: An odd batch or mismatched shapes; values above 0 at counted tokens (value check).

    Examples:
        >>> import math, torch
        >>> from losskit.rl import wpo_weights
        >>> lp = torch.log(torch.tensor([[0.5], [0.5]]))  # two tokens over a uniform pair of words
        >>> wpo_weights(lp, torch.full((2, 1), math.log(0.5)))  # 0.5 / (0.25 + 0.25) = 1 each
        tensor([1.])

    References:
        Zhou et al., "WPO: Enhancing RLHF with Weighted Preference Optimization", EMNLP 2024, Eq. 2.
        TRL's ``DPOConfig(use_weighting=True)``.
    """
    mask = _paired_tokens("token_log_probs", token_log_probs, mask)
    if log_sum_sq_probs.shape != token_log_probs.shape:
        raise ValueError(f"log_sum_sq_probs must have the shape of token_log_probs {tuple(token_log_probs.shape)}, "
                         f"got shape {tuple(log_sum_sq_probs.shape)}")
    _check_log_probs({"token_log_probs": token_log_probs, "log_sum_sq_probs": log_sum_sq_probs}, mask)
    aligned = torch.where(mask, token_log_probs.detach() - log_sum_sq_probs.detach(), 0.0)
    mean = aligned.sum(-1) / mask.sum(-1).clamp(min=1)
    chosen, rejected = mean.chunk(2)
    return torch.exp(chosen + rejected)


def ld_dpo_log_probs(token_log_probs: Tensor, mask: Tensor | None = None, *, alpha: float) -> Tensor:
    r"""LD-DPO's length-desensitized sequence log-probabilities, to pass to :func:`dpo_loss`.

    DPO's summed log-probability favours the longer completion of a pair. LD-DPO counts the
    tokens both completions share in length (the first :math:`\min(|y_w|, |y_l|)` completion
    tokens of each) in full and the longer one's excess tokens with weight :math:`\alpha`:

    .. math::
        \log\hat\pi(y) = \sum_{t \le \ell_p} \log p_t + \alpha \sum_{t > \ell_p} \log p_t, \qquad
        \ell_p = \min(|y_w|, |y_l|)

    Apply it to the policy's and the reference's token log-probabilities alike (as TRL does).

    Args:
        token_log_probs: :math:`(B, L)`: the :math:`B/2` chosen sequences, then the rejected ones.
        mask: Bool or integer :math:`(B, L)`, ``True`` at completion tokens (default: all).
        alpha: :math:`\alpha \in [0, 1]` (TRL's ``ld_alpha``; 1 is plain DPO).

    Returns:
        :math:`(B,)`: split with ``.chunk(2)`` into the chosen and the rejected log-probabilities.

    Raises:
        ValueError: An odd batch, ``alpha`` outside :math:`[0, 1]`; log-probabilities above 0 at
            counted tokens (value check).

    Examples:
        >>> import torch
        >>> from losskit.rl import ld_dpo_log_probs
        >>> lp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
        >>> mask = torch.tensor([[1, 1, 1], [1, 0, 0]])  # lengths 3 and 1: one shared token
        >>> ld_dpo_log_probs(lp, mask, alpha=0.5)  # -1 + 0.5 (-2), and -2
        tensor([-2., -2.])

    References:
        Liu et al., "Length Desensitization in Direct Preference Optimization", 2024. TRL's ``DPOConfig(ld_alpha=...)``.
    """
    mask = _paired_tokens("token_log_probs", token_log_probs, mask)
    alpha = check_number("alpha", alpha, low=0.0, high=1.0)
    _check_log_probs({"token_log_probs": token_log_probs}, mask)
    position = mask.long().cumsum(-1)
    chosen_len, rejected_len = mask.sum(-1).chunk(2)
    shared = torch.minimum(chosen_len, rejected_len).repeat(2).unsqueeze(-1)
    in_shared = mask & (position <= shared)
    tail = mask & (position > shared)
    zero = token_log_probs.new_zeros(())
    return (torch.where(in_shared, token_log_probs, zero).sum(-1)
            + alpha * torch.where(tail, token_log_probs, zero).sum(-1))


VLLM_IS_MODES: tuple[str, ...] = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def vllm_importance_sampling_ratio(
    old_log_probs: Tensor,
    sampling_log_probs: Tensor,
    mask: Tensor | None = None,
    *,
    mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = "sequence_mask",
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> Tensor:
    r"""The importance weight that corrects for a sampler (vLLM) whose probabilities differ from the trainer's.

    Completions sampled by an inference engine carry its log-probabilities, which differ from
    the training policy's (other kernels, other precision). The ratio
    :math:`\pi_\text{old}/\pi_\text{sampler}` per token, or its product over the sequence,
    reweights the policy-gradient term; ``"*_truncate"`` clamps it to ``[clip_min, clip_max]``
    (truncated importance sampling), ``"*_mask"`` sets it to 0 outside (masked importance
    sampling). Pass the result as :func:`losskit.grpo_loss`'s ``importance_sampling_ratio``.
    Sampler log-probabilities that are NaN (tokens the sampler did not score) count as a log-ratio of 0.

    Args:
        old_log_probs: Per-token log-probabilities of the training policy that generated, :math:`(N, T)`.
        sampling_log_probs: The sampler's, :math:`(N, T)`.
        mask: Bool or integer :math:`(N, T)`, ``True`` at completion tokens (default: all).
        mode: ``"token_truncate"`` | ``"token_mask"`` | ``"sequence_truncate"`` | ``"sequence_mask"``
            (TRL's ``vllm_importance_sampling_mode``, default ``"sequence_mask"``).
        clip_min: The lower bound, or ``None`` (TRL's ``vllm_importance_sampling_clip_min``).
        clip_max: The upper bound (TRL's ``vllm_importance_sampling_clip_max``, 3.0), or ``None``.

    Returns:
        :math:`(N, T)` for the token modes, :math:`(N,)` for the sequence modes; detached.

    Raises:
        ValueError: Mismatched shapes, an unknown ``mode``; log-probabilities above 0 at counted
            tokens (value check; NaN sampler values are allowed, see above).

    Examples:
        >>> import math, torch
        >>> from losskit.rl import vllm_importance_sampling_ratio
        >>> old = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
        >>> sampler = torch.log(torch.tensor([[0.25, 0.5], [0.1, 0.5]]))  # sequence ratios 2 and 5
        >>> vllm_importance_sampling_ratio(old, sampler)  # the second exceeds 3: masked
        tensor([2., 0.])

    References:
        Yao et al., "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training", 2025
        (truncated importance sampling). TRL's ``GRPOConfig(vllm_importance_sampling_correction=True)``.
    """
    check_floating("old_log_probs", old_log_probs)
    check_floating("sampling_log_probs", sampling_log_probs)
    if sampling_log_probs.shape != old_log_probs.shape or old_log_probs.dim() != 2:
        raise ValueError(f"old_log_probs and sampling_log_probs must share a shape (N, T), got "
                         f"{tuple(old_log_probs.shape)} and {tuple(sampling_log_probs.shape)}")
    check_one_of("mode", mode, VLLM_IS_MODES)
    low = -math.inf if clip_min is None else check_number("clip_min", clip_min)
    high = math.inf if clip_max is None else check_number("clip_max", clip_max)
    valid = _as_mask(mask, "old_log_probs", old_log_probs)
    _check_log_probs({"old_log_probs": old_log_probs, "sampling_log_probs": sampling_log_probs}, valid)
    diff = torch.nan_to_num((old_log_probs - sampling_log_probs).detach(), nan=0.0)  # unscored tokens: no correction
    if valid is not None:
        diff = torch.where(valid, diff, 0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(-1)
    ratio = diff.exp()
    if mode.endswith("truncate"):
        return ratio.clamp(min=None if clip_min is None else low, max=None if clip_max is None else high)
    return torch.where((ratio < low) | (ratio > high), 0.0, ratio)


__all__ = [
    "Advantages",
    "cpo_loss",
    "discounted_returns",
    "dpo_loss",
    "entropy_bonus",
    "gae",
    "group_advantages",
    "grpo_loss",
    "kl_penalty",
    "kto_loss",
    "ld_dpo_log_probs",
    "normalize_advantages",
    "orpo_loss",
    "ppo_clip_loss",
    "reinforce_loss",
    "simpo_loss",
    "value_loss",
    "vllm_importance_sampling_ratio",
    "wpo_weights",
]
