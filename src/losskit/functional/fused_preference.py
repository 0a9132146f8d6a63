r"""Preference objectives fused with the output head: DPO, SimPO, ORPO, CPO and KTO without logits.

Each is its unfused function of :mod:`losskit.functional.preference` applied to the sequence
log-probabilities of :func:`losskit.fused_linear_log_probs` (see
:mod:`losskit.functional.fused_policy` for the engine and the batch layout: the :math:`B/2`
chosen sequences first, then the :math:`B/2` rejected ones), so each equals its unfused form
exactly, in value and gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor

import losskit.functional as _losses
from losskit._core.reduction import Reduction
from losskit.functional._dpo_variants import LENGTH_VARIANTS
from losskit.functional.fused_policy import _check_paired, _docs, _finish, _halves, _policy, _reference

__all__ = [
    "fused_linear_cpo_loss",
    "fused_linear_dpo_loss",
    "fused_linear_kto_loss",
    "fused_linear_orpo_loss",
    "fused_linear_simpo_loss",
]


# --- preference objectives -----------------------------------------------------------------------


@_docs
def fused_linear_dpo_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ref_log_probs: Tensor | None = None,
    ref_hidden: Tensor | None = None,
    ref_weight: Tensor | None = None,
    ref_bias: Tensor | None = None,
    ignore_index: int = -100,
    beta: float = 0.1,
    variant: str | Sequence[str] = "sigmoid",
    variant_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 1.0,
    discopop_tau: float = 0.05,
    return_diagnostics: bool = False,
    sample_weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    r"""DPO from the policy's hidden states and head, chunk by chunk, without the logits.

    :func:`losskit.dpo_loss` applied to the sequence log-probabilities
    :math:`\log\pi_\theta(y) = \sum_{t \in y} \log p_t` of :func:`fused_linear_log_probs`;
    equal to it in value and in the gradients of ``hidden``, ``weight`` and ``bias``.

    .. math::
        h_i = \big(\log\pi_\theta(y^w_i) - \log\pi_\text{ref}(y^w_i)\big)
            - \big(\log\pi_\theta(y^l_i) - \log\pi_\text{ref}(y^l_i)\big), \qquad
        \ell_i = -\log\sigma(\beta h_i) \ \text{(sigmoid; hinge and ipo as in dpo_loss)}

    Sequences :math:`0 .. B/2 - 1` are the chosen completions :math:`y^w`, sequences
    :math:`B/2 .. B - 1` the rejected :math:`y^l` of the same prompts, in the same order. Without a
    reference the reference terms are 0 (TRL's ``reference_free=True``).

    Args:
        {head_args}
        {ref_args}
        beta, variant, variant_weights, label_smoothing: As in :func:`losskit.dpo_loss` (every TRL
            loss type and MPO mixture; ``sigmoid_norm`` and ``sft`` read the completions' token
            counts, taken here from ``target``; ``ipo`` stays the paper's, on summed log-probabilities).
        f_divergence_type, f_alpha_divergence_coef, discopop_tau: As in :func:`losskit.dpo_loss`.
        return_diagnostics, reduction, normalizer: As in :func:`losskit.dpo_loss`.
        sample_weight: Per-pair weights :math:`(B/2,)` (``dpo_loss``'s ``weight=``).
        {common_args}

    Returns:
        The loss in ``hidden``'s dtype (per pair with ``reduction="none"``), or ``(loss, diagnostics)``.

    Raises:
        ValueError: An odd batch (chosen and rejected of different sizes), a reference given both
            as log-probabilities and as hidden states, positive ``ref_log_probs``, shapes that do
            not fit, options out of range.
        TypeError: Non-floating ``hidden`` or ``weight``, differing dtypes, a non-integer ``target``.

    Examples:
        >>> import torch, losskit
        >>> weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> hidden = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]])  # chosen, then rejected: one token each
        >>> target = torch.tensor([[0], [0]])  # log p = log(e^2/(e^2+1)) and log(1/2)
        >>> losskit.fused_linear_dpo_loss(hidden, weight, target)  # -log sigmoid(0.1 (-0.1269 + 0.6931))
        tensor(0.6652)
        >>> lp = torch.log_softmax(hidden @ weight.T, -1)[..., 0].sum(-1)
        >>> losskit.dpo_loss(lp[:1], lp[1:])
        tensor(0.6652)

    References:
        Rafailov et al., "Direct Preference Optimization", NeurIPS 2023. Liger-Kernel's
        ``LigerFusedLinearDPOLoss`` (the fused form and the batch layout), TRL's ``DPOTrainer``.
    """
    _check_paired(hidden)
    policy = _policy(hidden, weight, target, bias, temperature=1.0, ignore_index=ignore_index, chunk_size=chunk_size)
    ref = _reference(policy, target, ref_log_probs=ref_log_probs, ref_hidden=ref_hidden, ref_weight=ref_weight,
                     ref_bias=ref_bias, ignore_index=ignore_index, temperature=1.0, chunk_size=chunk_size,
                     required=False)
    chosen, rejected = _halves(hidden, policy.summed)
    ref_chosen, ref_rejected = (None, None) if ref is None else _halves(hidden, ref)
    names = {variant} if isinstance(variant, str) else set(variant)
    # Token counts only where a variant needs them: with them, ipo would switch to TRL's per-token form.
    lengths = _halves(hidden, policy.lengths) if names & LENGTH_VARIANTS else (None, None)
    return _finish(_losses.dpo_loss(chosen, rejected, ref_chosen_log_probs=ref_chosen,
                                    ref_rejected_log_probs=ref_rejected, beta=beta, variant=variant,
                                    variant_weights=variant_weights, label_smoothing=label_smoothing,
                                    f_divergence_type=f_divergence_type,
                                    f_alpha_divergence_coef=f_alpha_divergence_coef, discopop_tau=discopop_tau,
                                    chosen_lengths=lengths[0], rejected_lengths=lengths[1],
                                    return_diagnostics=return_diagnostics, weight=sample_weight,
                                    reduction=reduction, normalizer=normalizer), hidden)


@_docs
def fused_linear_simpo_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
    return_diagnostics: bool = False,
    sample_weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    r"""SimPO from the policy's hidden states and head, chunk by chunk, without the logits.

    :func:`losskit.simpo_loss` applied to the summed sequence log-probabilities of
    :func:`fused_linear_log_probs` with the completions' token counts (so that it averages them):

    .. math::
        \ell_i = -\log\sigma\Big(\frac{\beta}{|y^w_i|}\log\pi_\theta(y^w_i)
                 - \frac{\beta}{|y^l_i|}\log\pi_\theta(y^l_i) - \gamma\Big)

    Chosen sequences first, then the rejected ones (see :func:`fused_linear_dpo_loss`).

    Args:
        {head_args}
        beta, gamma, label_smoothing, return_diagnostics, reduction, normalizer: As in
            :func:`losskit.simpo_loss`.
        sample_weight: Per-pair weights :math:`(B/2,)`.
        {common_args}

    Returns:
        The loss in ``hidden``'s dtype, or ``(loss, diagnostics)``.

    Raises:
        ValueError: An odd batch, shapes that do not fit, options out of range.
        TypeError: Non-floating ``hidden`` or ``weight``, differing dtypes, a non-integer ``target``.

    Examples:
        >>> import torch, losskit
        >>> weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> hidden = torch.tensor([[[2.0, 0.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
        >>> target = torch.tensor([[0, -100], [0, 0]])  # chosen: 1 token, rejected: 2
        >>> losskit.fused_linear_simpo_loss(hidden, weight, target)  # -log sigmoid(2 (-0.1269 + 0.6931) - 0.5)
        tensor(0.4261)

    References:
        Meng, Xia and Chen, "SimPO", NeurIPS 2024. Liger-Kernel's ``LigerFusedLinearSimPOLoss``.
    """
    _check_paired(hidden)
    policy = _policy(hidden, weight, target, bias, temperature=1.0, ignore_index=ignore_index, chunk_size=chunk_size)
    chosen, rejected = _halves(hidden, policy.summed)
    chosen_len, rejected_len = _halves(hidden, policy.lengths)
    return _finish(_losses.simpo_loss(chosen, rejected, beta=beta, gamma=gamma, chosen_lengths=chosen_len,
                                      rejected_lengths=rejected_len, label_smoothing=label_smoothing,
                                      return_diagnostics=return_diagnostics, weight=sample_weight,
                                      reduction=reduction, normalizer=normalizer), hidden)


@_docs
def fused_linear_orpo_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    beta: float = 0.1,
    include_nll: bool = True,
    return_diagnostics: bool = False,
    sample_weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    r"""ORPO from the policy's hidden states and head, chunk by chunk, without the logits.

    :func:`losskit.orpo_loss` applied to the summed sequence log-probabilities of
    :func:`fused_linear_log_probs` with the completions' token counts (ORPO's odds use the
    average per-token log-probability :math:`\overline{\log\pi}`):

    .. math::
        \ell_i = -\overline{\log\pi}(y^w_i)
                 - \lambda \log\sigma\big(\log\mathrm{odds}(y^w_i) - \log\mathrm{odds}(y^l_i)\big)

    Chosen sequences first, then the rejected ones (see :func:`fused_linear_dpo_loss`).

    Args:
        {head_args}
        beta, include_nll, return_diagnostics, reduction, normalizer: As in :func:`losskit.orpo_loss`.
        sample_weight: Per-pair weights :math:`(B/2,)`.
        {common_args}

    Returns:
        The loss in ``hidden``'s dtype, or ``(loss, diagnostics)``.

    Raises:
        ValueError: An odd batch, shapes that do not fit, options out of range.
        TypeError: Non-floating ``hidden`` or ``weight``, differing dtypes, a non-integer ``target``.

    Examples:
        >>> import torch, losskit
        >>> weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> hidden = torch.tensor([[[0.0, 0.0]], [[0.0, 1.3862944]]])  # p = 1/2 chosen, 1/5 rejected
        >>> losskit.fused_linear_orpo_loss(hidden, weight, torch.tensor([[0], [0]]))  # as orpo_loss's example
        tensor(0.7155)

    References:
        Hong, Lee and Thorne, "ORPO", EMNLP 2024. Liger-Kernel's ``LigerFusedLinearORPOLoss``.
    """
    _check_paired(hidden)
    policy = _policy(hidden, weight, target, bias, temperature=1.0, ignore_index=ignore_index, chunk_size=chunk_size)
    chosen, rejected = _halves(hidden, policy.summed)
    chosen_len, rejected_len = _halves(hidden, policy.lengths)
    return _finish(_losses.orpo_loss(chosen, rejected, beta=beta, chosen_lengths=chosen_len,
                                     rejected_lengths=rejected_len, include_nll=include_nll,
                                     return_diagnostics=return_diagnostics, weight=sample_weight,
                                     reduction=reduction, normalizer=normalizer), hidden)


@_docs
def fused_linear_cpo_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    beta: float = 0.1,
    alpha: float = 1.0,
    variant: Literal["sigmoid", "hinge", "ipo", "simpo", "alphapo"] = "sigmoid",
    simpo_gamma: float = 0.5,
    alphapo_alpha: float = 0.0,
    label_smoothing: float = 0.0,
    return_diagnostics: bool = False,
    sample_weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    r"""CPO from the policy's hidden states and head, chunk by chunk, without the logits.

    :func:`losskit.cpo_loss` applied to the summed sequence log-probabilities of
    :func:`fused_linear_log_probs` with the completions' token counts (so that ``ipo``,
    ``simpo`` and ``alphapo`` average them, and the NLL is the token mean over the batch's
    chosen tokens, as TRL's ``CPOTrainer``); equal to it in value and in the gradients of
    ``hidden``, ``weight`` and ``bias``. For the default ``variant="sigmoid"``:

    .. math::
        \ell_i = -(1-s)\log\sigma\big(\beta(\log\pi_\theta(y^w_i) - \log\pi_\theta(y^l_i))\big)
                 - s\log\sigma\big(-\beta(\ldots)\big), \qquad
        \mathcal{L} = \frac{1}{B/2}\sum_i \ell_i + \alpha\, \mathrm{NLL}, \quad
        \mathrm{NLL} = -\frac{\sum_i \log\pi_\theta(y^w_i)}{\sum_i |y^w_i|}

    Chosen sequences first, then the rejected ones (see :func:`fused_linear_dpo_loss`).

    Args:
        {head_args}
        variant, beta, alpha, simpo_gamma, alphapo_alpha, label_smoothing: As in
            :func:`losskit.cpo_loss` (TRL's ``loss_type``, ``beta``, ``cpo_alpha``,
            ``simpo_gamma``, ``alpha`` and ``label_smoothing``).
        return_diagnostics, reduction, normalizer: As in :func:`losskit.cpo_loss` (``"none"``
            gives each pair's preference term plus its share of the NLL).
        sample_weight: Per-pair weights :math:`(B/2,)` (``cpo_loss``'s ``weight=``).
        {common_args}

    Returns:
        The loss in ``hidden``'s dtype, or ``(loss, diagnostics)``.

    Raises:
        ValueError: An odd batch (chosen and rejected of different sizes), an unknown ``variant``
            (with the closest names), shapes that do not fit, options out of range.
        TypeError: Non-floating ``hidden`` or ``weight``, differing dtypes, a non-integer ``target``.

    Examples:
        >>> import torch, losskit
        >>> weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> hidden = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]])
        >>> target = torch.tensor([[0], [0]])  # log p: -0.1269 chosen, -0.6931 rejected
        >>> losskit.fused_linear_cpo_loss(hidden, weight, target)  # 0.6652 (as DPO's example) + 0.1269
        tensor(0.7922)

    References:
        Xu et al., "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance
        in Machine Translation", ICML 2024. TRL's ``CPOTrainer`` and Liger-Kernel's
        ``LigerFusedLinearCPOLoss`` (the fused form and the batch layout).
    """
    _check_paired(hidden)
    policy = _policy(hidden, weight, target, bias, temperature=1.0, ignore_index=ignore_index, chunk_size=chunk_size)
    chosen, rejected = _halves(hidden, policy.summed)
    chosen_len, rejected_len = _halves(hidden, policy.lengths)
    return _finish(_losses.cpo_loss(chosen, rejected, variant=variant, beta=beta, alpha=alpha, simpo_gamma=simpo_gamma,
                                    alphapo_alpha=alphapo_alpha, label_smoothing=label_smoothing,
                                    chosen_lengths=chosen_len, rejected_lengths=rejected_len,
                                    return_diagnostics=return_diagnostics, weight=sample_weight,
                                    reduction=reduction, normalizer=normalizer), hidden)


@_docs
def fused_linear_kto_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    desirable: Tensor | Sequence[bool],
    bias: Tensor | None = None,
    ref_log_probs: Tensor | None = None,
    ref_hidden: Tensor | None = None,
    ref_weight: Tensor | None = None,
    ref_bias: Tensor | None = None,
    ignore_index: int = -100,
    variant: Literal["kto", "apo_zero_unpaired"] = "kto",
    kl: float | Tensor = 0.0,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    return_diagnostics: bool = False,
    sample_weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    r"""KTO from the policy's hidden states and head, chunk by chunk, without the logits.

    :func:`losskit.kto_loss` applied to the summed sequence log-probabilities of
    :func:`fused_linear_log_probs`. KTO's completions are unpaired: each of the :math:`B`
    sequences is labelled ``desirable`` or not, and needs the reference policy.

    .. math::
        r_i = \log\pi_\theta(y_i) - \log\pi_\text{ref}(y_i), \qquad
        \ell_i = \lambda_D\big(1 - \sigma(\beta(r_i - z_0))\big) \text{ or }
                 \lambda_U\big(1 - \sigma(\beta(z_0 - r_i))\big)

    Args:
        {head_args}
        desirable: Bool per sequence :math:`(B,)`.
        {ref_args}
        variant, kl, beta, desirable_weight, undesirable_weight: As in :func:`losskit.kto_loss`.
        return_diagnostics, reduction, normalizer: As in :func:`losskit.kto_loss`.
        sample_weight: Per-sequence weights :math:`(B,)`.
        {common_args}

    Returns:
        The loss in ``hidden``'s dtype, or ``(loss, diagnostics)``.

    Raises:
        ValueError: No reference, or one given both ways; shapes that do not fit; options out of range.
        TypeError: Non-floating ``hidden`` or ``weight``, differing dtypes, a non-integer ``target``.

    Examples:
        >>> import torch, losskit
        >>> weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> hidden = torch.tensor([[[0.0, 0.0]], [[0.0, 0.0]]])  # log p = log(1/2) for both
        >>> ref = torch.log(torch.tensor([0.25, 0.25]))  # r = log 2, beta r = 0.0693
        >>> losskit.fused_linear_kto_loss(hidden, weight, torch.tensor([[0], [1]]), desirable=[True, False],
        ...                               ref_log_probs=ref, reduction="none")  # 1 - s(0.0693), 1 - s(-0.0693)
        tensor([0.4827, 0.5173])

    References:
        Ethayarajh et al., "KTO", ICML 2024. Liger-Kernel's ``LigerFusedLinearKTOLoss``.
    """
    policy = _policy(hidden, weight, target, bias, temperature=1.0, ignore_index=ignore_index, chunk_size=chunk_size)
    ref = _reference(policy, target, ref_log_probs=ref_log_probs, ref_hidden=ref_hidden, ref_weight=ref_weight,
                     ref_bias=ref_bias, ignore_index=ignore_index, temperature=1.0, chunk_size=chunk_size,
                     required=True)
    return _finish(_losses.kto_loss(policy.summed, ref, desirable=desirable, variant=variant, kl=kl, beta=beta,
                                    desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                                    return_diagnostics=return_diagnostics, weight=sample_weight,
                                    reduction=reduction, normalizer=normalizer), hidden)
