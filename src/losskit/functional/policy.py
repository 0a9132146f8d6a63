r"""Policy-gradient objectives and the value loss, written as losses to minimize (registry family ``rl``).

**Sign convention.** The papers *maximize* an objective (expected return, a clipped surrogate, a
preference likelihood); every function here returns a *loss*, the negative of that objective,
so that ``loss.backward(); optimizer.step()`` performs gradient ascent on the objective. A
policy-gradient loss is therefore often negative and has no meaningful zero; only its gradient
matters. ``docs/rl.md`` works one example through both conventions.

**Inputs are log-probabilities**, never logits: the log-probability of the token (or action) that
was actually taken, ``log_softmax(logits, -1).gather(-1, tokens)``, shape :math:`(N, T)` for
:math:`N` sequences of :math:`T` (padded) tokens, or :math:`(N,)` for one action per sample.
Preference losses take one log-probability per sequence (summed, or averaged where the paper
says so). Quantities that are constants of the objective (old and reference log-probabilities,
advantages, returns, rewards) are detached inside: no gradient ever flows into them.

**Masks and aggregation.** Token losses take ``mask=`` (bool or integer, ``True``/``1`` where
the token counts, the shape of the log-probabilities; padded positions may hold anything) and
``aggregation=``, which fixes the natural unit that ``reduction`` then reduces:

* ``"token_mean"`` (default): the unit is the token; ``"mean"`` is the mean over every valid
  token of the batch, so long sequences weigh more (DAPO; TRL's ``loss_type="dapo"``). Give
  ``normalizer=`` the token count of all accumulation steps / ranks for the global token mean.
* ``"sequence_mean"``: the unit is the sequence, its loss the mean over its valid tokens;
  ``"mean"`` averages sequences (original GRPO; TRL's ``"grpo"``). A 10-token and a 1000-token
  completion weigh the same, so each token of the short one weighs 100 times more. Sequences
  without a valid token are excluded.
* ``"sequence_sum_norm"``: the unit is the sequence, its loss the sum over its tokens divided
  by a constant ``max_length`` (default: the padded length :math:`T`); ``"mean"`` averages
  sequences (Dr. GRPO; TRL's ``"dr_grpo"``). No length bias, and a constant scale: pass the
  generation budget as ``max_length`` so that it does not change with each batch's padding.

For 1-D inputs each element is its own sequence of length 1.

**Diagnostics.** ``return_diagnostics=True`` makes every function here return
``(loss, diagnostics)``, a dict of detached 0-d tensors (no host sync) holding what
practitioners log: clip fractions and approximate KL (PPO, GRPO), explained variance (value
loss), reward margins and accuracies (preference losses). They are plain (unweighted) means over
the valid tokens or pairs, in the compute dtype (float32 for half inputs).
"""


from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as TF
from torch import Tensor

from losskit._core.checks import (
    check_bool,
    check_floating,
    check_number,
    check_one_of,
    check_tensor,
)
from losskit._core.docs import shared_docs
from losskit._core.numerics import finite_log, log_softmax, safe_divide, upcast
from losskit._core.reduction import Reduction, check_reduction
from losskit.functional._grpo import grpo_loss
from losskit.functional._log_probs import (
    KL_ESTIMATORS,
    Aggregation,
    Diagnostics,
    _as_mask,
    _check_input,
    _check_log_probs,
    _check_same_shape,
    _check_token_options,
    _check_unit_interval_open,
    _clipped_surrogate,
    _finish,
    _kl_estimate,
    _masked_mean,
    _per_token,
    _ppo_diagnostics,
    _result,
    _sequence_log_ratio,
    _zero_masked,
)


def _normalize(advantages: Tensor, mask: Tensor | None, eps: float) -> Tensor:
    """``(A - mean) / (std + eps)`` over the valid entries, with Bessel's correction (as CleanRL and
    Stable-Baselines3); a single valid entry gives 0."""
    valid = None if mask is None or mask.shape != advantages.shape else mask
    if valid is None:
        count = advantages.new_tensor(float(advantages.numel()))
        mean = safe_divide(advantages.sum(), count)
        var = safe_divide(((advantages - mean) ** 2).sum(), count - 1)
    else:
        count = valid.sum().to(advantages.dtype)
        mean = safe_divide(torch.where(valid, advantages, 0.0).sum(), count)
        var = safe_divide(torch.where(valid, (advantages - mean) ** 2, 0.0).sum(), count - 1)
    return (advantages - mean) / (var.sqrt() + eps)


def reinforce_loss(
    log_probs: Tensor,
    returns: Tensor,
    *,
    baseline: float | Tensor | str | None = None,
    normalize_advantages: bool = False,
    mask: Tensor | None = None,
    aggregation: Aggregation = "token_mean",
    max_length: float | None = None,
    return_diagnostics: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor | tuple[Tensor, Diagnostics]:
    r"""REINFORCE policy-gradient loss :math:`-(G - b)\log\pi(a)`, with an optional baseline.

    The score-function estimator: raising the log-probability of an action in proportion to how
    much better than the baseline its return was is an unbiased step up the expected return.
    The baseline :math:`b` (a number, a per-sample tensor such as a value estimate, or
    ``"mean"``, the batch mean of the returns) does not change the expected gradient but lowers
    its variance. Returns and baseline are constants: they are detached.

    .. math::
        \ell_t = -\,(G_t - b_t)\, \log \pi_\theta(a_t \mid s_t)

    The objective :math:`J = \mathbb{E}[G]` has gradient
    :math:`\mathbb{E}[(G - b)\nabla\log\pi]`; this loss has exactly the negative gradient.

    Args:
        log_probs: Log-probabilities of the taken actions or tokens.
        returns: Returns :math:`G`: one per token (the shape of ``log_probs``) or, for 2-D
            ``log_probs``, one per sequence :math:`(N,)`.
        baseline: ``None``, a number, a tensor of the returns' shape, or ``"mean"`` (the mean of
            the returns over the batch's valid entries).
        normalize_advantages: Standardize :math:`G - b` over the batch (see
            :func:`losskit.rl.normalize_advantages`).
        mask: Bool or integer, ``True`` where the token counts (see the module docstring).
        aggregation: ``"token_mean"`` | ``"sequence_mean"`` | ``"sequence_sum_norm"``.
        max_length: The constant divisor of ``"sequence_sum_norm"`` (default: :math:`T`).
        return_diagnostics: Also return ``{"advantage_mean", "advantage_std", "log_prob_mean"}``.
        weight: Weights broadcastable to the natural unit.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - log_probs: :math:`(N,)` or :math:`(N, T)`.
        - returns: the shape of ``log_probs``, or :math:`(N,)`.
        - output: scalar; with ``reduction="none"`` the shape of ``log_probs`` (``"token_mean"``)
          or :math:`(N,)` (sequence aggregations).

    Returns:
        The loss in the input's dtype, or ``(loss, diagnostics)``. Empty input gives 0 with a gradient.

    Raises:
        ValueError: Shapes that do not match, positive log-probabilities (a value check), an
            unknown ``aggregation`` or ``baseline`` string, a bad ``reduction`` or ``normalizer``.
        TypeError: Non-floating inputs, a floating ``mask``.

    Examples:
        >>> import torch, losskit
        >>> log_probs = torch.tensor([-0.5, -2.0])
        >>> losskit.reinforce_loss(log_probs, torch.tensor([3.0, 1.0]), baseline=2.0)  # (-(1)(-0.5) - (-1)(-2)) / 2
        tensor(-0.7500)

    References:
        Williams, "Simple Statistical Gradient-Following Algorithms for Connectionist Reinforcement
        Learning", Machine Learning 1992. Sutton and Barto, "Reinforcement Learning", 2nd ed., 13.4.
    """
    check_reduction(reduction, normalizer)
    _check_input("log_probs", log_probs)
    returns_b = _per_token("returns", returns, "log_probs", log_probs, role="target")
    _check_token_options(aggregation, max_length, return_diagnostics, weight)
    check_bool("normalize_advantages", normalize_advantages)
    mask = _as_mask(mask, "log_probs", log_probs)
    _check_log_probs({"log_probs": log_probs}, mask)
    lp = upcast(log_probs)
    dtype = lp.dtype
    g = upcast(returns).detach().to(dtype)
    seq_mask = mask if mask is None or g.shape == mask.shape else mask.any(-1)
    if isinstance(baseline, str):
        check_one_of("baseline", baseline, ("mean",))
        b = _masked_mean(g, seq_mask)
    elif isinstance(baseline, Tensor):
        if baseline.shape != returns.shape and baseline.numel() != 1:
            raise ValueError(f"baseline must be a number or have the shape of returns {tuple(returns.shape)}, "
                             f"got shape {tuple(baseline.shape)}")
        b = upcast(baseline).detach().to(dtype)
    elif baseline is None:
        b = 0.0
    else:
        b = check_number("baseline", baseline)
    advantages = g - b
    if normalize_advantages:
        advantages = _normalize(advantages, seq_mask, 1e-8)
    if returns_b.shape != returns.shape:  # one return per sequence: the same for each of its tokens
        advantages = advantages.unsqueeze(-1)
    per_token = -advantages * _zero_masked(lp, mask)
    loss = _finish(per_token, mask, aggregation=aggregation, max_length=max_length, weight=weight,
                   reduction=reduction, normalizer=normalizer, input=log_probs,
                   inputs={"log_probs": log_probs, "returns": returns, "baseline": baseline})
    if not return_diagnostics:
        return loss
    adv = advantages.detach()
    adv_mask = mask if mask is None or adv.shape == mask.shape else None
    centred = adv - _masked_mean(adv, adv_mask)
    diagnostics = {"advantage_mean": _masked_mean(adv, adv_mask),
                   "advantage_std": _masked_mean(centred**2, adv_mask).sqrt(),
                   "log_prob_mean": _masked_mean(lp, mask)}
    return loss, diagnostics



# The argument text every token-level objective here shares.
_docs = shared_docs(
    token_args='''
mask: Bool or integer, ``True`` where the token counts.
        aggregation: ``"token_mean"`` | ``"sequence_mean"`` | ``"sequence_sum_norm"``.
        max_length: The constant divisor of ``"sequence_sum_norm"``.
''',
    reduction_args='''
weight: Weights broadcastable to the natural unit.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.
''',
)

@_docs
def ppo_clip_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    *,
    advantages: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    ratio_level: Literal["token", "sequence"] = "token",
    normalize_advantages: bool = False,
    mask: Tensor | None = None,
    aggregation: Aggregation = "token_mean",
    max_length: float | None = None,
    return_diagnostics: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor | tuple[Tensor, Diagnostics]:
    r"""PPO's clipped surrogate loss, with separate low/high clip bounds and optional dual clipping.

    The importance ratio :math:`r = \pi_\theta / \pi_{\theta_\text{old}}` reweights data
    collected by the old policy; clipping it to :math:`[1-\epsilon_\text{low}, 1+\epsilon_\text{high}]`
    and taking the pessimistic minimum removes the incentive to move the policy further once a
    sample's ratio has moved past the bound in the direction its advantage favours: the gradient
    of such a sample is exactly 0. A larger ``clip_eps_high`` than ``clip_eps`` ("clip-higher",
    DAPO) lets unlikely tokens with positive advantage grow. Dual clipping (``dual_clip=c``,
    :math:`c > 1`) also bounds the loss of negative-advantage samples whose ratio has exploded.

    .. math::
        r_t = \exp(\log\pi_\theta(a_t) - \log\pi_{\theta_\text{old}}(a_t)), \qquad
        \ell_t = -\min\big(r_t A_t,\ \mathrm{clip}(r_t, 1-\epsilon_\text{low}, 1+\epsilon_\text{high}) A_t\big)

        \ell_t^\text{dual} = \min(\ell_t,\ -c A_t) \quad\text{where } A_t < 0

    With ``ratio_level="sequence"`` (GSPO) every token of a sequence shares the length-normalized
    sequence ratio :math:`\exp\big(\tfrac{1}{|y|}\sum_t (\log\pi_\theta - \log\pi_\text{old})\big)`.
    Log-ratios are clamped to :math:`\pm 20` before the exponential (such ratios are clipped
    anyway), which keeps values and gradients finite.

    Args:
        log_probs: Log-probabilities of the taken actions under the current policy.
        old_log_probs: The same under the policy that collected the data (detached).
        advantages: Advantages: the shape of ``log_probs``, or :math:`(N,)` for 2-D input (one
            per sequence). Detached.
        clip_eps: :math:`\epsilon_\text{low}` (and :math:`\epsilon_\text{high}` unless given), in
            :math:`[0, 1)`.
        clip_eps_high: :math:`\epsilon_\text{high}` (DAPO's clip-higher uses 0.28 with 0.2).
        dual_clip: The dual-clip constant :math:`c > 1` (3 in Ye et al.), or ``None``.
        ratio_level: ``"token"`` (PPO) or ``"sequence"`` (GSPO).
        normalize_advantages: Standardize the advantages over the batch's valid entries first
            (once, before both surrogate terms).
        {token_args}
        return_diagnostics: Also return ``clip_fraction`` (and its ``_low`` / ``_high`` parts),
            ``approx_kl`` (the k3 estimate of KL(old || new)), ``ratio_mean`` and, with
            ``dual_clip``, ``dual_clip_fraction``.
        {reduction_args}

    Shape:
        - log_probs, old_log_probs: :math:`(N,)` or :math:`(N, T)`.
        - output: scalar; with ``reduction="none"`` the input's shape (``"token_mean"``) or :math:`(N,)`.

    Returns:
        The loss in the input's dtype, or ``(loss, diagnostics)``. Empty input gives 0 with a gradient.

    Raises:
        ValueError: Mismatched shapes, options out of range, positive log-probabilities (value check).
        TypeError: Non-floating inputs, a floating ``mask``.

    Examples:
        >>> import torch, losskit
        >>> old = torch.log(torch.tensor([0.5, 0.5]))
        >>> new = torch.log(torch.tensor([0.75, 0.25]))  # ratios 1.5 and 0.5
        >>> losskit.ppo_clip_loss(new, old, advantages=torch.tensor([1.0, -1.0]), reduction="none")
        tensor([-1.2000,  0.8000])

    References:
        Schulman et al., "Proximal Policy Optimization Algorithms", 2017. Ye et al., "Mastering Complex
        Control in MOBA Games with Deep Reinforcement Learning" (dual clip), AAAI 2020. Yu et al.,
        "DAPO" (clip-higher, token mean), 2025. Zheng et al., "Group Sequence Policy Optimization", 2025.
        The defaults are CleanRL's and TRL's (``epsilon=0.2``, ``importance_sampling_level="token"``).
    """
    check_reduction(reduction, normalizer)
    _check_input("log_probs", log_probs)
    _check_same_shape("log_probs", log_probs, "old_log_probs", old_log_probs)
    check_tensor("advantages", advantages)
    _per_token("advantages", advantages, "log_probs", log_probs)
    _check_token_options(aggregation, max_length, return_diagnostics, weight)
    clip_low = _check_unit_interval_open("clip_eps", clip_eps)
    clip_high = clip_low if clip_eps_high is None else check_number("clip_eps_high", clip_eps_high, low=0.0)
    if dual_clip is not None:
        dual_clip = check_number("dual_clip", dual_clip, low=1.0, low_open=True)
    check_one_of("ratio_level", ratio_level, ("token", "sequence"))
    check_bool("normalize_advantages", normalize_advantages)
    mask = _as_mask(mask, "log_probs", log_probs)
    _check_log_probs({"log_probs": log_probs, "old_log_probs": old_log_probs}, mask)

    lp = _zero_masked(upcast(log_probs), mask)
    dtype = lp.dtype
    old = _zero_masked(upcast(old_log_probs).detach().to(dtype), mask)
    adv = upcast(advantages).detach().to(dtype)
    if normalize_advantages:
        adv = _normalize(adv, mask if adv.shape == lp.shape else None, 1e-8)
    adv = adv if adv.shape == lp.shape else adv.unsqueeze(-1)
    log_ratio = lp - old
    if ratio_level == "sequence":
        log_ratio = _sequence_log_ratio(log_ratio, mask)
    per_token, ratio = _clipped_surrogate(log_ratio, adv, clip_low, clip_high, dual_clip)
    loss = _finish(per_token, mask, aggregation=aggregation, max_length=max_length, weight=weight,
                   reduction=reduction, normalizer=normalizer, input=log_probs,
                   inputs={"log_probs": log_probs, "old_log_probs": old_log_probs, "advantages": advantages})
    if not return_diagnostics:
        return loss
    return loss, _ppo_diagnostics(ratio, log_ratio, adv.expand_as(lp), mask, clip_low, clip_high, dual_clip)


@_docs
def value_loss(
    values: Tensor,
    returns: Tensor,
    *,
    old_values: Tensor | None = None,
    clip_eps: float | None = None,
    delta: float | None = None,
    mask: Tensor | None = None,
    aggregation: Aggregation = "token_mean",
    max_length: float | None = None,
    return_diagnostics: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor | tuple[Tensor, Diagnostics]:
    r"""Value-function (critic) loss: squared (or Huber) error to the returns, with optional PPO clipping.

    Regresses the value predictions :math:`V` onto the value targets :math:`R` (returns, or GAE's
    ``advantages + values``). With ``clip_eps`` the prediction may move at most
    :math:`\epsilon` away from the prediction recorded at rollout time, ``old_values``, and the
    pessimistic maximum of the clipped and unclipped errors is taken (PPO2, CleanRL, TRL).

    .. math::
        V^\text{clip} = V_\text{old} + \mathrm{clip}(V - V_\text{old}, -\epsilon, \epsilon), \qquad
        \ell = \max\big(\rho(V - R),\ \rho(V^\text{clip} - R)\big)

    with :math:`\rho(e) = e^2` (``delta=None``) or Huber with ``delta``. Without ``clip_eps``,
    :math:`\ell = \rho(V - R)`. There is no factor 1/2: CleanRL, TRL and OpenAI baselines
    multiply this by 0.5 (then by ``vf_coef``); Stable-Baselines3 does not.

    **Clipping needs the values recorded when the data was collected.** ``old_values`` recomputed
    from the current network equal ``values``, and the clipping silently does nothing (a known
    bug in tf-agents); a tensor that requires grad is therefore rejected. ``values``,
    ``returns`` and ``old_values`` must share one scale: with value normalization, clip in the
    normalized space and pass normalized returns (``clip_eps`` is in that space).

    Args:
        values: Value predictions :math:`V` of the current network.
        returns: Targets :math:`R`, the shape of ``values`` (detached).
        old_values: Predictions recorded at rollout time; required with ``clip_eps``.
        clip_eps: The clip range :math:`\epsilon > 0`, or ``None`` for no clipping.
        delta: Huber threshold, or ``None`` for the squared error.
        mask: Bool or integer, ``True`` where the entry counts.
        aggregation: ``"token_mean"`` | ``"sequence_mean"`` | ``"sequence_sum_norm"``.
        max_length: The constant divisor of ``"sequence_sum_norm"``.
        return_diagnostics: Also return ``explained_variance`` (:math:`1 - \mathrm{Var}[R - V] /
            \mathrm{Var}[R]`, NaN when the returns are constant, as in Stable-Baselines3),
            ``value_clip_fraction`` (where the clipped error is the larger) and ``value_mean``.
        {reduction_args}

    Shape:
        - values, returns, old_values: :math:`(N,)` or :math:`(N, T)`.
        - output: scalar; with ``reduction="none"`` the input's shape (``"token_mean"``) or :math:`(N,)`.

    Returns:
        The loss in the input's dtype, or ``(loss, diagnostics)``. Empty input gives 0 with a gradient.

    Raises:
        ValueError: Mismatched shapes, ``clip_eps`` without ``old_values``, ``old_values`` that
            require grad, options out of range.
        TypeError: Non-floating inputs, a floating ``mask``.

    Examples:
        >>> import torch, losskit
        >>> v, r, v_old = torch.tensor([1.5]), torch.tensor([0.0]), torch.tensor([1.0])
        >>> losskit.value_loss(v, r)  # 1.5^2
        tensor(2.2500)
        >>> losskit.value_loss(v, r, old_values=v_old, clip_eps=0.2)  # max(1.5^2, 1.2^2)
        tensor(2.2500)
        >>> losskit.value_loss(torch.tensor([0.5]), r, old_values=v_old, clip_eps=0.2)  # max(0.5^2, 0.8^2)
        tensor(0.6400)

    References:
        Schulman et al., "Proximal Policy Optimization Algorithms", 2017 (the value term); the
        clipped form is OpenAI baselines' PPO2 (Dhariwal et al., 2017), studied in Engstrom et al.,
        "Implementation Matters in Deep Policy Gradients", ICLR 2020.
    """
    check_reduction(reduction, normalizer)
    _check_input("values", values)
    _check_same_shape("values", values, "returns", returns)
    _check_token_options(aggregation, max_length, return_diagnostics, weight)
    if delta is not None:
        delta = check_number("delta", delta, low=0.0, low_open=True)
    if clip_eps is not None:
        clip_eps = check_number("clip_eps", clip_eps, low=0.0, low_open=True)
        if old_values is None:
            raise ValueError("clip_eps needs old_values: the value predictions recorded when the data was "
                             "collected")
    if old_values is not None:
        _check_same_shape("values", values, "old_values", old_values, role="")
        if old_values.requires_grad:
            raise ValueError("old_values requires grad: pass the value predictions recorded when the data was "
                             "collected, detached; recomputed from the current network they equal values and "
                             "make the clipping a no-op")
    mask = _as_mask(mask, "values", values)
    v = _zero_masked(upcast(values), mask)
    dtype = v.dtype
    r = _zero_masked(upcast(returns).detach().to(dtype), mask)

    def rho(e: Tensor) -> Tensor:
        if delta is None:
            return e * e
        return TF.huber_loss(e, torch.zeros_like(e), reduction="none", delta=delta)

    per_token = rho(v - r)
    clipped_active = None
    if clip_eps is not None:
        v_old = _zero_masked(upcast(old_values).to(dtype), mask)
        v_clipped = v_old + (v - v_old).clamp(-clip_eps, clip_eps)
        clipped = rho(v_clipped - r)
        clipped_active = clipped > per_token
        per_token = torch.maximum(per_token, clipped)
    inputs = {"values": values, "returns": returns, "old_values": old_values}
    loss = _finish(per_token, mask, aggregation=aggregation, max_length=max_length, weight=weight,
                   reduction=reduction, normalizer=normalizer, input=values, inputs=inputs)
    if not return_diagnostics:
        return loss
    vd = v.detach()
    var_r = _masked_mean((r - _masked_mean(r, mask)) ** 2, mask)
    err = r - vd
    var_err = _masked_mean((err - _masked_mean(err, mask)) ** 2, mask)
    explained = torch.where(var_r > 0, 1 - var_err / torch.where(var_r > 0, var_r, 1.0), float("nan"))
    diagnostics = {"explained_variance": explained, "value_mean": _masked_mean(vd, mask)}
    if clipped_active is not None:
        diagnostics["value_clip_fraction"] = _masked_mean(clipped_active.to(dtype), mask)
    return loss, diagnostics


@_docs
def entropy_bonus(
    logits: Tensor,
    *,
    mask: Tensor | None = None,
    aggregation: Aggregation = "token_mean",
    max_length: float | None = None,
    return_diagnostics: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor | tuple[Tensor, Diagnostics]:
    r"""The entropy bonus as a loss: the negative entropy :math:`-H(\pi)` of the policy at each position.

    An entropy *bonus* :math:`+c\,H` in the objective is the term :math:`c \cdot` ``entropy_bonus``
    in the loss: minimizing :math:`-H` keeps the policy from collapsing early. Computed exactly
    from the logits over the last dimension (log-probabilities work too), in log space: a masked
    ``-inf`` logit contributes 0.

    .. math::
        \ell_t = -H(\pi_t) = \sum_a \pi_t(a) \log \pi_t(a), \qquad \pi_t = \mathrm{softmax}(x_t)

    Args:
        logits: Logits (or log-probabilities) over the actions or the vocabulary, last dimension.
        mask: Bool or integer of the shape without the last dimension, ``True`` where the position counts.
        aggregation: ``"token_mean"`` | ``"sequence_mean"`` | ``"sequence_sum_norm"``.
        max_length: The constant divisor of ``"sequence_sum_norm"``.
        return_diagnostics: Also return ``{"entropy"}``, the mean entropy.
        {reduction_args}

    Shape:
        - logits: :math:`(N, A)` or :math:`(N, T, V)`.
        - output: scalar; with ``reduction="none"`` :math:`(N,)` / :math:`(N, T)` (``"token_mean"``)
          or :math:`(N,)` (sequence aggregations).

    Returns:
        The loss (:math:`\le 0`) in the input's dtype, or ``(loss, diagnostics)``. Empty input gives 0.

    Raises:
        ValueError: A 1-D input (it needs a batch and an action dimension), a mismatched mask.
        TypeError: A non-floating input, a floating ``mask``.

    Examples:
        >>> import torch, losskit
        >>> losskit.entropy_bonus(torch.zeros(1, 4))  # uniform over 4: -ln 4
        tensor(-1.3863)

    References:
        Williams and Peng, "Function Optimization using Connectionist Reinforcement Learning
        Algorithms", 1991; Mnih et al., "Asynchronous Methods for Deep Reinforcement Learning"
        (A3C), 2016. Stable-Baselines3's ``entropy_loss`` is the same sign.
    """
    check_reduction(reduction, normalizer)
    check_floating("logits", logits)
    if logits.dim() < 2:
        raise ValueError(f"logits must have shape (N, A) or (N, T, V), the actions last; got shape "
                         f"{tuple(logits.shape)}")
    _check_token_options(aggregation, max_length, return_diagnostics, weight)
    positions = logits[..., 0]
    mask = _as_mask(mask, "logits without its last dimension", positions)
    x = upcast(logits)
    log_p = finite_log(log_softmax(x, -1))
    neg_entropy = (log_p.exp() * log_p).sum(-1)
    loss = _finish(neg_entropy, mask, aggregation=aggregation, max_length=max_length, weight=weight,
                   reduction=reduction, normalizer=normalizer, input=logits, inputs={"logits": logits})
    return _result(loss, {"entropy": _masked_mean(-neg_entropy, mask)}, return_diagnostics)


@_docs
def kl_penalty(
    log_probs: Tensor,
    ref_log_probs: Tensor,
    *,
    estimator: Literal["k1", "k2", "k3"] = "k3",
    mask: Tensor | None = None,
    aggregation: Aggregation = "token_mean",
    max_length: float | None = None,
    return_diagnostics: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor | tuple[Tensor, Diagnostics]:
    r"""Sample estimate of :math:`\mathrm{KL}(\pi_\theta \,\|\, \pi_\text{ref})` from sampled tokens' log-probs.

    With only the log-probabilities of tokens sampled from :math:`\pi_\theta`, the KL to a
    reference policy is estimated per token from :math:`\log \rho = \log\pi_\text{ref} - \log\pi_\theta`
    (Schulman's three estimators):

    .. math::
        k_1 = -\log\rho, \qquad k_2 = \tfrac12 (\log\rho)^2, \qquad k_3 = (\rho - 1) - \log\rho

    :math:`k_1` is unbiased but can be negative, with high variance; :math:`k_2` is non-negative,
    biased, low-variance; :math:`k_3` is unbiased *and* non-negative (:math:`e^x - 1 - x \ge 0`)
    with low variance: GRPO's KL term and the default. Log-ratios are clamped to :math:`\pm 20`.
    ``ref_log_probs`` are detached.

    Args:
        log_probs: Log-probabilities of the sampled tokens under the policy.
        ref_log_probs: The same under the reference policy.
        estimator: ``"k1"`` | ``"k2"`` | ``"k3"``.
        {token_args}
        return_diagnostics: Also return ``{"kl_k1", "kl_k3"}``, the means of both estimates.
        {reduction_args}

    Shape:
        - log_probs, ref_log_probs: :math:`(N,)` or :math:`(N, T)`.
        - output: scalar; with ``reduction="none"`` the input's shape (``"token_mean"``) or :math:`(N,)`.

    Returns:
        The loss in the input's dtype, or ``(loss, diagnostics)``. Empty input gives 0 with a gradient.

    Raises:
        ValueError: Mismatched shapes, an unknown estimator, positive log-probabilities (value check).
        TypeError: Non-floating inputs, a floating ``mask``.

    Examples:
        >>> import torch, losskit
        >>> lp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])  # log rho = -1
        >>> losskit.kl_penalty(lp, ref, estimator="k1"), losskit.kl_penalty(lp, ref)  # 1, e^-1 - 1 + 1
        (tensor(1.), tensor(0.3679))

    References:
        Schulman, "Approximating KL Divergence", blog post, 2020 (http://joschu.net/blog/kl-approx.html).
        Shao et al., "DeepSeekMath" (GRPO's k3 term), 2024.
    """
    check_reduction(reduction, normalizer)
    _check_input("log_probs", log_probs)
    _check_same_shape("log_probs", log_probs, "ref_log_probs", ref_log_probs)
    check_one_of("estimator", estimator, KL_ESTIMATORS)
    _check_token_options(aggregation, max_length, return_diagnostics, weight)
    mask = _as_mask(mask, "log_probs", log_probs)
    _check_log_probs({"log_probs": log_probs, "ref_log_probs": ref_log_probs}, mask)
    lp = _zero_masked(upcast(log_probs), mask)
    ref = _zero_masked(upcast(ref_log_probs).detach().to(lp.dtype), mask)
    per_token = _kl_estimate(lp, ref, estimator)
    loss = _finish(per_token, mask, aggregation=aggregation, max_length=max_length, weight=weight,
                   reduction=reduction, normalizer=normalizer, input=log_probs,
                   inputs={"log_probs": log_probs, "ref_log_probs": ref_log_probs})
    if not return_diagnostics:
        return loss
    return loss, {"kl_k1": _masked_mean(_kl_estimate(lp, ref, "k1"), mask),
                  "kl_k3": _masked_mean(_kl_estimate(lp, ref, "k3"), mask)}


__all__ = ["entropy_bonus", "grpo_loss", "kl_penalty", "ppo_clip_loss", "reinforce_loss", "value_loss"]
