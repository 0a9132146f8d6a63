r"""Policy and preference objectives fused with the output head: log-probabilities without logits.

Every preference and policy-gradient loss reads one number per token, the log-probability of
the token the sequence holds, :math:`\log \mathrm{softmax}((W h_t + b) / T)_{y_t}`. Taking it
from materialised logits costs the :math:`(N, V)` logits, their log-softmax and their gradient,
several times the memory of the rest of the step for a vocabulary of 32k to 256k. Here the
log-probabilities come from :func:`fused_linear_log_probs`, which walks the tokens chunk by
chunk through the chunked engine of :mod:`losskit.functional.large_vocab` (one chunk of logits
alive at a time), and the objectives are the unfused functions of :mod:`losskit.functional`
applied to them, so each fused loss equals its unfused form exactly, in value and gradient.

The per-token log-probabilities are a vector-valued output: their gradient is exact for any
upstream gradient (the engine's ``"none"`` path recomputes each chunk's logits in backward,
four matrix products per chunk instead of autograd's three, and no logits are kept).

Batch layout (as Liger-Kernel and TRL): ``hidden`` is :math:`(B, L, D)` and ``target``
:math:`(B, L)` holds each sequence's tokens, already shifted so that ``hidden[:, t]`` predicts
``target[:, t]``; prompt and padding positions hold ``ignore_index``. Pairwise objectives take
the :math:`B/2` chosen sequences first, then the :math:`B/2` rejected ones, pair :math:`i`
being sequences :math:`i` and :math:`i + B/2`. The preference objectives live in
:mod:`losskit.functional.fused_preference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

import losskit.functional as _losses
from losskit._core.checks import (
    check_bool,
    check_class_indices,
    check_floating,
    check_ignore_index,
    check_loss_finite,
    check_number,
    check_same_device,
    checks_enabled,
)
from losskit._core.numerics import compute_dtype
from losskit._core.reduction import Reduction
from losskit._kernels import Backend, triton_cross_entropy_chunk, use_triton
from losskit.functional.large_vocab import (
    _check_chunk_size,
    _check_head,
    _check_labels,
    _chunk_rows,
    _FusedLinear,
    _needs,
    _Plan,
)

__all__ = [
    "fused_linear_grpo_loss",
    "fused_linear_log_probs",
    "fused_linear_ppo_loss",
]


# --- the primitive ------------------------------------------------------------------------------


@dataclass
class _LogProbChunk:
    r"""Log-probability of the target (and entropy) on one chunk of logits, in place.

    With :math:`z = x / T`, :math:`m = \max_k z_k` and :math:`r = \sum_{k \ne \text{peak}} e^{z_k - m}`:
    :math:`\log p_y = -\big((m - z_y) + \operatorname{log1p}(r)\big)`, two non-negative terms,
    exact however far the target leads (``lse - z_y`` would cancel); the entropy
    :math:`H = \operatorname{log1p}(r) + \sum_k p_k (m - z_k)`, again non-negative terms. The
    gradient of :math:`\log p_y` is :math:`([k = y] - p_k) / T`, with :math:`1 - p_y = r / (1 + r)`
    where the target holds the peak.
    """

    index: Tensor  # (N,) target, 0 at ignored tokens
    valid: Tensor  # (N,) bool
    temperature: float
    entropy: bool
    triton: bool = False  # the cross-entropy kernel, whose loss is -log p_y, instead of the torch ops

    def __call__(self, logits: list[Tensor], part: slice, scale: Tensor | None,
                 want: list[bool]) -> tuple[Tensor, dict[str, Tensor], list[Tensor | None] | None]:
        z = logits[0]
        if self.temperature != 1.0:
            z.div_(self.temperature)
        index, valid = self.index[part], self.valid[part]
        if self.triton:
            return self._on_kernel(z, index, valid, scale, want[0])
        column = index.unsqueeze(1)
        peak, top = z.max(1, keepdim=True)
        z.sub_(peak)  # z - m <= 0, exactly 0 at the peak
        x_y = z.gather(1, column).squeeze(1)
        extras: dict[str, Tensor] = {}
        below_peak = None
        if self.entropy and scale is None:  # forward only: backward needs no entropy
            below_peak = -(z.exp() * z).sum(1)  # sum_k e^(z_k - m) (m - z_k) >= 0
        z.exp_()
        rest = z.scatter_(1, top, 0.0).sum(1)  # every term but the peak's own 1
        z.scatter_(1, top, 1.0)
        log_total = torch.log1p(rest)
        total = rest + 1
        zero = log_total.new_zeros(())
        log_prob = torch.where(valid, x_y - log_total, zero)
        if below_peak is not None:
            extras["entropy"] = torch.where(valid, log_total + below_peak / total, zero)
        if not want[0]:
            return log_prob, extras, None
        rows = valid.to(z.dtype) if scale is None else torch.where(valid, scale, zero)
        if self.temperature != 1.0:
            rows = rows / self.temperature
        p_y = z.gather(1, column).squeeze(1) / total
        below_one = torch.where(index == top.squeeze(1), rest / total, 1 - p_y)  # 1 - p_y, exact at the peak
        z.mul_((-rows / total).unsqueeze(1))  # -g p_k
        z.scatter_(1, column, (rows * below_one).unsqueeze(1))  # g (1 - p_y)
        return log_prob, extras, [z]

    def _on_kernel(self, z: Tensor, index: Tensor, valid: Tensor, scale: Tensor | None,
                   with_grad: bool) -> tuple[Tensor, dict[str, Tensor], list[Tensor | None] | None]:
        r"""The same on the cross-entropy kernel: its loss is :math:`-\log p_y` and its gradient,
        :math:`p - [k = y]` times the row's upstream, becomes ours with the upstream :math:`-g / T`."""
        upstream = None
        if with_grad:
            upstream = valid.to(z.dtype) if scale is None else scale
            upstream = upstream / -self.temperature
        loss, extras, grad = triton_cross_entropy_chunk(z, index, valid, scale=upstream, with_grad=with_grad,
                                                        entropy=self.entropy and scale is None)
        kept = {"entropy": extras["entropy"]} if "entropy" in extras else {}
        return loss.neg_(), kept, None if grad is None else [grad]


def _token_log_probs(hidden: Tensor, weight: Tensor, target: Tensor, *, bias: Tensor | None, temperature: float,
                     ignore_index: int, entropy: bool, chunk_size: int | None, names: tuple[str, str, str, str],
                     backend: Backend = "auto") -> tuple[Tensor, Tensor | None]:
    """Per-token log-probabilities in the compute dtype, shaped like ``target`` (and entropies)."""
    hidden_name, weight_name, bias_name, target_name = names
    temperature = check_number("temperature", temperature, low=0.0, low_open=True)
    _check_chunk_size(chunk_size)
    _check_head(hidden_name, hidden, weight_name, weight, bias_name, bias)
    _check_labels(target_name, target, hidden_name, hidden)
    check_ignore_index(ignore_index, optional=False)
    vocab = weight.shape[0]
    check_class_indices(target_name, target, vocab, ignore_index)
    dtype = compute_dtype(hidden.dtype)
    flat = hidden.reshape(-1, hidden.shape[-1])
    labels = target.reshape(-1).to(device=hidden.device, dtype=torch.long)
    valid = labels != ignore_index
    index = torch.where(valid, labels, torch.zeros_like(labels))
    # Buffers per chunk: the logits (turned into their gradient in place), an upcast copy for half
    # inputs, and two temporaries for the entropy.
    buffers = 1 + (dtype != hidden.dtype) + 2 * entropy
    rows = _chunk_rows(flat.shape[0], vocab, dtype, hidden.device, buffers, chunk_size)
    chunk = _LogProbChunk(index, valid, temperature, entropy, use_triton(backend, hidden))
    plan = _Plan(heads=1, rows=rows, dtype=dtype, chunk=chunk, extras={"entropy": dtype} if entropy else {},
                 valid=valid)
    log_probs, *extra = _FusedLinear.apply(plan, False, None, _needs(flat, weight, bias), flat, weight, bias)
    log_probs = log_probs.view(target.shape)
    check_loss_finite(log_probs, {hidden_name: hidden, weight_name: weight, bias_name: bias})
    return log_probs, extra[0].view(target.shape) if entropy else None


def fused_linear_log_probs(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    chunk_size: int | None = None,
    backend: Backend = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Per-token log-probabilities of ``target`` under ``softmax((hidden @ weight.T + bias) / T)``, without the logits.

    Equal in value and gradient to
    ``torch.log_softmax((hidden @ weight.T + bias) / temperature, -1).gather(-1, target[..., None])``
    (0 at ignored positions), but the :math:`(N, V)` logits are made and consumed chunk by chunk
    of tokens, one chunk alive at a time. This is the input every policy-gradient and preference
    loss takes; the ``fused_linear_*_loss`` functions of this module apply them to it.

    .. math::
        z_n = (W h_n + b) / T, \qquad
        \log p_n = z_{n, y_n} - \log \textstyle\sum_k e^{z_{n,k}}, \qquad
        H_n = -\textstyle\sum_k p_{n,k} \log p_{n,k}

    Computed stably: with :math:`m` the largest :math:`z` and :math:`r` the sum of
    :math:`e^{z_k - m}` over every other class, :math:`\log p_y = -((m - z_y) + \operatorname{log1p}(r))`,
    exact to float32's relative precision even for a token predicted with probability
    :math:`1 - 10^{-9}` (where ``log_softmax`` in float32 rounds to 0).

    Gradients are exact for ``hidden``, ``weight`` and ``bias`` under any upstream gradient:
    backward recomputes each chunk's logits (four matrix products per chunk, autograd's three
    plus one). Half and bfloat16 inputs run the matrix products in their dtype and the rest in
    float32. Second derivatives are not supported. The entropies are detached (for logging).

    Args:
        hidden: Hidden states :math:`h` entering the head.
        weight: The head's weight :math:`W` (``nn.Linear(D, V).weight``), ``hidden``'s dtype and device.
        target: Token indices; positions equal to ``ignore_index`` get log-probability 0.
        bias: The head's bias, shape :math:`(V,)`, or ``None``.
        temperature: :math:`T > 0`; the logits are divided by it (TRL's and Liger's sampling
            temperature for GRPO).
        ignore_index: Target value of positions to skip (prompt, padding).
        return_entropy: Also return the per-token entropy :math:`H_n` (detached, 0 at ignored positions).
        chunk_size: Tokens per chunk; ``None`` keeps a chunk's logits within 64 MiB on a CPU and
            1 GiB on other devices.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"``: each chunk's softmax, log-probability,
            entropy and gradient in the Triton cross-entropy kernel on CUDA, or in torch operations
            (see :mod:`losskit._kernels`). The ``fused_linear_*_loss`` objectives take ``"auto"``.

    Shape:
        - hidden: :math:`(N, D)` or :math:`(B, L, D)`; weight :math:`(V, D)`; bias :math:`(V,)`.
        - target and output: ``hidden``'s shape without its last dimension.

    Returns:
        The log-probabilities in ``hidden``'s dtype, or ``(log_probs, entropy)``.

    Raises:
        ValueError: Shapes that do not fit together, a token index out of range, ``temperature <= 0``,
            a non-finite result (naming the input to blame).
        TypeError: Non-floating ``hidden`` or ``weight``, differing dtypes or devices, a non-integer ``target``.

    Examples:
        >>> import math, torch, losskit
        >>> hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> weight = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])  # logits [2, 0, 0] and [0, 2, 0]
        >>> lp = losskit.fused_linear_log_probs(hidden, weight, torch.tensor([0, -100]))
        >>> lp  # log(e^2 / (e^2 + 2)), and 0 for the ignored token
        tensor([-0.2395,  0.0000])
        >>> round(math.log(math.e**2 / (math.e**2 + 2)), 4)
        -0.2395
        >>> _, entropy = losskit.fused_linear_log_probs(hidden, weight, torch.tensor([0, 1]), return_entropy=True)
        >>> entropy  # both rows: -(p log p) summed over p = (e^2, 1, 1) / (e^2 + 2)
        tensor([0.6656, 0.6656])

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", ICLR 2025. Hsu et al.,
        "Liger Kernel: Efficient Triton Kernels for LLM Training", 2024 (the fused-linear
        preference and GRPO losses, which take these log-probabilities chunk by chunk).
    """
    check_bool("return_entropy", return_entropy)
    log_probs, entropy = _token_log_probs(hidden, weight, target, bias=bias, temperature=temperature,
                                          ignore_index=ignore_index, entropy=return_entropy, chunk_size=chunk_size,
                                          names=("hidden", "weight", "bias", "target"), backend=backend)
    log_probs = log_probs.to(hidden.dtype)
    if not return_entropy:
        return log_probs
    return log_probs, entropy.to(hidden.dtype)


# --- sequences ----------------------------------------------------------------------------------


@dataclass
class _Sequences:
    """Per-sequence sums of the policy's token log-probabilities, with what the objectives need."""

    log_probs: Tensor  # (B, L) per token, 0 at ignored positions, compute dtype
    mask: Tensor  # (B, L) bool
    entropy: Tensor | None  # (B, L) detached

    @property
    def summed(self) -> Tensor:
        return self.log_probs.sum(-1)

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(-1)


def _policy(hidden: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None, *, temperature: float,
            ignore_index: int, chunk_size: int | None, entropy: bool = False) -> _Sequences:
    if isinstance(hidden, Tensor) and hidden.dim() != 3:
        raise ValueError(f"hidden must have shape (B, L, D): B sequences of L tokens, got shape {tuple(hidden.shape)}")
    log_probs, ent = _token_log_probs(hidden, weight, target, bias=bias, temperature=temperature,
                                      ignore_index=ignore_index, entropy=entropy, chunk_size=chunk_size,
                                      names=("hidden", "weight", "bias", "target"))
    return _Sequences(log_probs, target.to(hidden.device) != ignore_index, ent)


def _check_non_positive(name: str, x: Tensor, mask: Tensor | None = None) -> None:
    if not checks_enabled() or x.numel() == 0:
        return
    bad = x > 0 if mask is None or mask.shape != x.shape else (x > 0) & mask
    if bool(bad.any()):
        raise ValueError(f"{name} must hold log-probabilities (<= 0); found values up to {x[bad].max().item():g}")


def _reference(policy: _Sequences, target: Tensor, *, ref_log_probs: Tensor | None, ref_hidden: Tensor | None,
               ref_weight: Tensor | None, ref_bias: Tensor | None, ignore_index: int, temperature: float,
               chunk_size: int | None, required: bool, per_token: bool = False) -> Tensor | None:
    """The reference policy's log-probabilities, detached: per sequence (summed), or per token.

    Given either as ``ref_log_probs`` (per sequence :math:`(B,)`, or per token :math:`(B, L)`,
    summed over the valid positions) or as the reference model's ``ref_hidden`` and head.
    """
    head = ref_hidden is not None or ref_weight is not None or ref_bias is not None
    if ref_log_probs is not None and head:
        raise ValueError("pass the reference either as ref_log_probs or as ref_hidden and ref_weight "
                         "(its hidden states and head), not both")
    shape = policy.mask.shape
    if ref_log_probs is not None:
        check_floating("ref_log_probs", ref_log_probs)
        allowed = (shape,) if per_token else (shape[:1], shape)
        if ref_log_probs.shape not in allowed:
            raise ValueError(f"ref_log_probs must have shape {tuple(shape[:1])} (one per sequence, summed) or "
                             f"{tuple(shape)} (per token), got shape {tuple(ref_log_probs.shape)}"
                             if not per_token else
                             f"ref_log_probs must have shape {tuple(shape)} (per token), got shape "
                             f"{tuple(ref_log_probs.shape)}")
        check_same_device("hidden", policy.log_probs, "ref_log_probs", ref_log_probs)
        ref = ref_log_probs.detach().to(policy.log_probs.dtype)
        _check_non_positive("ref_log_probs", ref, policy.mask)
        if ref.shape == shape and not per_token:
            ref = torch.where(policy.mask, ref, 0.0).sum(-1)
        return ref
    if head:
        if ref_hidden is None or ref_weight is None:
            raise ValueError("a reference model needs both ref_hidden (its hidden states) and ref_weight (its head)")
        if ref_hidden.dim() != 3 or ref_hidden.shape[:2] != shape:
            raise ValueError(f"ref_hidden must have shape (B, L, D_ref) with (B, L) = {tuple(shape)}, got shape "
                             f"{tuple(ref_hidden.shape)}")
        with torch.no_grad():
            ref, _ = _token_log_probs(ref_hidden.detach(), ref_weight.detach(), target,
                                      bias=None if ref_bias is None else ref_bias.detach(), temperature=temperature,
                                      ignore_index=ignore_index, entropy=False, chunk_size=chunk_size,
                                      names=("ref_hidden", "ref_weight", "ref_bias", "target"))
        ref = ref.to(policy.log_probs.dtype)
        return ref if per_token else ref.sum(-1)
    if required:
        raise ValueError("this loss needs the reference policy: pass ref_log_probs, or ref_hidden and ref_weight")
    return None


def _halves(hidden: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Chosen (first half of the batch) and rejected (second half)."""
    half = x.shape[0] // 2
    return x[:half], x[half:]


def _check_paired(hidden: Tensor) -> None:
    if isinstance(hidden, Tensor) and hidden.dim() == 3 and hidden.shape[0] % 2:
        raise ValueError(f"hidden must hold the chosen sequences, then as many rejected ones: an even batch size, "
                         f"got {hidden.shape[0]} sequences (shape {tuple(hidden.shape)})")


def _finish(loss: Tensor | tuple[Tensor, dict[str, Tensor]], hidden: Tensor):
    """The loss in ``hidden``'s dtype (diagnostics as they are)."""
    if isinstance(loss, tuple):
        return loss[0].to(hidden.dtype), loss[1]
    return loss.to(hidden.dtype)


_HEAD_ARGS = r"""hidden: The policy's hidden states entering its head, :math:`(B, L, D)`.
        weight: The head's weight :math:`(V, D)`, ``hidden``'s dtype and device.
        target: Token indices :math:`(B, L)` (shifted: ``hidden[:, t]`` predicts ``target[:, t]``),
            ``ignore_index`` at prompt and padding positions."""

_REF_ARGS = r"""ref_log_probs: The reference policy's log-probabilities, per sequence :math:`(B,)`
            (summed over the completion) or per token :math:`(B, L)` (summed here over the valid positions).
        ref_hidden, ref_weight, ref_bias: Or the reference model's hidden states :math:`(B, L, D_r)`,
            head and bias: its log-probabilities are then computed here, fused, without gradient."""

_COMMON_ARGS = r"""bias: The head's bias :math:`(V,)`, or ``None``.
        ignore_index: Target value of the positions that count nowhere.
        chunk_size: Tokens per chunk (see :func:`fused_linear_log_probs`)."""


def _docs(fn):
    fn.__doc__ = fn.__doc__.replace("{head_args}", _HEAD_ARGS).replace("{ref_args}", _REF_ARGS).replace(
        "{common_args}", _COMMON_ARGS)
    return fn


# --- policy gradient -----------------------------------------------------------------------------


def _old(policy: _Sequences, old_log_probs: Tensor | None) -> Tensor:
    """``old_log_probs`` checked, or the policy's own (detached: one update per generation)."""
    if old_log_probs is None:
        return policy.log_probs.detach()
    check_floating("old_log_probs", old_log_probs)
    if old_log_probs.shape != policy.mask.shape:
        raise ValueError(f"old_log_probs must have target's shape {tuple(policy.mask.shape)} (per token), got shape "
                         f"{tuple(old_log_probs.shape)}")
    check_same_device("hidden", policy.log_probs, "old_log_probs", old_log_probs)
    old = old_log_probs.detach().to(policy.log_probs.dtype)
    _check_non_positive("old_log_probs", old, policy.mask)
    return old


def _with_entropy(result, policy: _Sequences, hidden: Tensor, return_diagnostics: bool):
    if not return_diagnostics:
        return result.to(hidden.dtype)
    loss, diagnostics = result
    entropy = policy.entropy
    counted = policy.mask.sum().clamp_min(1).to(entropy.dtype)
    diagnostics["entropy"] = entropy.sum() / counted
    diagnostics["token_entropy"] = entropy
    return loss.to(hidden.dtype), diagnostics


_PG_DIAGNOSTICS = r"""return_diagnostics: Also return the unfused loss's diagnostics, plus ``entropy``
            (the mean over the valid tokens of the policy's entropy at temperature :math:`T`) and
            ``token_entropy`` (per token :math:`(B, L)`, 0 at ignored positions), all detached."""


@_docs
def fused_linear_grpo_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    rewards: Tensor,
    group_size: int,
    variant: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"] = "dapo",
    old_log_probs: Tensor | None = None,
    bias: Tensor | None = None,
    ref_log_probs: Tensor | None = None,
    ref_hidden: Tensor | None = None,
    ref_weight: Tensor | None = None,
    ref_bias: Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
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
    top_entropy_quantile: float = 1.0,
    aggregation: Literal["token_mean", "sequence_mean", "sequence_sum_norm"] | None = None,
    max_length: float | None = None,
    return_diagnostics: bool = False,
    sample_weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    r"""GRPO from the policy's hidden states and head, chunk by chunk, without the logits.

    :func:`losskit.grpo_loss` applied to the per-token log-probabilities of
    :func:`fused_linear_log_probs` at temperature :math:`T`, with the completion mask
    ``target != ignore_index``:

    .. math::
        \log p_{i,t} = \log\mathrm{softmax}\big((W h_{i,t} + b)/T\big)_{y_{i,t}}, \qquad
        \ell_{i,t} = -\min\big(r_{i,t} A_i,\
                     \mathrm{clip}(r_{i,t}, 1-\epsilon_\text{low}, 1+\epsilon_\text{high}) A_i\big)
                     + \beta\, k_3(\pi_\theta, \pi_\text{ref})_{i,t}

    with :math:`r_{i,t} = \exp(\log p_{i,t} - \log p^\text{old}_{i,t})` and :math:`A_i` the
    group-normalized reward. The reference log-probabilities are per token (given, or computed
    from ``ref_hidden`` at the same temperature).

    Args:
        {head_args}
        rewards, group_size: One reward per completion :math:`(B,)`, groups of ``group_size``.
        old_log_probs: Per-token log-probabilities :math:`(B, L)` under the policy that sampled;
            ``None``: the current ones, detached (one update per generation: the ratio is 1).
        ref_log_probs: The reference policy's per-token log-probabilities :math:`(B, L)`.
        ref_hidden, ref_weight, ref_bias: Or the reference model's hidden states and head.
        temperature: :math:`T > 0`, the sampling temperature (TRL's and Liger's ``temperature``).
        variant: TRL's ``loss_type``, as in :func:`losskit.grpo_loss`.
        beta, use_bias_correction_kl, clip_eps, clip_eps_high, delta: As in :func:`losskit.grpo_loss`.
        sapo_temperature_pos, sapo_temperature_neg, scale_rewards, eps: As in :func:`losskit.grpo_loss`.
        ratio_level, importance_sampling_ratio: As in :func:`losskit.grpo_loss`.
        sampling_log_probs, off_policy_mask_threshold: As in :func:`losskit.grpo_loss`.
        top_entropy_quantile: As in :func:`losskit.grpo_loss`, with the entropies computed here, fused.
        aggregation, max_length, reduction, normalizer: As in :func:`losskit.grpo_loss`.
        {pg_diagnostics}
        sample_weight: Weights as :func:`losskit.grpo_loss`'s ``weight=``.
        {common_args}

    Returns:
        The loss in ``hidden``'s dtype, or ``(loss, diagnostics)``.

    Raises:
        ValueError: A reference given both ways, positive ``old_log_probs`` or ``ref_log_probs``,
            shapes that do not fit, options out of range.
        TypeError: Non-floating ``hidden`` or ``weight``, differing dtypes, a non-integer ``target``.

    Examples:
        >>> import torch, losskit
        >>> weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> hidden = torch.zeros(2, 2, 2)  # every token has probability 1/2, entropy log 2
        >>> target = torch.tensor([[0, 1], [1, -100]])
        >>> loss, diag = losskit.fused_linear_grpo_loss(hidden, weight, target, rewards=torch.tensor([1.0, 0.0]),
        ...                                              group_size=2, return_diagnostics=True)
        >>> loss  # ratio 1: the token mean of -A, (-0.707 - 0.707 + 0.707) / 3
        tensor(-0.2357)
        >>> diag["entropy"]
        tensor(0.6931)

    References:
        Shao et al., "DeepSeekMath" (GRPO), 2024. Liger-Kernel's ``LigerFusedLinearGRPOLoss``, TRL's ``GRPOTrainer``.
    """
    check_bool("return_diagnostics", return_diagnostics)
    top_entropy_quantile = check_number("top_entropy_quantile", top_entropy_quantile, low=0.0, high=1.0,
                                        low_open=True)
    policy = _policy(hidden, weight, target, bias, temperature=temperature, ignore_index=ignore_index,
                     chunk_size=chunk_size, entropy=return_diagnostics or top_entropy_quantile < 1.0)
    old = _old(policy, old_log_probs)
    ref = _reference(policy, target, ref_log_probs=ref_log_probs, ref_hidden=ref_hidden, ref_weight=ref_weight,
                     ref_bias=ref_bias, ignore_index=ignore_index, temperature=temperature, chunk_size=chunk_size,
                     required=False, per_token=True)
    result = _losses.grpo_loss(policy.log_probs, old, rewards=rewards, group_size=group_size, variant=variant,
                               ref_log_probs=ref, beta=beta, use_bias_correction_kl=use_bias_correction_kl,
                               clip_eps=clip_eps, clip_eps_high=clip_eps_high, delta=delta,
                               sapo_temperature_pos=sapo_temperature_pos, sapo_temperature_neg=sapo_temperature_neg,
                               scale_rewards=scale_rewards, eps=eps, ratio_level=ratio_level,
                               importance_sampling_ratio=importance_sampling_ratio,
                               sampling_log_probs=sampling_log_probs,
                               off_policy_mask_threshold=off_policy_mask_threshold,
                               entropies=policy.entropy, top_entropy_quantile=top_entropy_quantile,
                               mask=policy.mask, aggregation=aggregation,
                               max_length=max_length, return_diagnostics=return_diagnostics, weight=sample_weight,
                               reduction=reduction, normalizer=normalizer)
    return _with_entropy(result, policy, hidden, return_diagnostics)


@_docs
def fused_linear_ppo_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    advantages: Tensor,
    old_log_probs: Tensor | None = None,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    ratio_level: Literal["token", "sequence"] = "token",
    normalize_advantages: bool = False,
    aggregation: Literal["token_mean", "sequence_mean", "sequence_sum_norm"] = "token_mean",
    max_length: float | None = None,
    return_diagnostics: bool = False,
    sample_weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    r"""PPO's clipped surrogate from the policy's hidden states and head, chunk by chunk, without the logits.

    :func:`losskit.ppo_clip_loss` applied to the per-token log-probabilities of
    :func:`fused_linear_log_probs` at temperature :math:`T`, with the mask ``target != ignore_index``
    (advantages given: GAE, or any group baseline computed by the caller):

    .. math::
        \ell_{i,t} = -\min\big(r_{i,t} A_{i,t},\
                     \mathrm{clip}(r_{i,t}, 1-\epsilon_\text{low}, 1+\epsilon_\text{high}) A_{i,t}\big),
        \qquad r_{i,t} = \exp(\log p_{i,t} - \log p^\text{old}_{i,t})

    Args:
        {head_args}
        advantages: Per token :math:`(B, L)` or per sequence :math:`(B,)`.
        old_log_probs: Per-token log-probabilities :math:`(B, L)` under the sampling policy;
            ``None``: the current ones, detached.
        temperature: :math:`T > 0`, the sampling temperature.
        clip_eps, clip_eps_high, dual_clip, ratio_level: As in :func:`losskit.ppo_clip_loss`.
        normalize_advantages, aggregation, max_length, reduction, normalizer: As in :func:`losskit.ppo_clip_loss`.
        {pg_diagnostics}
        sample_weight: Weights as :func:`losskit.ppo_clip_loss`'s ``weight=``.
        {common_args}

    Returns:
        The loss in ``hidden``'s dtype, or ``(loss, diagnostics)``.

    Raises:
        ValueError: Positive ``old_log_probs``, shapes that do not fit, options out of range.
        TypeError: Non-floating ``hidden`` or ``weight``, differing dtypes, a non-integer ``target``.

    Examples:
        >>> import torch, losskit
        >>> weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> hidden = torch.zeros(1, 2, 2)  # log p = log(1/2) for each token
        >>> old = torch.log(torch.tensor([[0.25, 0.75]]))  # ratios 2 and 2/3
        >>> losskit.fused_linear_ppo_loss(hidden, weight, torch.tensor([[0, 1]]), advantages=torch.tensor([1.0]),
        ...                               old_log_probs=old, reduction="none")  # -min(r, clip(r)) A
        tensor([[-1.2000, -0.6667]])

    References:
        Schulman et al., "Proximal Policy Optimization Algorithms", 2017.
    """
    check_bool("return_diagnostics", return_diagnostics)
    policy = _policy(hidden, weight, target, bias, temperature=temperature, ignore_index=ignore_index,
                     chunk_size=chunk_size, entropy=return_diagnostics)
    old = _old(policy, old_log_probs)
    result = _losses.ppo_clip_loss(policy.log_probs, old, advantages=advantages, clip_eps=clip_eps,
                                   clip_eps_high=clip_eps_high, dual_clip=dual_clip, ratio_level=ratio_level,
                                   normalize_advantages=normalize_advantages, mask=policy.mask,
                                   aggregation=aggregation, max_length=max_length,
                                   return_diagnostics=return_diagnostics, weight=sample_weight, reduction=reduction,
                                   normalizer=normalizer)
    return _with_entropy(result, policy, hidden, return_diagnostics)


for _fn in (fused_linear_grpo_loss, fused_linear_ppo_loss):
    _fn.__doc__ = _fn.__doc__.replace("{pg_diagnostics}", _PG_DIAGNOSTICS)
del _fn
