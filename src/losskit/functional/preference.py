r"""Preference objectives (DPO, SimPO, ORPO, KTO), written as losses to minimize (registry
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
from losskit.functional._log_probs import (
    Diagnostics,
    _check_log_probs,
    _check_same_shape,
    _masked_mean,
    _preference_options,
    _result,
    check_pair_inputs,
)

DPO_VARIANTS: tuple[str, ...] = ("sigmoid", "hinge", "ipo")


def _length_normalized(x: Tensor, lengths: Tensor | None, dtype: torch.dtype) -> Tensor:
    return x if lengths is None else safe_divide(x, upcast(lengths).to(dtype))


def _sigmoid_loss(logits: Tensor, label_smoothing: float) -> Tensor:
    """``-(1 - s) log sigmoid(z) - s log sigmoid(-z)`` (conservative / label-smoothed)."""
    loss = -TF.logsigmoid(logits)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * TF.logsigmoid(-logits)
    return loss


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
    variant: Literal["sigmoid", "hinge", "ipo"] = "sigmoid",
    label_smoothing: float = 0.0,
    return_diagnostics: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor | tuple[Tensor, Diagnostics]:
    r"""Direct Preference Optimization: a classification loss on the policy's implicit reward margin.

    DPO shows that the KL-regularized reward-maximizing policy defines an implicit reward
    :math:`\beta \log \pi_\theta(y) / \pi_\text{ref}(y)`; fitting the Bradley-Terry model of the
    preference data with that reward gives a logistic loss on the margin
    :math:`h = \log\frac{\pi_\theta(y_w)}{\pi_\text{ref}(y_w)} - \log\frac{\pi_\theta(y_l)}{\pi_\text{ref}(y_l)}`
    between the chosen :math:`y_w` and the rejected :math:`y_l` completion:

    .. math::
        \text{sigmoid:}\quad \ell = -(1-s)\log\sigma(\beta h) - s \log\sigma(-\beta h)

        \text{hinge (SLiC):}\quad \ell = \max(0,\ 1 - \beta h) \qquad
        \text{ipo:}\quad \ell = \Big(h - \frac{1}{2\beta}\Big)^2

    :math:`s` is ``label_smoothing`` (conservative DPO: the preference labels are flipped with
    probability :math:`s`); it applies to the sigmoid variant only. Without reference
    log-probabilities the reference terms are 0 (TRL's ``reference_free=True``). The reference
    log-probabilities are detached; both policy log-probabilities receive gradients. Swapping
    chosen and rejected negates :math:`h`.

    Args:
        chosen_log_probs: :math:`\log\pi_\theta(y_w \mid x)`, summed over the completion's tokens.
        rejected_log_probs: :math:`\log\pi_\theta(y_l \mid x)`, the same shape.
        ref_chosen_log_probs: :math:`\log\pi_\text{ref}(y_w \mid x)`, or ``None`` (with the next) for none.
        ref_rejected_log_probs: :math:`\log\pi_\text{ref}(y_l \mid x)`.
        beta: :math:`\beta > 0`, the strength of the implicit KL constraint (0.1, as TRL and Liger).
        variant: ``"sigmoid"`` | ``"hinge"`` | ``"ipo"``.
        label_smoothing: :math:`s \in [0, 0.5)`.
        return_diagnostics: Also return ``rewards_chosen`` and ``rewards_rejected`` (means of
            :math:`\beta \log\pi_\theta/\pi_\text{ref}`), ``reward_margin`` and ``reward_accuracy``
            (the fraction of pairs whose chosen reward is the larger), as TRL logs them.
        weight: Per-pair weights.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - all log-probabilities: :math:`(N,)` (any shape, elementwise).
        - output: scalar, or :math:`(N,)` with ``reduction="none"``.

    Returns:
        The loss in the input's dtype, or ``(loss, diagnostics)``. Empty input gives 0 with a gradient.

    Raises:
        ValueError: Mismatched shapes, only one of the two reference tensors, ``label_smoothing``
            with a variant other than sigmoid, positive log-probabilities (value check), options out of range.
        TypeError: Non-floating inputs.

    Examples:
        >>> import torch, losskit
        >>> chosen, rejected = torch.tensor([-10.0]), torch.tensor([-12.0])
        >>> ref_c, ref_r = torch.tensor([-11.0]), torch.tensor([-11.0])  # h = (1) - (-1) = 2
        >>> losskit.dpo_loss(chosen, rejected, ref_chosen_log_probs=ref_c, ref_rejected_log_probs=ref_r)
        tensor(0.5981)

    References:
        Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward
        Model", NeurIPS 2023 (and the cDPO note, 2023). Zhao et al., "SLiC-HF", 2023 (hinge). Azar
        et al., "A General Theoretical Paradigm to Understand Learning from Human Preferences", 2023
        (IPO). The variants and defaults follow TRL's ``DPOTrainer`` ``loss_type`` and Liger-Kernel.
    """
    beta, label_smoothing = check_pair_inputs(
        chosen_log_probs, rejected_log_probs, reduction=reduction, normalizer=normalizer, beta=beta,
        label_smoothing=label_smoothing, return_diagnostics=return_diagnostics, weight=weight,
        refs=(ref_chosen_log_probs, ref_rejected_log_probs))
    check_one_of("variant", variant, DPO_VARIANTS)
    if label_smoothing and variant != "sigmoid":
        raise ValueError(f"label_smoothing applies to variant='sigmoid' only, got variant={variant!r}")
    c = upcast(chosen_log_probs)
    dtype = c.dtype
    r = upcast(rejected_log_probs).to(dtype)
    if ref_chosen_log_probs is not None:
        c_ratio = c - upcast(ref_chosen_log_probs).detach().to(dtype)
        r_ratio = r - upcast(ref_rejected_log_probs).detach().to(dtype)
    else:
        c_ratio, r_ratio = c, r
    h = c_ratio - r_ratio
    if variant == "sigmoid":
        loss = _sigmoid_loss(beta * h, label_smoothing)
    elif variant == "hinge":
        loss = torch.relu(1 - beta * h)
    else:
        loss = (h - 1 / (2 * beta)) ** 2
    out = reduce_loss(loss, reduction, weight=weight, normalizer=normalizer, out_dtype=chosen_log_probs.dtype,
                      inputs={"chosen_log_probs": chosen_log_probs, "rejected_log_probs": rejected_log_probs,
                              "ref_chosen_log_probs": ref_chosen_log_probs,
                              "ref_rejected_log_probs": ref_rejected_log_probs})
    if not return_diagnostics:
        return out
    return out, _pair_diagnostics(beta * c_ratio, beta * r_ratio)


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
    loss = _sigmoid_loss(beta * (c - r) - gamma, label_smoothing)
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


def kto_loss(
    policy_log_probs: Tensor,
    ref_log_probs: Tensor,
    *,
    desirable: Tensor | Sequence[bool],
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

    Args:
        policy_log_probs: :math:`\log\pi_\theta(y \mid x)`, summed over the completion's tokens.
        ref_log_probs: :math:`\log\pi_\text{ref}(y \mid x)`, the same shape.
        desirable: Bool (or 0/1) per completion: ``True`` for desirable; a tensor or a sequence.
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
            log-probabilities (value check), options out of range.
        TypeError: Non-floating inputs.

    Examples:
        >>> import torch, losskit
        >>> lp, ref = torch.tensor([-10.0, -10.0]), torch.tensor([-12.0, -12.0])  # r = 2, beta r = 0.2
        >>> losskit.kto_loss(lp, ref, desirable=[True, False], reduction="none")  # 1 - s(0.2), 1 - s(-0.2)
        tensor([0.4502, 0.5498])

    References:
        Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization", ICML 2024.
        TRL's ``KTOTrainer`` (``beta=0.1``, ``desirable_weight=undesirable_weight=1``) and
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
    beta, _ = _preference_options(beta, 0.0, return_diagnostics, weight)
    lam_d = check_number("desirable_weight", desirable_weight, low=0.0, low_open=True)
    lam_u = check_number("undesirable_weight", undesirable_weight, low=0.0, low_open=True)
    _check_log_probs({"policy_log_probs": policy_log_probs, "ref_log_probs": ref_log_probs})
    lp = upcast(policy_log_probs)
    dtype = lp.dtype
    ratio = lp - upcast(ref_log_probs).detach().to(dtype)
    z0 = upcast(kl).detach().to(dtype).reshape(()) if isinstance(kl, Tensor) else kl
    # 1 - sigmoid(x) = sigmoid(-x), exact for large x.
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


__all__ = ["dpo_loss", "kto_loss", "orpo_loss", "simpo_loss"]
