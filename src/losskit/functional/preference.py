r"""Preference objectives (DPO, SimPO, ORPO, CPO, KTO), written as losses to minimize (registry
family ``preference``).

The sign convention, the log-probability inputs and the diagnostics are those of
:mod:`losskit.functional.policy`: every function returns the negative of the paper's objective,
takes one log-probability per sequence (summed, or averaged where the paper says so), detaches
the reference log-probabilities inside, and with ``return_diagnostics=True`` returns
``(loss, diagnostics)`` with reward margins and accuracies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as TF
from torch import Tensor

from losskit._core.checks import (
    check_bool,
    check_floating,
    check_number,
    check_one_of,
    checks_enabled,
)
from losskit._core.numerics import eps as dtype_eps
from losskit._core.numerics import safe_divide, upcast
from losskit._core.reduction import Reduction, check_reduction, reduce_loss
from losskit.functional._dpo_variants import (
    DPO_VARIANTS,
    F_DIVERGENCE_VARIANTS,
    F_DIVERGENCES,
    LOSSES,
    SMOOTHED_VARIANTS,
    _Pair,
    _smoothed,
    f_scores,
)
from losskit.functional._log_probs import (
    Diagnostics,
    _check_log_probs,
    _check_same_shape,
    _masked_mean,
    _preference_options,
    _result,
    check_pair_inputs,
    check_variants,
)

KTO_VARIANTS: tuple[str, ...] = ("kto", "apo_zero_unpaired")
CPO_VARIANTS: tuple[str, ...] = ("sigmoid", "hinge", "ipo", "simpo", "alphapo")
# TRL's CPOTrainer averages the log-probabilities over the tokens for these loss types
# (get_batch_logps(average_log_prob=loss_type in ("ipo", "simpo")); "alphapo" is "simpo").
_CPO_AVERAGED = frozenset({"ipo", "simpo", "alphapo"})
# The loss types whose logistic loss reads label_smoothing (TRL ignores it in hinge and ipo).
_CPO_SMOOTHED = frozenset({"sigmoid", "simpo", "alphapo"})


def _length_normalized(x: Tensor, lengths: Tensor | None, dtype: torch.dtype) -> Tensor:
    return x if lengths is None else safe_divide(x, upcast(lengths).to(dtype))


def _simpo_term(chosen: Tensor, rejected: Tensor, beta: float, gamma: float, label_smoothing: float) -> Tensor:
    """SimPO's per-pair loss ``-(1 - s) log sigmoid(z) - s log sigmoid(-z)``, ``z = beta (c - r) - gamma``."""
    return _smoothed(beta * (chosen - rejected) - gamma, label_smoothing)


def _pair_diagnostics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Diagnostics:
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    return {"rewards_chosen": _masked_mean(c, None), "rewards_rejected": _masked_mean(r, None),
            "reward_margin": _masked_mean(c - r, None), "reward_accuracy": _masked_mean((c > r).to(c.dtype), None)}


def dpo_loss(
    chosen_log_probs: Tensor,
    rejected_log_probs: Tensor,
    *,
    ref_chosen_log_probs: Tensor | None = None,
    ref_rejected_log_probs: Tensor | None = None,
    beta: float = 0.1,
    variant: str | Sequence[str] = "sigmoid",
    variant_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 1.0,
    discopop_tau: float = 0.05,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    wpo_weights: Tensor | None = None,
    return_diagnostics: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor | tuple[Tensor, Diagnostics]:
    r"""Direct Preference Optimization and its variants: TRL's ``DPOTrainer`` loss types, one pair at a time.

    DPO shows that the KL-regularized reward-maximizing policy defines an implicit reward
    :math:`\beta \log \pi_\theta(y) / \pi_\text{ref}(y)`; fitting the Bradley-Terry model of the
    preference data with that reward gives a logistic loss on the margin between the chosen
    :math:`y_w` and the rejected :math:`y_l` completion. With the log-ratios
    :math:`c = \log\frac{\pi_\theta(y_w)}{\pi_\text{ref}(y_w)}` and
    :math:`r = \log\frac{\pi_\theta(y_l)}{\pi_\text{ref}(y_l)}`,
    the scores :math:`f'(e^c), f'(e^r)` (``f_divergence_type``; the log-ratios themselves for the
    default reverse KL) and their difference :math:`h = f'(e^c) - f'(e^r)`:

    .. math::
        \text{sigmoid:}\ -(1-s)\log\sigma(\beta h) - s\log\sigma(-\beta h) \qquad
        \text{hinge:}\ \max(0, 1 - \beta h) \qquad
        \text{ipo:}\ \big(h - \tfrac{1}{2\beta}\big)^2

        \text{robust:}\ \frac{-(1-s)\log\sigma(\beta h) + s\log\sigma(-\beta h)}{1 - 2s} \qquad
        \text{exo\_pair:}\ \sigma(\beta h)\log\frac{\sigma(\beta h)}{1-s}
            + \sigma(-\beta h)\log\frac{\sigma(-\beta h)}{s}

        \text{nca\_pair:}\ -\log\sigma(\beta c) - \tfrac12\log\sigma(-\beta c) - \tfrac12\log\sigma(-\beta r) \qquad
        \text{bco\_pair:}\ -\log\sigma(\beta c) - \log\sigma(-\beta r)

        \text{sppo\_hard:}\ \big(c - \tfrac{1}{2\beta}\big)^2 + \big(r + \tfrac{1}{2\beta}\big)^2 \qquad
        \text{apo\_zero:}\ 1 - \sigma(\beta c) + \sigma(\beta r) \qquad
        \text{apo\_down:}\ \sigma(\beta c) + 1 - \sigma(\beta (c - r))

        \text{discopop:}\ (1 - g)\,(-\log\sigma(\beta h)) + g\, e^{-\beta h},\ g = \sigma(\beta h / \tau) \qquad
        \text{sigmoid\_norm:}\ -\log\sigma\Big(\beta\Big(\frac{f'(e^c)}{|y_w|} - \frac{f'(e^r)}{|y_l|}\Big)\Big)

    ``aot`` is the smoothed sigmoid loss on the batch's *sorted* policy margins minus its sorted
    reference margins, ``aot_unpaired`` on sorted :math:`c` minus sorted :math:`r` (each pair's
    loss then depends on the whole batch). ``sft`` is the negative mean log-probability over all
    the chosen tokens of the batch, :math:`-\sum_i \log\pi_\theta(y_{w,i}) / \sum_i |y_{w,i}|`,
    repeated for every pair (as TRL). With ``chosen_lengths`` and ``rejected_lengths`` (token
    counts), ``ipo`` divides each score by its length as TRL does; without, it is the paper's.

    A list of variants with ``variant_weights`` is TRL's MPO (``loss_type=[...]``,
    ``loss_weights=[...]``): each pair's loss is :math:`\sum_k w_k \ell_k`. ``wpo_weights`` (one
    per pair, detached) multiply each pair's loss: WPO's :math:`w(y_w) w(y_l)`, from
    :func:`losskit.rl.wpo_weights`. Without reference log-probabilities the reference terms
    are 0 (TRL's ``reference_free=True``). The reference log-probabilities are detached; both
    policy log-probabilities receive gradients.

    Args:
        chosen_log_probs: :math:`\log\pi_\theta(y_w \mid x)`, summed over the completion's tokens
            (for LD-DPO, see :func:`losskit.rl.ld_dpo_log_probs`).
        rejected_log_probs: :math:`\log\pi_\theta(y_l \mid x)`, the same shape.
        ref_chosen_log_probs: :math:`\log\pi_\text{ref}(y_w \mid x)`, or ``None`` (with the next) for none.
        ref_rejected_log_probs: :math:`\log\pi_\text{ref}(y_l \mid x)`.
        beta: :math:`\beta > 0`, the strength of the implicit KL constraint (0.1, as TRL and Liger).
        variant: A TRL ``loss_type``: ``"sigmoid"`` | ``"hinge"`` | ``"ipo"`` | ``"exo_pair"`` |
            ``"nca_pair"`` | ``"robust"`` | ``"bco_pair"`` | ``"sppo_hard"`` | ``"aot"`` |
            ``"aot_unpaired"`` | ``"apo_zero"`` | ``"apo_down"`` | ``"discopop"`` | ``"sft"`` |
            ``"sigmoid_norm"``, or a list of them (MPO).
        variant_weights: One weight :math:`w_k \ge 0` per variant (default 1 each).
        label_smoothing: :math:`s \in [0, 0.5)`, read by sigmoid (cDPO), robust, exo_pair (where it must
            be positive), aot and aot_unpaired.
        f_divergence_type: ``"reverse_kl"`` | ``"forward_kl"`` (:math:`f'(u) = 1 - 1/u`) |
            ``"js_divergence"`` (:math:`\log\frac{2u}{1+u}`) | ``"alpha_divergence"``
            (:math:`\frac{u^{\alpha-1} - 1}{\alpha - 1}`), for sigmoid, sigmoid_norm, hinge, ipo,
            exo_pair, robust, discopop and sft only.
        f_alpha_divergence_coef: :math:`\alpha` of the alpha divergence (1.0: reverse KL).
        discopop_tau: :math:`\tau > 0` of discopop (0.05, as TRL).
        chosen_lengths: Token counts of the chosen completions (needed by sigmoid_norm; used by ipo and sft).
        rejected_lengths: Token counts of the rejected completions.
        wpo_weights: Per-pair factors :math:`\ge 0` multiplying each pair's loss (detached), or ``None``.
        return_diagnostics: Also return ``rewards_chosen`` and ``rewards_rejected`` (means of
            :math:`\beta \log\pi_\theta/\pi_\text{ref}`), ``reward_margin`` and ``reward_accuracy``
            (the fraction of pairs whose chosen reward is the larger), as TRL logs them.
        weight: Per-pair weights (of the weighted mean).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - all log-probabilities, lengths and ``wpo_weights``: :math:`(N,)` (any shape, elementwise).
        - output: scalar, or :math:`(N,)` with ``reduction="none"``.

    Returns:
        The loss in the input's dtype, or ``(loss, diagnostics)``. Empty input gives 0 with a gradient.

    Raises:
        ValueError: Mismatched shapes (chosen and rejected of different sizes), only one of the two
            reference or length tensors, an unknown ``variant`` (with the closest names),
            ``variant_weights`` that do not pair with the variants, ``label_smoothing`` with no
            variant that reads it, ``exo_pair`` without it, an f-divergence with a variant that has
            none, ``sigmoid_norm`` without lengths, positive log-probabilities (value check),
            options out of range.
        TypeError: Non-floating inputs, a ``variant`` that is not a name or a list of names.

    Examples:
        >>> import torch, losskit
        >>> chosen, rejected = torch.tensor([-10.0]), torch.tensor([-12.0])
        >>> ref_c, ref_r = torch.tensor([-11.0]), torch.tensor([-11.0])  # c = 1, r = -1, h = 2
        >>> losskit.dpo_loss(chosen, rejected, ref_chosen_log_probs=ref_c, ref_rejected_log_probs=ref_r)
        tensor(0.5981)
        >>> losskit.dpo_loss(chosen, rejected, ref_chosen_log_probs=ref_c, ref_rejected_log_probs=ref_r,
        ...                  variant="apo_zero")  # 1 - sigmoid(0.1) + sigmoid(-0.1)
        tensor(0.9500)
        >>> losskit.dpo_loss(chosen, rejected, ref_chosen_log_probs=ref_c, ref_rejected_log_probs=ref_r,
        ...                  variant=["sigmoid", "bco_pair"], variant_weights=[0.5, 1.0])  # 0.5 (0.5981) + 2 (0.6444)
        tensor(1.5878)

    References:
        Rafailov et al., "Direct Preference Optimization", NeurIPS 2023 (and the cDPO note, 2023).
        Zhao et al., "SLiC-HF", 2023 (hinge). Azar et al., "A General Theoretical Paradigm to
        Understand Learning from Human Preferences", 2023 (IPO). Ji et al., "Towards Efficient
        Exact Optimization of Language Model Alignment", 2024 (EXO). Chen et al., "Noise Contrastive
        Alignment", 2024 (NCA). Chowdhury et al., "Provably Robust DPO", 2024. Jung et al., "Binary
        Classifier Optimization", 2024 (BCO). Wu et al., "Self-Play Preference Optimization", 2024
        (SPPO). Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal Transport",
        2024 (AOT). D'Oosterlinck et al., "Anchored Preference Optimization", 2024 (APO). Chris Lu
        et al., "Discovering Preference Optimization Algorithms with and for Large Language
        Models", 2024 (DiscoPOP). Wang et al., "Beyond Reverse KL: Generalizing DPO with Diverse
        Divergence Constraints", 2023 (f-DPO). Wang et al., "Enhancing Multimodal LLM with Mixed
        Preference Optimization", 2024 (MPO). Zhou et al., "WPO: Enhancing RLHF with Weighted
        Preference Optimization", 2024. The names, formulas and defaults are those of TRL 1.x's
        ``DPOTrainer`` (``loss_type``, ``loss_weights``, ``f_divergence_type``,
        ``f_alpha_divergence_coef``, ``discopop_tau``); ``docs/families/preference.md`` lists where
        TRL departs from the papers.
    """
    beta, label_smoothing = check_pair_inputs(
        chosen_log_probs, rejected_log_probs, reduction=reduction, normalizer=normalizer, beta=beta,
        label_smoothing=label_smoothing, return_diagnostics=return_diagnostics, weight=weight,
        refs=(ref_chosen_log_probs, ref_rejected_log_probs), lengths=(chosen_lengths, rejected_lengths))
    mixture = check_variants(variant, variant_weights, DPO_VARIANTS)
    names = {name for name, _ in mixture}
    _check_dpo_options(names, label_smoothing, f_divergence_type, chosen_lengths)
    alpha = check_number("f_alpha_divergence_coef", f_alpha_divergence_coef)
    tau = check_number("discopop_tau", discopop_tau, low=0.0, low_open=True)
    if wpo_weights is not None:
        _check_same_shape("chosen_log_probs", chosen_log_probs, "wpo_weights", wpo_weights, role="")
    c = upcast(chosen_log_probs)
    dtype = c.dtype
    r = upcast(rejected_log_probs).to(dtype)
    if ref_chosen_log_probs is not None:
        c_ratio = c - upcast(ref_chosen_log_probs).detach().to(dtype)
        r_ratio = r - upcast(ref_rejected_log_probs).detach().to(dtype)
    else:
        c_ratio, r_ratio = c, r
    pair = _Pair(c, r, c_ratio, r_ratio, f_scores(c_ratio, f_divergence_type, alpha),
                 f_scores(r_ratio, f_divergence_type, alpha), chosen_lengths, rejected_lengths, beta,
                 label_smoothing, tau)
    loss = sum(w * LOSSES[name](pair) for name, w in mixture)
    if wpo_weights is not None:
        loss = loss * upcast(wpo_weights).detach().to(dtype)
    out = reduce_loss(loss, reduction, weight=weight, normalizer=normalizer, out_dtype=chosen_log_probs.dtype,
                      inputs={"chosen_log_probs": chosen_log_probs, "rejected_log_probs": rejected_log_probs,
                              "ref_chosen_log_probs": ref_chosen_log_probs,
                              "ref_rejected_log_probs": ref_rejected_log_probs})
    if not return_diagnostics:
        return out
    return out, _pair_diagnostics(beta * c_ratio, beta * r_ratio)


def _check_dpo_options(names: set[str], label_smoothing: float, f_divergence_type: object,
                       lengths: Tensor | None) -> None:
    if label_smoothing and not names & SMOOTHED_VARIANTS:
        raise ValueError(f"label_smoothing applies to variant {sorted(SMOOTHED_VARIANTS)} only, got variant "
                         f"{sorted(names)}")
    if "exo_pair" in names and not label_smoothing:
        raise ValueError("variant='exo_pair' needs label_smoothing > 0 (its target distribution (1 - s, s); "
                         "the EXO paper uses 1e-3)")
    check_one_of("f_divergence_type", f_divergence_type, F_DIVERGENCES)
    if f_divergence_type != "reverse_kl" and not names <= F_DIVERGENCE_VARIANTS:
        raise ValueError(f"f_divergence_type={f_divergence_type!r} applies to variant "
                         f"{sorted(F_DIVERGENCE_VARIANTS)} only, got {sorted(names - F_DIVERGENCE_VARIANTS)}")
    if "sigmoid_norm" in names and lengths is None:
        raise ValueError("variant='sigmoid_norm' divides each score by its completion's length: pass "
                         "chosen_lengths and rejected_lengths")


def simpo_loss(
    chosen_log_probs: Tensor,
    rejected_log_probs: Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 0.5,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    label_smoothing: float = 0.0,
    return_diagnostics: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor | tuple[Tensor, Diagnostics]:
    r"""SimPO: a reference-free preference loss on length-normalized log-probabilities with a target margin.

    SimPO replaces DPO's implicit reward by the *average* per-token log-probability, which is
    what generation ranks by, needs no reference model, and asks the chosen completion to win by
    a margin :math:`\gamma`:

    .. math::
        z = \frac{\beta}{|y_w|}\log\pi_\theta(y_w) - \frac{\beta}{|y_l|}\log\pi_\theta(y_l) - \gamma, \qquad
        \ell = -(1-s)\log\sigma(z) - s\log\sigma(-z)

    The inputs are the average per-token log-probabilities; or pass summed log-probabilities with
    ``chosen_lengths`` and ``rejected_lengths`` (token counts) and they are divided here.

    Args:
        chosen_log_probs: Average (or, with lengths, summed) log-probability of the chosen completions.
        rejected_log_probs: The same for the rejected completions.
        beta: :math:`\beta > 0` (the paper's 2.0 to 2.5; 2.0 here, as the SimPO repository).
        gamma: The target reward margin :math:`\gamma` (0.5 as the SimPO repository's
            ``gamma_beta_ratio=0.25`` with ``beta=2``, TRL's ``simpo_gamma`` and Liger's ``gamma``).
        chosen_lengths: Token counts of the chosen completions, or ``None``.
        rejected_lengths: Token counts of the rejected completions, or ``None``.
        label_smoothing: :math:`s \in [0, 0.5)`.
        return_diagnostics: Also return ``rewards_chosen``, ``rewards_rejected`` (means of
            :math:`\beta` times the average log-probability), ``reward_margin`` and ``reward_accuracy``.
        weight: Per-pair weights.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - inputs and lengths: :math:`(N,)` (any shape, elementwise).
        - output: scalar, or :math:`(N,)` with ``reduction="none"``.

    Returns:
        The loss in the input's dtype, or ``(loss, diagnostics)``. Empty input gives 0 with a gradient.

    Raises:
        ValueError: Mismatched shapes, only one length tensor, positive log-probabilities (value
            check), options out of range.
        TypeError: Non-floating inputs.

    Examples:
        >>> import torch, losskit
        >>> losskit.simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.5]))  # z = 2(0.5) - 0.5: -log sigmoid(0.5)
        tensor(0.4741)

    References:
        Meng, Xia and Chen, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
        NeurIPS 2024. TRL's ``CPOTrainer(loss_type="simpo")`` with ``cpo_alpha=0`` and Liger-Kernel's
        ``LigerFusedLinearSimPOLoss`` compute the same loss.
    """
    beta, label_smoothing = check_pair_inputs(
        chosen_log_probs, rejected_log_probs, reduction=reduction, normalizer=normalizer, beta=beta,
        label_smoothing=label_smoothing, return_diagnostics=return_diagnostics, weight=weight,
        lengths=(chosen_lengths, rejected_lengths))
    gamma = check_number("gamma", gamma)
    c = upcast(chosen_log_probs)
    dtype = c.dtype
    c = _length_normalized(c, chosen_lengths, dtype)
    r = _length_normalized(upcast(rejected_log_probs).to(dtype), rejected_lengths, dtype)
    loss = _simpo_term(c, r, beta, gamma, label_smoothing)
    out = reduce_loss(loss, reduction, weight=weight, normalizer=normalizer, out_dtype=chosen_log_probs.dtype,
                      inputs={"chosen_log_probs": chosen_log_probs, "rejected_log_probs": rejected_log_probs,
                              "chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths})
    return _result(out, _pair_diagnostics(beta * c, beta * r) if return_diagnostics else {}, return_diagnostics)


def orpo_loss(
    chosen_log_probs: Tensor,
    rejected_log_probs: Tensor,
    *,
    beta: float = 0.1,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    include_nll: bool = True,
    return_diagnostics: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor | tuple[Tensor, Diagnostics]:
    r"""ORPO: supervised fine-tuning plus a log odds-ratio penalty on the rejected completion, no reference model.

    ORPO adds to the negative log-likelihood of the chosen completion a term that pushes the
    odds of the chosen completion above those of the rejected one, with odds computed from the
    average per-token probability :math:`P = \exp(\overline{\log\pi})`:

    .. math::
        \log\mathrm{odds}(y) = \overline{\log\pi}(y) - \log\big(1 - e^{\overline{\log\pi}(y)}\big), \qquad
        \ell = -\overline{\log\pi}(y_w) - \lambda \log\sigma\big(\log\mathrm{odds}(y_w) - \log\mathrm{odds}(y_l)\big)

    :math:`\log(1 - e^x)` is computed as ``log(-expm1(x))``; average log-probabilities are capped
    at :math:`-\varepsilon` of the dtype (a probability of exactly 1 has infinite odds).
    ``include_nll=False`` leaves out the NLL term (when it is computed elsewhere, for example as
    TRL does, as the token mean over the whole batch).

    Args:
        chosen_log_probs: Average (or, with lengths, summed) per-token log-probability of the chosen completions.
        rejected_log_probs: The same for the rejected completions.
        beta: :math:`\lambda > 0`, the weight of the odds-ratio term (0.1, TRL's and Liger's ``beta``).
        chosen_lengths: Token counts of the chosen completions, or ``None``.
        rejected_lengths: Token counts of the rejected completions, or ``None``.
        include_nll: Add the chosen completion's NLL.
        return_diagnostics: Also return ``rewards_chosen`` and ``rewards_rejected`` (means of
            :math:`\lambda\,\overline{\log\pi}`, as TRL logs them), ``reward_margin``,
            ``reward_accuracy``, ``log_odds_ratio`` (mean) and ``nll`` (mean chosen NLL).
        weight: Per-pair weights.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - inputs and lengths: :math:`(N,)` (any shape, elementwise).
        - output: scalar, or :math:`(N,)` with ``reduction="none"``.

    Returns:
        The loss in the input's dtype, or ``(loss, diagnostics)``. Empty input gives 0 with a gradient.

    Raises:
        ValueError: Mismatched shapes, positive log-probabilities (value check), options out of range.
        TypeError: Non-floating inputs.

    Examples:
        >>> import math, torch, losskit
        >>> chosen, rejected = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.2)])
        >>> losskit.orpo_loss(chosen, rejected)  # ln 2 - 0.1 log sigmoid(ln(1/1) - ln(0.25)): odds 1 vs 1/4
        tensor(0.7155)

    References:
        Hong, Lee and Thorne, "ORPO: Monolithic Preference Optimization without Reference Model",
        EMNLP 2024. TRL's ``ORPOTrainer`` and Liger-Kernel's ``LigerFusedLinearORPOLoss`` (``beta=0.1``).
    """
    beta, _ = check_pair_inputs(
        chosen_log_probs, rejected_log_probs, reduction=reduction, normalizer=normalizer, beta=beta,
        label_smoothing=0.0, return_diagnostics=return_diagnostics, weight=weight,
        lengths=(chosen_lengths, rejected_lengths))
    check_bool("include_nll", include_nll)
    c = upcast(chosen_log_probs)
    dtype = c.dtype
    cap = -dtype_eps(dtype)
    c = _length_normalized(c, chosen_lengths, dtype).clamp(max=cap)
    r = _length_normalized(upcast(rejected_log_probs).to(dtype), rejected_lengths, dtype).clamp(max=cap)
    log_odds = (c - torch.log(-torch.expm1(c))) - (r - torch.log(-torch.expm1(r)))
    loss = -beta * TF.logsigmoid(log_odds)
    if include_nll:
        loss = loss - c
    out = reduce_loss(loss, reduction, weight=weight, normalizer=normalizer, out_dtype=chosen_log_probs.dtype,
                      inputs={"chosen_log_probs": chosen_log_probs, "rejected_log_probs": rejected_log_probs,
                              "chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths})
    if not return_diagnostics:
        return out
    diagnostics = _pair_diagnostics(beta * c, beta * r)
    diagnostics["log_odds_ratio"] = _masked_mean(log_odds, None)
    diagnostics["nll"] = _masked_mean(-c, None)
    return out, diagnostics


def cpo_loss(
    chosen_log_probs: Tensor,
    rejected_log_probs: Tensor,
    *,
    variant: Literal["sigmoid", "hinge", "ipo", "simpo", "alphapo"] = "sigmoid",
    beta: float = 0.1,
    alpha: float = 1.0,
    simpo_gamma: float = 0.5,
    alphapo_alpha: float = 0.0,
    label_smoothing: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    return_diagnostics: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor | tuple[Tensor, Diagnostics]:
    r"""CPO: a reference-free preference term plus the negative log-likelihood of the chosen completions.

    Contrastive Preference Optimization drops DPO's reference model (its log-ratios become plain
    log-probabilities) and adds a behaviour-cloning term that keeps the policy on the preferred
    data. With :math:`c = \log\pi_\theta(y_w)`, :math:`r = \log\pi_\theta(y_l)` and the
    preference term :math:`\ell_i` of the ``variant`` (TRL's ``CPOConfig.loss_type``):

    .. math::
        \text{sigmoid:}\ -(1-s)\log\sigma(\beta(c - r)) - s\log\sigma(-\beta(c - r)) \qquad
        \text{hinge:}\ \max(0, 1 - \beta(c - r)) \qquad
        \text{ipo:}\ \big(\bar c - \bar r - \tfrac{1}{2\beta}\big)^2

        \text{simpo:}\ -(1-s)\log\sigma(z) - s\log\sigma(-z),\ z = \beta(\bar c - \bar r) - \gamma \qquad
        \text{alphapo:}\ \text{simpo with } \alpha = 0

        \mathcal{L} = \frac{1}{N}\sum_i \ell_i + \alpha\,\mathrm{NLL}, \qquad
        \mathrm{NLL} = -\frac{\sum_i c_i}{\sum_i |y_{w,i}|}

    :math:`\bar c = c / |y_w|` and :math:`\bar r = r / |y_l|` are the average per-token
    log-probabilities: TRL averages them for ``ipo``, ``simpo`` and ``alphapo``, and sums them
    for ``sigmoid`` and ``hinge``. ``alphapo`` is TRL's shorthand for ``simpo`` without the NLL
    term (its ``cpo_alpha=0``; ``alpha`` is then ignored). With ``alphapo_alpha`` :math:`= a \ne 0`
    (TRL's ``alpha``, read by every variant), each (summed or average) log-probability
    :math:`x` becomes AlphaPO's reward :math:`(1 - p^{-a})/a = -\mathrm{expm1}(-a x)/a` before
    the preference term (:math:`x` again as :math:`a \to 0`; for :math:`a > 0` it overflows
    once :math:`a|x|` passes about 88 in float32, so use it on average log-probabilities).

    **The NLL.** The NLL of a chosen completion is :math:`-c`, so it is read from
    ``chosen_log_probs``, not passed separately (the two cannot disagree). Pass the *summed*
    log-probabilities with ``chosen_lengths`` and ``rejected_lengths`` (token counts): the
    average log-probabilities are formed here where the variant needs them, and the NLL is
    TRL's, the token mean over all the chosen tokens of the batch (TRL's cross-entropy over the
    chosen half). Without lengths the inputs are taken as they are (summed for sigmoid and
    hinge, already averaged for the others) and each completion counts as one token: the NLL is
    the mean of :math:`-c` over pairs, the CPO paper's :math:`-\mathbb{E}[\log\pi_\theta(y_w)]`.
    The token mean is shared out so that every reduction stays consistent with it: pair
    :math:`i`'s unit loss is :math:`\ell_i - \alpha\, N c_i / \sum_j |y_{w,j}|`, whose plain mean
    is :math:`\mathcal{L}` (``"none"`` returns these, ``"sum"`` their sum; with ``weight`` or
    ``normalizer`` they are weighted and divided like any per-pair loss). So ``reduction="mean"``
    with lengths and no weight reproduces TRL's ``losses.mean() + cpo_alpha * nll_loss`` exactly.

    Args:
        chosen_log_probs: :math:`\log\pi_\theta(y_w \mid x)`, summed over the completion's tokens
            (with lengths), or as the variant reads it (without).
        rejected_log_probs: :math:`\log\pi_\theta(y_l \mid x)`, the same shape.
        variant: TRL's ``loss_type``: ``"sigmoid"`` | ``"hinge"`` | ``"ipo"`` | ``"simpo"`` | ``"alphapo"``.
        beta: :math:`\beta > 0` (TRL's 0.1; for ``ipo`` it is IPO's :math:`\tau`).
        alpha: :math:`\alpha \ge 0`, the weight of the NLL term (TRL's ``cpo_alpha``, 1.0;
            Liger-Kernel's ``alpha``).
        simpo_gamma: :math:`\gamma`, the target margin of ``simpo`` and ``alphapo`` (TRL's 0.5).
        alphapo_alpha: AlphaPO's :math:`a` (TRL's ``alpha``, 0: plain log-probabilities).
        label_smoothing: :math:`s \in [0, 0.5)`, read by sigmoid, simpo and alphapo.
        chosen_lengths: Token counts of the chosen completions, or ``None``.
        rejected_lengths: Token counts of the rejected completions, or ``None`` (both or neither).
        return_diagnostics: Also return ``rewards_chosen`` and ``rewards_rejected`` (means of
            :math:`\beta` times the log-probability or reward the preference term reads, as TRL
            logs them), ``reward_margin``, ``reward_accuracy`` and ``nll`` (the NLL above).
        weight: Per-pair weights.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - inputs and lengths: :math:`(N,)` (any shape, elementwise).
        - output: scalar, or :math:`(N,)` (per pair) with ``reduction="none"``.

    Returns:
        The loss in the input's dtype, or ``(loss, diagnostics)``. Empty input gives 0 with a
        gradient; so does the NLL of a batch without chosen tokens.

    Raises:
        ValueError: Mismatched shapes (chosen and rejected of different sizes), only one length
            tensor, an unknown ``variant`` (with the closest names), ``label_smoothing`` with
            hinge or ipo, positive log-probabilities (value check), options out of range.
        TypeError: Non-floating inputs, a ``variant`` that is not one name.

    Examples:
        >>> import torch, losskit
        >>> chosen, rejected = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])  # summed
        >>> lengths = torch.tensor([1, 3]), torch.tensor([2, 2])  # 4 chosen tokens, NLL 4 / 4 = 1
        >>> losskit.cpo_loss(chosen, rejected, chosen_lengths=lengths[0], rejected_lengths=lengths[1])
        tensor(1.6944)
        >>> losskit.cpo_loss(chosen, rejected)  # the paper's NLL: (1 + 3) / 2 = 2 per pair
        tensor(2.6944)
        >>> losskit.cpo_loss(chosen, rejected, reduction="none")  # -log sigmoid(+-0.1) + 1 and + 3
        tensor([1.6444, 3.7444])

    References:
        Xu et al., "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance
        in Machine Translation", ICML 2024 (sigmoid with the NLL). Zhao et al., "SLiC-HF", 2023
        (hinge). Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
        Preferences", 2023 (IPO). Meng, Xia and Chen, "SimPO", NeurIPS 2024. Gupta et al.,
        "AlphaPO: Reward Shape Matters for LLM Alignment", 2025. The names, formulas and defaults
        are those of TRL 1.x's ``CPOTrainer`` (``loss_type``, ``beta=0.1``, ``cpo_alpha=1.0``,
        ``simpo_gamma=0.5``, ``alpha=0.0``, ``label_smoothing``); Liger-Kernel's
        ``LigerFusedLinearCPOLoss`` computes the sigmoid form.
    """
    beta, label_smoothing = check_pair_inputs(
        chosen_log_probs, rejected_log_probs, reduction=reduction, normalizer=normalizer, beta=beta,
        label_smoothing=label_smoothing, return_diagnostics=return_diagnostics, weight=weight,
        lengths=(chosen_lengths, rejected_lengths))
    _check_one_variant(variant, CPO_VARIANTS)
    if label_smoothing and variant not in _CPO_SMOOTHED:
        raise ValueError(f"label_smoothing applies to variant {sorted(_CPO_SMOOTHED)} only, got variant={variant!r}")
    alpha = check_number("alpha", alpha, low=0.0)
    if variant == "alphapo":  # TRL's loss_type="alphapo" is "simpo" with cpo_alpha=0
        alpha = 0.0
    gamma = check_number("simpo_gamma", simpo_gamma)
    reward_alpha = check_number("alphapo_alpha", alphapo_alpha)
    c = upcast(chosen_log_probs)
    dtype = c.dtype
    r = upcast(rejected_log_probs).to(dtype)
    nll = _chosen_nll_share(c, chosen_lengths)
    if variant in _CPO_AVERAGED:
        c, r = _length_normalized(c, chosen_lengths, dtype), _length_normalized(r, rejected_lengths, dtype)
    if reward_alpha:
        c, r = _alphapo_reward(c, reward_alpha), _alphapo_reward(r, reward_alpha)
    if variant in ("simpo", "alphapo"):
        loss = _simpo_term(c, r, beta, gamma, label_smoothing)
    else:  # DPO's formula without a reference: the log-ratios are the log-probabilities
        loss = LOSSES[variant](_Pair(chosen=c, rejected=r, chosen_ratio=c, rejected_ratio=r, chosen_score=c,
                                     rejected_score=r, chosen_lengths=None, rejected_lengths=None, beta=beta,
                                     label_smoothing=label_smoothing, discopop_tau=1.0))
    if alpha:
        loss = loss + alpha * nll
    out = reduce_loss(loss, reduction, weight=weight, normalizer=normalizer, out_dtype=chosen_log_probs.dtype,
                      inputs={"chosen_log_probs": chosen_log_probs, "rejected_log_probs": rejected_log_probs,
                              "chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths})
    if not return_diagnostics:
        return out
    diagnostics = _pair_diagnostics(beta * c, beta * r)
    diagnostics["nll"] = _masked_mean(nll, None)
    return out, diagnostics


def _check_one_variant(variant: object, choices: tuple[str, ...]) -> None:
    """One name from ``choices`` (the loss types that TRL does not mix), with the closest names on a typo."""
    if not isinstance(variant, str):
        raise TypeError(f"variant must be one name from {choices}, got {type(variant).__name__}")
    check_variants(variant, None, choices)


def _chosen_nll_share(chosen: Tensor, lengths: Tensor | None) -> Tensor:
    """Each pair's share of the chosen completions' NLL: ``-c_i N / sum_j n_j``, whose mean over
    the N pairs is the token mean ``-sum_i c_i / sum_j n_j`` (``n_j = 1`` without lengths)."""
    if lengths is None:
        return -chosen
    return -safe_divide(chosen * chosen.numel(), upcast(lengths).to(chosen.dtype).sum())


def _alphapo_reward(log_prob: Tensor, a: float) -> Tensor:
    """AlphaPO's reward ``(1 - p^-a) / a`` of ``log p``, as ``-expm1(-a log p) / a`` (exact for small ``a log p``)."""
    return -torch.expm1(-a * log_prob) / a


def kto_loss(
    policy_log_probs: Tensor,
    ref_log_probs: Tensor,
    *,
    desirable: Tensor | Sequence[bool],
    variant: Literal["kto", "apo_zero_unpaired"] = "kto",
    kl: float | Tensor = 0.0,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    return_diagnostics: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor | tuple[Tensor, Diagnostics]:
    r"""KTO: a prospect-theoretic loss on completions labelled only desirable or undesirable (no pairs).

    The implicit reward :math:`r = \log\pi_\theta(y) - \log\pi_\text{ref}(y)` is compared with a
    reference point :math:`z_0`, an estimate of :math:`\mathrm{KL}(\pi_\theta \| \pi_\text{ref})`;
    desirable completions gain value as they rise above it, undesirable ones as they fall below,
    through a saturating (sigmoid) value function:

    .. math::
        \ell = \begin{cases}
            \lambda_D \big(1 - \sigma(\beta (r - z_0))\big) & y \text{ desirable} \\
            \lambda_U \big(1 - \sigma(\beta (z_0 - r))\big) & y \text{ undesirable}
        \end{cases}

    :math:`z_0` (``kl``) is the caller's: the paper and TRL estimate it from mismatched pairs
    (each prompt with another example's completion) in the batch,
    ``kl = (policy_kl_log_probs - ref_kl_log_probs).mean().clamp(min=0).detach()`` (gathered over
    ranks). The default 0 is TRL's reference point when the KL is not computed. It is detached,
    as are the reference log-probabilities. The weights :math:`\lambda` scale the loss (they are
    not the denominator of ``"mean"``), as in the paper and TRL; the paper advises
    :math:`\lambda_D n_D / (\lambda_U n_U) \in [1, 4/3]`.

    ``variant="apo_zero_unpaired"`` (TRL's ``loss_type``) is APO-zero for unpaired data: no
    reference point, :math:`\lambda_D(1 - \sigma(\beta r))` for desirable completions and
    :math:`\lambda_U\,\sigma(\beta r)` for the others.

    Args:
        policy_log_probs: :math:`\log\pi_\theta(y \mid x)`, summed over the completion's tokens.
        ref_log_probs: :math:`\log\pi_\text{ref}(y \mid x)`, the same shape.
        desirable: Bool (or 0/1) per completion: ``True`` for desirable; a tensor or a sequence.
        variant: TRL's ``loss_type``: ``"kto"`` | ``"apo_zero_unpaired"`` (which reads no ``kl``).
        kl: The reference point :math:`z_0` (a number or a one-element tensor).
        beta: :math:`\beta > 0` (0.1, as TRL and Liger).
        desirable_weight: :math:`\lambda_D > 0`.
        undesirable_weight: :math:`\lambda_U > 0`.
        return_diagnostics: Also return ``rewards_desirable`` and ``rewards_undesirable`` (means of
            :math:`\beta r` over each group, 0 for an empty group) and ``kl``.
        weight: Per-completion weights.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - policy_log_probs, ref_log_probs, desirable: :math:`(N,)` (any shape, elementwise).
        - output: scalar, or :math:`(N,)` with ``reduction="none"``.

    Returns:
        The loss in the input's dtype, or ``(loss, diagnostics)``. Empty input gives 0 with a gradient.

    Raises:
        ValueError: Mismatched shapes, ``desirable`` values other than 0 and 1 (value check), positive
            log-probabilities (value check), an unknown ``variant`` (with the closest names), a ``kl``
            with ``"apo_zero_unpaired"``, options out of range.
        TypeError: Non-floating inputs.

    Examples:
        >>> import torch, losskit
        >>> lp, ref = torch.tensor([-10.0, -10.0]), torch.tensor([-12.0, -12.0])  # r = 2, beta r = 0.2
        >>> losskit.kto_loss(lp, ref, desirable=[True, False], reduction="none")  # 1 - s(0.2), 1 - s(-0.2)
        tensor([0.4502, 0.5498])

    References:
        Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization", ICML 2024.
        D'Oosterlinck et al., "Anchored Preference Optimization", 2024 (APO-zero). TRL's ``KTOTrainer``
        (``beta=0.1``, ``desirable_weight=undesirable_weight=1``) and
        Liger-Kernel's ``LigerFusedLinearKTOLoss``.
    """
    check_reduction(reduction, normalizer)
    check_floating("policy_log_probs", policy_log_probs)
    _check_same_shape("policy_log_probs", policy_log_probs, "ref_log_probs", ref_log_probs)
    desirable = torch.as_tensor(desirable, device=policy_log_probs.device)
    if desirable.shape != policy_log_probs.shape:
        raise ValueError(f"desirable must have the shape of policy_log_probs {tuple(policy_log_probs.shape)}, "
                         f"got shape {tuple(desirable.shape)}")
    if desirable.dtype != torch.bool:
        if checks_enabled() and desirable.numel() and not bool(((desirable == 0) | (desirable == 1)).all()):
            raise ValueError("desirable must hold booleans or 0/1 labels")
        desirable = desirable != 0
    if isinstance(kl, Tensor):
        if kl.numel() != 1:
            raise ValueError(f"kl must be a number or a one-element tensor, got shape {tuple(kl.shape)}")
    else:
        check_number("kl", kl)
    _check_one_variant(variant, KTO_VARIANTS)
    if variant == "apo_zero_unpaired" and (isinstance(kl, Tensor) or kl != 0):
        raise ValueError("variant='apo_zero_unpaired' has no reference point: leave kl at 0")
    beta, _ = _preference_options(beta, 0.0, return_diagnostics, weight)
    lam_d = check_number("desirable_weight", desirable_weight, low=0.0, low_open=True)
    lam_u = check_number("undesirable_weight", undesirable_weight, low=0.0, low_open=True)
    _check_log_probs({"policy_log_probs": policy_log_probs, "ref_log_probs": ref_log_probs})
    lp = upcast(policy_log_probs)
    dtype = lp.dtype
    ratio = lp - upcast(ref_log_probs).detach().to(dtype)
    z0 = upcast(kl).detach().to(dtype).reshape(()) if isinstance(kl, Tensor) else kl
    # 1 - sigmoid(x) = sigmoid(-x), exact for large x.
    # apo_zero_unpaired is kto with the reference point at 0 and the undesirable term sigma(beta r)
    # = 1 - sigma(beta (0 - r)): the same expressions.
    loss = torch.where(desirable, lam_d * torch.sigmoid(-beta * (ratio - z0)),
                       lam_u * torch.sigmoid(-beta * (z0 - ratio)))
    out = reduce_loss(loss, reduction, weight=weight, normalizer=normalizer, out_dtype=policy_log_probs.dtype,
                      inputs={"policy_log_probs": policy_log_probs, "ref_log_probs": ref_log_probs, "kl": kl})
    if not return_diagnostics:
        return out
    rewards = beta * ratio
    return out, {"rewards_desirable": _masked_mean(rewards, desirable),
                 "rewards_undesirable": _masked_mean(rewards, ~desirable),
                 "kl": torch.as_tensor(z0, dtype=dtype).detach()}


__all__ = ["cpo_loss", "dpo_loss", "kto_loss", "orpo_loss", "simpo_loss"]
