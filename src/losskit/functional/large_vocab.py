r"""Cross-entropy and divergences over a large vocabulary, fused with the output projection.

A language model's last step multiplies hidden states :math:`h` of shape :math:`(N, D)` by the
head :math:`W` of shape :math:`(V, D)` and feeds the :math:`(N, V)` logits to a loss. With
:math:`N = 8192` tokens and :math:`V = 128\,256` the float32 logits take 4.2 GB, their gradient
another 4.2 GB, and autograd keeps the log-softmax alive too: the loss needs several times the
memory of the whole model's activations. The losses here never build that tensor. They walk the
tokens in chunks inside one ``torch.autograd.Function``; each chunk's logits are made by one
matrix product, turned into the loss and its gradient in place, projected back onto
:math:`\nabla h` and :math:`\nabla W`, and freed before the next chunk. At most one chunk of
logits (and one or two buffers of the same size) is alive at any time.

Two strategies, picked from the reduction (see ``docs/large_vocab.md``):

* ``"mean"`` / ``"sum"`` / ``normalizer=``: the gradients are computed during the forward pass
  (three matrix products per chunk, as many as plain autograd does) for the sum, and kept until
  backward, which only multiplies them by the scalar upstream gradient over the mean's
  denominator. Exact: a reduced loss receives one scalar upstream gradient, so every token's share
  of it is known in forward.
* ``"none"``: the forward pass computes the per-token losses only; backward recomputes each
  chunk's logits and scales each token's gradient by *its own* upstream gradient (four matrix
  products per chunk instead of three, about a third more time, same memory). Computing the
  weight gradient in forward would sum over tokens before the per-token upstream gradients are
  known; that shortcut is exact only for a uniform upstream gradient and silently wrong for any
  other (the failure reported against Liger-Kernel's fused kernel).

Second derivatives are not supported (``create_graph=True`` raises).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from losskit._core.checks import (
    check_bool,
    check_broadcastable,
    check_class_indices,
    check_class_vector,
    check_floating,
    check_ignore_index,
    check_int,
    check_loss_finite,
    check_normalizer_value,
    check_number,
    check_same_device,
    check_tensor,
)
from losskit._core.numerics import compute_dtype, finite_log, log_softmax
from losskit._core.reduction import Reduction, check_reduction
from losskit._kernels import Backend, triton_cross_entropy_chunk, use_triton
from losskit.functional._softmax import cross_entropy_rows
from losskit.functional._vocab_parallel import (
    VocabShard,
    agree_on_shards,
    gather_full,
    is_vocab_parallel,
    options_fingerprint,
    vocab_parallel_cross_entropy,
)
from losskit.functional.divergence import kl_terms

__all__ = [
    "fused_linear_cross_entropy",
    "fused_linear_js_div",
    "fused_linear_kl_div",
    "vocab_parallel_cross_entropy",
]

# --- chunk size ----------------------------------------------------------------------------------

# Memory budget for the chunk-sized buffers alive at once (logits, their gradient in place, and
# the temporaries of the elementwise part). On a CPU, matrix products of 128 rows or more run at
# full speed (measured on 2 cores, D=1024, V=32064: 128 to 2048 rows within run-to-run noise), so
# a small budget costs nothing. GPUs need a few thousand rows to keep their matrix units busy;
# their budget is larger and has not been tuned on hardware.
_BUDGET_BYTES = {"cpu": 64 * 2**20}
_DEFAULT_BUDGET_BYTES = 1024 * 2**20


# Under vocabulary parallelism a rank's block is a fraction of the head, so the fixed budget can
# exceed a tenth of what the naive form holds (its block's logits and their gradient): at
# N=2048, V=32064 on 2 ranks, 344-row chunks added 14.4% of it, 256-row ones 7.1%
# (benchmarks/bench_vocab_parallel.py). There a chunk takes at most an eighth of the tokens; that
# cap never goes below the 128 rows at which CPU matrix products reach full speed (the budget
# alone may still give fewer, for a wide block).
_SHARDED_FRACTION = 8
_FULL_SPEED_ROWS = 128


def _chunk_rows(rows: int, vocab: int, dtype: torch.dtype, device: torch.device, buffers: int,
                chunk_size: int | None, *, sharded: bool = False) -> int:
    """Tokens per chunk: ``chunk_size`` if given, else what fits the device's budget (and, for a
    vocabulary block, an eighth of the tokens: see ``_SHARDED_FRACTION``)."""
    if chunk_size is not None:
        return max(1, min(chunk_size, rows))
    budget = _BUDGET_BYTES.get(device.type, _DEFAULT_BUDGET_BYTES)
    per_row = max(vocab, 1) * torch.finfo(dtype).bits // 8 * buffers
    fit = max(1, budget // per_row)
    if sharded:
        fit = min(fit, max(_FULL_SPEED_ROWS, rows // _SHARDED_FRACTION))
    if fit >= 16:
        fit -= fit % 8  # whole multiples of 8 rows keep matrix products aligned
    return max(1, min(fit, rows))


# --- the chunked engine ----------------------------------------------------------------------------

# A chunk's elementwise part: (logits per head, rows, per-row upstream gradient or None, which heads
# need a gradient) -> (loss per row, extra per-row outputs, d loss / d logits per head or None).
ChunkFn = Callable[[list[Tensor], slice, Tensor | None, list[bool]],
                   tuple[Tensor, dict[str, Tensor], list[Tensor | None] | None]]


@dataclass
class _Plan:
    """What the engine needs besides the tensors it differentiates."""

    heads: int  # 1 (cross-entropy) or 2 (student and teacher)
    rows: int  # tokens per chunk
    dtype: torch.dtype  # compute dtype
    chunk: ChunkFn
    extras: dict[str, torch.dtype] = field(default_factory=dict)
    valid: Tensor | None = None  # (N,) bool, False at ignored tokens, whose hidden rows are never read
    shard: VocabShard | None = None  # the vocabulary block of this rank, under vocabulary parallelism

    def hidden_rows(self, h: Tensor, part: slice) -> Tensor:
        """The chunk's hidden rows, ignored ones as 0: an ignored token may hold NaN or inf, which
        would reach the weight gradient through 0 * NaN (and the token's own through the softmax)."""
        rows = h[part]
        return rows if self.valid is None else torch.where(self.valid[part].unsqueeze(1), rows, 0.0)


def _logits(h: Tensor, w: Tensor, b: Tensor | None, dtype: torch.dtype) -> Tensor:
    """One chunk of logits in the compute dtype, in a fresh buffer the caller may overwrite.

    The product runs in the inputs' dtype (as ``h @ w.T + b`` does); half-precision logits are
    then upcast, so everything after the product runs in float32.
    """
    z = torch.addmm(b, h, w.t()) if b is not None else torch.mm(h, w.t())
    return z if z.dtype == dtype else z.to(dtype)


def _sweep(plan: _Plan, tensors: tuple[Tensor | None, ...], needs: tuple[bool, ...],
           scale: Tensor | None) -> tuple[Tensor, dict[str, Tensor], list[Tensor | None]]:
    """Walk the chunks: per-token loss and extras, and the gradients ``needs`` asks for.

    ``tensors`` holds ``(hidden, weight, bias)`` per head; ``scale`` is the upstream gradient per
    token (``None``: 1). Weight and bias gradients accumulate in the compute dtype.
    """
    lead = tensors[0]
    rows, device, dtype = lead.shape[0], lead.device, plan.dtype
    loss = torch.empty(rows, dtype=dtype, device=device)
    extras = {name: torch.empty(rows, dtype=kind, device=device) for name, kind in plan.extras.items()}
    heads = [tensors[3 * i:3 * i + 3] for i in range(plan.heads)]
    grads: list[Tensor | None] = []
    for (h, w, b), need in zip(heads, (needs[3 * i:3 * i + 3] for i in range(plan.heads)), strict=True):
        grads.append(torch.empty(h.shape, dtype=h.dtype, device=device) if need[0] else None)
        grads.append(torch.empty(w.shape, dtype=dtype, device=device) if need[1] else None)
        grads.append(torch.empty(b.shape, dtype=dtype, device=device) if need[2] else None)
    want = [any(needs[3 * i:3 * i + 3]) for i in range(plan.heads)]
    first = True  # the first chunk writes the weight and bias gradients, later ones add (no zero fill)
    for start in range(0, rows, plan.rows):
        part = slice(start, min(start + plan.rows, rows))
        hidden = [plan.hidden_rows(h, part) for h, _, _ in heads]
        logits = [_logits(hp, w, b, dtype) for hp, (_, w, b) in zip(hidden, heads, strict=True)]
        value, chunk_extras, dlogits = plan.chunk(logits, part, None if scale is None else scale[part], want)
        del logits
        loss[part] = value
        for name, x in chunk_extras.items():
            extras[name][part] = x
        for i, (_, w, _) in enumerate(heads):
            d = None if dlogits is None else dlogits[i]
            if d is None:
                continue
            grad_h, grad_w, grad_b = grads[3 * i:3 * i + 3]
            if grad_h is not None:
                torch.mm(d if d.dtype == w.dtype else d.to(w.dtype), w, out=grad_h[part])
            if grad_w is not None:
                hp = hidden[i] if hidden[i].dtype == dtype else hidden[i].to(dtype)
                if first:
                    torch.mm(d.t(), hp, out=grad_w)
                else:
                    grad_w.addmm_(d.t(), hp)
            if grad_b is not None:
                if first:
                    torch.sum(d, 0, out=grad_b)
                else:
                    grad_b.add_(d.sum(0))
        del dlogits, d, hidden
        first = False
    if first:  # no chunk at all: empty input
        for g in grads[1::3] + grads[2::3]:
            if g is not None:
                g.zero_()
    if plan.shard is not None:  # every rank's block contributes to the replicated hidden states
        for g in grads[0::3]:
            if g is not None:
                plan.shard.all_reduce_(g)
    return loss, extras, grads


class _FusedLinear(torch.autograd.Function):
    """Loss over ``hidden @ weight.T + bias`` chunk by chunk; see the module docstring."""

    @staticmethod
    def forward(ctx, plan: _Plan, reduce: bool, divisor: Tensor | None, needs: tuple[bool, ...],
                *tensors: Tensor | None):
        """``reduce``: return ``sum(loss) / divisor`` (``divisor`` None: 1), else the per-token loss."""
        in_forward = reduce and any(needs)
        # The gradients are computed for the sum; backward divides them by ``divisor`` with the
        # upstream gradient. Dividing the logits' gradient first would push the entries of a mean
        # over many tokens below float16's normal range before its matrix products.
        loss, extras, grads = _sweep(plan, tensors, needs if in_forward else (False,) * len(needs), None)
        ctx.plan, ctx.reduce, ctx.divisor, ctx.needs = plan, reduce, divisor, needs
        ctx.save_for_backward(*tensors)
        ctx.grads = grads if in_forward else None
        out = loss if not reduce else loss.sum() if divisor is None else loss.sum() / divisor
        extra = tuple(extras.values())
        ctx.mark_non_differentiable(*extra)
        return (out, *extra)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor, *_unused: Tensor):
        tensors = ctx.saved_tensors
        dtype = ctx.plan.dtype
        if ctx.reduce and ctx.grads is not None:
            grads, ctx.grads = ctx.grads, None  # used once; a second backward recomputes
            factor = grad_out.to(dtype) if ctx.divisor is None else grad_out.to(dtype) / ctx.divisor
            # loss.backward() of a sum sends exactly 1: skip two passes over the gradients. Reading
            # the value needs a host sync, free on a CPU and avoided on other devices.
            if factor.device.type != "cpu" or factor.item() != 1.0:
                grads = [None if g is None else g.mul_(factor) if g.dtype == dtype
                         else g.copy_(g.to(dtype).mul_(factor)) for g in grads]
        else:
            rows = tensors[0].shape[0]
            scale = grad_out.to(dtype)
            if ctx.divisor is not None:
                scale = scale / ctx.divisor
            _, _, grads = _sweep(ctx.plan, tensors, ctx.needs, scale.expand(rows) if ctx.reduce else scale)
        out = [None if g is None else g.to(t.dtype) for g, t in zip(grads, tensors, strict=True)]
        return (None, None, None, None, *out)


def _needs(*tensors: Tensor | None) -> tuple[bool, ...]:
    enabled = torch.is_grad_enabled()
    return tuple(enabled and t is not None and t.requires_grad for t in tensors)


def _divisor(reduction: Reduction, normalizer: float | Tensor | None, counted: Tensor) -> Tensor | None:
    """What ``"mean"`` divides the weighted sum by: ``normalizer`` (a constant), or the counted
    weight (1 where nothing counts, so an empty or fully ignored batch gives 0); None otherwise."""
    if reduction != "mean":
        return None
    if normalizer is not None:
        check_normalizer_value(normalizer)
        return torch.as_tensor(normalizer).detach().to(device=counted.device, dtype=counted.dtype).reshape(())
    return torch.where(counted == 0, torch.ones_like(counted), counted)


# --- argument checks -------------------------------------------------------------------------------


def _check_head(hidden_name: str, hidden: Tensor, weight_name: str, weight: Tensor,
                bias_name: str, bias: Tensor | None) -> None:
    check_floating(hidden_name, hidden)
    check_floating(weight_name, weight)
    if hidden.dim() < 2:
        raise ValueError(f"{hidden_name} must have shape (N, D) or (B, T, D), got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1] or weight.shape[0] == 0:
        raise ValueError(f"{weight_name} must have shape (V, D) with V >= 1 and D = {hidden.shape[-1]} "
                         f"({hidden_name}'s last dimension), got shape {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype or weight.device != hidden.device:
        raise TypeError(f"{weight_name} must have {hidden_name}'s dtype and device ({hidden.dtype}, "
                        f"{hidden.device}), got {weight.dtype}, {weight.device}")
    if bias is not None:
        check_floating(bias_name, bias)
        if bias.shape != weight.shape[:1]:
            raise ValueError(f"{bias_name} must have shape ({weight.shape[0]},), one entry per row of "
                             f"{weight_name}, got shape {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype or bias.device != hidden.device:
            raise TypeError(f"{bias_name} must have {hidden_name}'s dtype and device ({hidden.dtype}, "
                            f"{hidden.device}), got {bias.dtype}, {bias.device}")


def _check_labels(name: str, target: Tensor, hidden_name: str, hidden: Tensor) -> None:
    check_tensor(name, target)
    check_same_device(hidden_name, hidden, name, target)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {target.dtype}")
    if target.shape != hidden.shape[:-1]:
        raise ValueError(f"{name} must have shape {tuple(hidden.shape[:-1])} ({hidden_name}'s shape without "
                         f"its last dimension D), got shape {tuple(target.shape)}")


def _check_chunk_size(chunk_size: object) -> None:
    if chunk_size is None:
        return
    check_int("chunk_size", chunk_size, low=1)


# --- cross-entropy -----------------------------------------------------------------------------------


class FusedCrossEntropyOutput(NamedTuple):
    """What :func:`fused_linear_cross_entropy` returns with ``return_components=True``.

    ``loss`` is the differentiable total; the rest are detached, for logging, and reduced like
    ``loss`` (``"none"``: per token; ``"sum"``; ``"mean"`` or ``normalizer=``: divided like it).
    ``cross_entropy + z_loss == loss``. ``accuracy`` is the fraction of counted tokens whose
    largest logit is the target (unweighted; 0 when none counts; per token 1.0 or 0.0 under
    ``"none"``, 0.0 at ignored tokens).
    """

    loss: Tensor
    cross_entropy: Tensor
    z_loss: Tensor
    accuracy: Tensor


@dataclass
class _CrossEntropyChunk:
    """The elementwise part of cross-entropy on one chunk of logits, in place (the shared kernel
    :func:`losskit.functional._softmax.cross_entropy_rows`)."""

    index: Tensor  # (N,) class, 0 at ignored tokens
    valid: Tensor  # (N,) bool
    target_weight: Tensor | None  # (N,) w[y], or None without class weights
    class_weight: Tensor | None  # (V,)
    label_smoothing: float
    z_loss: float
    softcap: float | None
    accuracy: bool
    shard: VocabShard | None = None
    triton: bool = False  # the Triton kernel (one vocabulary block only) instead of the torch ops

    def __call__(self, logits: list[Tensor], part: slice, scale: Tensor | None,
                 want: list[bool]) -> tuple[Tensor, dict[str, Tensor], list[Tensor | None] | None]:
        options = {"class_weight": self.class_weight, "label_smoothing": self.label_smoothing, "z_loss": self.z_loss,
                   "softcap": self.softcap, "scale": scale, "with_grad": want[0], "accuracy": self.accuracy}
        if self.triton:
            loss, extras, grad = triton_cross_entropy_chunk(logits[0], self.index[part], self.valid[part], **options)
        else:
            loss, extras, grad = cross_entropy_rows(
                logits[0], self.index[part], self.valid[part], shard=self.shard,
                target_weight=None if self.target_weight is None else self.target_weight[part], **options)
        return loss, extras, None if grad is None else [grad]


def fused_linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    class_weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    chunk_size: int | None = None,
    return_components: bool = False,
    process_group: object | None = None,
    backend: Backend = "auto",
) -> Tensor | FusedCrossEntropyOutput:
    r"""Cross-entropy of ``hidden @ weight.T + bias`` without ever holding the full logits.

    The loss head of a language model, fused: equal in value and gradient to
    ``losskit.cross_entropy(hidden @ weight.T + bias, target, weight=class_weight, ...)`` under
    every option, but the :math:`(N, V)` logits are produced and consumed chunk by chunk of
    tokens, so the loss needs memory for one chunk instead of several full copies (the logits,
    their gradient, the saved log-softmax). See :mod:`losskit.functional.large_vocab` and
    ``docs/large_vocab.md`` for the memory arithmetic and the two backward strategies.

    .. math::
        x_n = W h_n + b, \qquad \tilde x = c \tanh(x / c) \ \text{(if softcap } c\text{)}, \qquad
        \mathrm{lse}_n = \log \textstyle\sum_k e^{\tilde x_{n,k}}

        \ell_n = (1-\varepsilon)\, w_{y_n} (\mathrm{lse}_n - \tilde x_{n,y_n})
                 + \frac{\varepsilon}{V} \sum_k w_k (\mathrm{lse}_n - \tilde x_{n,k})
                 + z\, w_{y_n} \mathrm{lse}_n^2

    ``"mean"`` divides :math:`\sum_n \ell_n` by :math:`\sum_n w_{y_n}` over counted tokens
    (the token count without class weights); ``normalizer=n`` divides by :math:`n` instead: the
    tokens of all gradient-accumulation steps, or of all ranks (``losskit.distributed``).

    Gradients are exact for ``hidden``, ``weight`` and ``bias`` under every reduction,
    including ``"none"`` followed by any upstream gradient (a per-token weighting, a mask, a
    sequence-level reduction). Reduced losses get their gradients computed during the forward
    pass and only scaled in backward (three matrix products, as in plain autograd);
    ``"none"`` recomputes the logits in backward (four). Inputs are never written to. Half and
    bfloat16 inputs run their matrix products in their own dtype and everything else in
    float32; the weight and bias gradients accumulate in float32 across chunks; every result
    and gradient comes back in the inputs' dtype. Second derivatives are not supported.

    Args:
        hidden: Hidden states :math:`h` entering the head.
        weight: The head's weight :math:`W` (``nn.Linear(D, V).weight``, or the tied embedding
            matrix), same dtype and device as ``hidden``. A weight (or bias) sharded by FSDP2
            (a ``Shard(0)`` ``DTensor``) is gathered inside the call, and its gradient is
            reduce-scattered back with FSDP2's average over the ranks.
        target: Class indices; tokens equal to ``ignore_index`` count nowhere.
        bias: The head's bias :math:`b`, shape :math:`(V,)`, or ``None``.
        ignore_index: Target value of tokens to skip (padding, prompt tokens).
        label_smoothing: :math:`\varepsilon \in [0, 1]`, as in ``torch.nn.CrossEntropyLoss``.
        z_loss: Coefficient :math:`z \ge 0` of :math:`\mathrm{lse}^2` (PaLM), part of the loss and
            of its gradient only when non-zero.
        softcap: Cap :math:`c > 0` applied to the logits before everything else (Gemma 2), or ``None``.
        class_weight: Per-class weights :math:`w`, shape :math:`(V,)`: what
            :func:`losskit.cross_entropy` calls ``weight=``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead (a constant:
            no gradient flows into it).
        chunk_size: Tokens per chunk. ``None`` picks it from the shapes: as many tokens as keep
            the chunk's buffers (logits, in place turned into their gradient, plus one more
            buffer of that size) within 64 MiB on a CPU and 1 GiB on other devices.
        return_components: Return a :class:`FusedCrossEntropyOutput` (the total, and detached
            cross-entropy, z-loss and token accuracy) instead of the loss alone.
        process_group: Split the vocabulary over this group's ranks (tensor parallelism of the
            head): ``weight`` and ``bias`` are this rank's contiguous block of classes, in rank
            order (blocks may differ in size), ``target`` holds global class indices, and
            ``hidden``, ``target`` and ``class_weight`` (the whole vocabulary's) are the same on
            every rank. The result, identical on every rank, and ``hidden``'s gradient (summed
            over the ranks inside the call) equal the single-process loss on the full head under
            every option; each rank's ``weight`` and ``bias`` receive their rows of the full
            gradient. No rank forms more than one chunk of its block's logits. Each chunk adds one
            all-gather of five numbers per token; every rank must call with the same options
            and backpropagate the same upstream gradient. A bad setup (ranks disagreeing on
            options or targets, an empty block, a class outside the global vocabulary) raises on
            every rank. ``None`` or a group of one rank: one process.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"``: each chunk's softmax, loss and gradient
            in one Triton kernel on CUDA (two passes over the chunk's logits, the gradient written
            over them; the matrix products stay cuBLAS's), or in torch operations (see
            :mod:`losskit._kernels`). With ``process_group`` the torch path runs (``"triton"``
            raises), since the kernel has no vocabulary blocks.

    Shape:
        - hidden: :math:`(N, D)` or :math:`(B, T, D)` (any leading dimensions).
        - weight: :math:`(V, D)`; bias and class_weight: :math:`(V,)`.
        - target: ``hidden``'s shape without its last dimension.
        - output: scalar, or ``target``'s shape with ``reduction="none"``.

    Returns:
        The loss in ``hidden``'s dtype (or :class:`FusedCrossEntropyOutput`). Ignored tokens are
        0 under ``"none"``; an empty batch or one where every token is ignored gives 0 with a
        (zero) gradient, never NaN.

    Raises:
        ValueError: Shapes that do not fit together, a class index out of range, a non-finite
            result (naming the input to blame), options out of range, a bad reduction.
        TypeError: A non-floating ``hidden`` or ``weight``, differing dtypes or devices, a
            non-integer ``target``, a ``chunk_size`` that is not an int.

    Examples:
        >>> import torch, losskit
        >>> hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> weight = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])  # 3 classes
        >>> target = torch.tensor([0, 2])
        >>> # logits [2, 0, 0] and [0, 2, 0]: (log(1 + 2e^-2) + log(2 + e^2)) / 2
        >>> losskit.fused_linear_cross_entropy(hidden, weight, target)
        tensor(1.2395)
        >>> losskit.cross_entropy(hidden @ weight.T, target)
        tensor(1.2395)

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", ICLR 2025.
        Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training", 2024 (fused linear
        cross-entropy). Chowdhery et al., "PaLM" (z-loss), 2022. Gemma Team, "Gemma 2" (softcap),
        2024. Options and defaults follow ``torch.nn.CrossEntropyLoss`` and
        :func:`losskit.cross_entropy`.
    """
    weight, bias = gather_full(weight), gather_full(bias)

    def check() -> tuple[int, list[object], list[object]]:
        check_reduction(reduction, normalizer)
        check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        check_number("z_loss", z_loss, low=0.0)
        if softcap is not None:
            check_number("softcap", softcap, low=0.0, low_open=True)
        check_bool("return_components", return_components)
        _check_chunk_size(chunk_size)
        _check_head("hidden", hidden, "weight", weight, "bias", bias)
        _check_labels("target", target, "hidden", hidden)
        check_ignore_index(ignore_index, optional=False)
        if class_weight is not None:
            check_tensor("class_weight", class_weight)
        options = options_fingerprint(hidden, weight.shape[1], weight.requires_grad and torch.is_grad_enabled(),
                                      None if bias is None else bias.requires_grad and torch.is_grad_enabled(),
                                      ignore_index, label_smoothing, z_loss, softcap, reduction, chunk_size,
                                      return_components, None if isinstance(normalizer, Tensor) else normalizer)
        return weight.shape[0], options, [target, class_weight, normalizer if isinstance(normalizer, Tensor) else None]

    shard = agree_on_shards(process_group, check) if is_vocab_parallel(process_group) else None
    if shard is None:
        check()
    if shard is not None and backend == "triton":
        raise ValueError("backend='triton' has no vocabulary-parallel form: with process_group, use backend='auto' "
                         "or 'torch'")
    triton = shard is None and use_triton(backend, hidden)  # "auto" over a vocabulary split: the torch path
    eps, zl = float(label_smoothing), float(z_loss)
    softcap = None if softcap is None else float(softcap)
    vocab = weight.shape[0] if shard is None else shard.classes
    dtype = compute_dtype(hidden.dtype)
    local_class_weight = None
    if class_weight is not None:
        check_class_vector("class_weight", class_weight, vocab)
        check_same_device("hidden", hidden, "class_weight", class_weight)
        class_weight = class_weight.detach().to(dtype)
        local_class_weight = class_weight if shard is None else class_weight[shard.start:shard.start + weight.shape[0]]
        if shard is not None:
            shard.weight_sum = class_weight.sum()
    elif shard is not None:
        shard.weight_sum = float(vocab)
    check_class_indices("target", target, vocab, ignore_index)

    flat = hidden.reshape(-1, hidden.shape[-1])
    labels = target.reshape(-1).to(device=hidden.device, dtype=torch.long)
    valid = labels != ignore_index
    index = torch.where(valid, labels, torch.zeros_like(labels))
    target_weight = None if class_weight is None else class_weight[index]
    buffers = 2 + (softcap is not None) + (dtype != hidden.dtype)
    widest = weight.shape[0] if shard is None else max(shard.sizes)  # every rank walks the same chunks
    rows = _chunk_rows(flat.shape[0], widest, dtype, hidden.device, buffers, chunk_size, sharded=shard is not None)
    chunk = _CrossEntropyChunk(index, valid, target_weight, local_class_weight, eps, zl, softcap, return_components,
                               shard, triton)
    extras = {"z": dtype, **({"correct": torch.bool} if return_components else {})}
    plan = _Plan(heads=1, rows=rows, dtype=dtype, chunk=chunk, extras=extras, valid=valid, shard=shard)
    reduce = reduction != "none"
    counted_weight = valid.to(dtype) if target_weight is None else torch.where(valid, target_weight, 0.0)
    divisor = _divisor(reduction, normalizer, counted_weight.sum())
    loss, z_tok, *correct = _FusedLinear.apply(plan, reduce, divisor, _needs(flat, weight, bias), flat, weight,
                                               bias)
    if not reduce:
        loss = loss.view(target.shape)
    computed, loss = loss, loss.to(hidden.dtype)
    check_loss_finite(loss, {"hidden": hidden, "weight": weight, "bias": bias, "class_weight": class_weight},
                      computed=computed, options={"normalizer": normalizer})
    if not return_components:
        return loss
    with torch.no_grad():
        z_part = z_tok.view(target.shape) if not reduce else z_tok.sum() if divisor is None else z_tok.sum() / divisor
        ce_part = loss.detach().to(dtype) - z_part
        hits = correct[0].to(dtype)
        if reduce:
            tokens = valid.sum().to(dtype)
            accuracy = hits.sum() / torch.where(tokens == 0, torch.ones_like(tokens), tokens)
        else:
            accuracy = hits.view(target.shape)
    return FusedCrossEntropyOutput(loss, ce_part.to(hidden.dtype), z_part.to(hidden.dtype), accuracy)


# --- divergences ---------------------------------------------------------------------------------------


@dataclass
class _DivergenceChunk:
    """The elementwise part of a divergence between two chunks of logits, by autograd on the chunk.

    Over a vocabulary split by rank, ``per_token`` sums this rank's classes only; the two global
    log-sum-exps enter as leaves of the chunk's graph, so their gradients (summed over the ranks
    with the partial sums, one all-reduce) send each rank's share back through the softmax.
    """

    per_token: Callable[[Tensor, Tensor], Tensor]  # (log Q student, log P teacher) -> (n,)
    temperature: float
    valid: Tensor  # (N,) bool
    token_weight: Tensor | None  # (N,)
    shard: VocabShard | None = None

    def __call__(self, logits: list[Tensor], part: slice, scale: Tensor | None,
                 want: list[bool]) -> tuple[Tensor, dict[str, Tensor], list[Tensor | None] | None]:
        student, teacher = logits
        valid = self.valid[part]
        if self.shard is not None:
            return self._sharded(student, teacher, valid, part, scale, want)
        with torch.enable_grad():
            student.requires_grad_(want[0])
            teacher.requires_grad_(want[1])
            log_q = log_softmax(student / self.temperature, 1)  # as losskit.kl_div: no floor
            log_p = finite_log(log_softmax(teacher / self.temperature, 1))
            value = self._weighted(self.per_token(log_q, log_p), valid, part)
            if not any(want):
                return value, {}, None
            wrt = [x for x, w in zip((student, teacher), want, strict=True) if w]
            grads = iter(torch.autograd.grad(value, wrt, grad_outputs=torch.ones_like(value) if scale is None
                                             else scale))
        return value.detach(), {}, [next(grads) if w else None for w in want]

    def _weighted(self, value: Tensor, valid: Tensor, part: slice) -> Tensor:
        value = torch.where(valid, value, value.new_zeros(()))
        return value if self.token_weight is None else value * self.token_weight[part]

    def _sharded(self, student: Tensor, teacher: Tensor, valid: Tensor, part: slice, scale: Tensor | None,
                 want: list[bool]) -> tuple[Tensor, dict[str, Tensor], list[Tensor | None] | None]:
        shard, t = self.shard, self.temperature
        with torch.no_grad():
            lse = shard.log_sum_exp(torch.stack((student, teacher)) / t)  # (2, n)
        with torch.enable_grad():
            leaves = [student.requires_grad_(want[0]), lse[0].clone().requires_grad_(want[0]),
                      teacher.requires_grad_(want[1]), lse[1].clone().requires_grad_(want[1])]
            log_q = student / t - leaves[1].unsqueeze(1)
            log_p = finite_log(teacher / t - leaves[3].unsqueeze(1))
            value = self._weighted(self.per_token(log_q, log_p), valid, part)  # this block's share
            wrt = [x for x in leaves if x.requires_grad]
            grads = torch.autograd.grad(value, wrt, grad_outputs=torch.ones_like(value) if scale is None
                                        else scale) if wrt else ()
        found = dict(zip((id(x) for x in wrt), grads, strict=True))
        through_lse = [found.get(id(leaves[i]), torch.zeros_like(value)) for i in (1, 3)]
        summed = shard.all_reduce_(torch.stack((value.detach(), *through_lse)))  # (3, n)
        out: list[Tensor | None] = []
        for i, x in ((0, student), (1, teacher)):
            if not want[i]:
                out.append(None)
                continue
            # d lse / d x_k = softmax(x / T)_k / T, the global softmax restricted to this block
            probs = torch.exp(x.detach() / t - lse[i].unsqueeze(1))
            out.append(found[id(x)].addcmul_(probs, summed[1 + i].unsqueeze(1), value=1 / t))
        return summed[0], {}, out if any(want) else None


# Both distributions are softmaxes, so each sums to 1 and the divergences are sums of the
# non-negative terms of losskit.functional.divergence.kl_terms, exact near convergence.


def _kl_per_token(log_q: Tensor, log_p: Tensor) -> Tensor:
    return kl_terms(log_p.exp(), log_p, log_q, log_q.exp()).sum(1)


def _js_per_token(beta: float) -> Callable[[Tensor, Tensor], Tensor]:
    def per_token(log_q: Tensor, log_p: Tensor) -> Tensor:
        log_m = torch.logaddexp(math.log(beta) + log_p, math.log1p(-beta) + log_q)
        m = log_m.exp()
        terms = beta * kl_terms(log_p.exp(), log_p, log_m, m) + (1 - beta) * kl_terms(log_q.exp(), log_q, log_m, m)
        return terms.sum(1)

    per_token.beta = beta  # type: ignore[attr-defined]  (part of the options every rank must agree on)
    return per_token


def _fused_divergence(
    per_token: Callable[[Tensor, Tensor], Tensor],
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    *,
    student_bias: Tensor | None,
    teacher_bias: Tensor | None,
    target: Tensor | None,
    ignore_index: int,
    temperature: float,
    weight: Tensor | None,
    reduction: Reduction,
    normalizer: float | Tensor | None,
    chunk_size: int | None,
    process_group: object | None,
) -> Tensor:
    student_weight, student_bias = gather_full(student_weight), gather_full(student_bias)
    teacher_weight, teacher_bias = gather_full(teacher_weight), gather_full(teacher_bias)

    def check() -> tuple[int, list[object], list[object]]:
        check_reduction(reduction, normalizer)
        check_number("temperature", temperature, low=0.0, low_open=True)
        _check_chunk_size(chunk_size)
        _check_head("student_hidden", student_hidden, "student_weight", student_weight, "student_bias",
                    student_bias)
        _check_head("teacher_hidden", teacher_hidden, "teacher_weight", teacher_weight, "teacher_bias",
                    teacher_bias)
        tokens = student_hidden.shape[:-1]
        if teacher_hidden.shape[:-1] != tokens:
            raise ValueError(f"teacher_hidden must have student_hidden's token shape {tuple(tokens)} before its "
                             f"last dimension, got shape {tuple(teacher_hidden.shape)}")
        if teacher_weight.shape[0] != student_weight.shape[0]:
            raise ValueError(f"teacher_weight must have student_weight's vocabulary size {student_weight.shape[0]} "
                             f"(its first dimension), got shape {tuple(teacher_weight.shape)}")
        if teacher_hidden.device != student_hidden.device:
            raise TypeError(f"teacher_hidden must be on student_hidden's device {student_hidden.device}, "
                            f"got {teacher_hidden.device}")
        if compute_dtype(teacher_hidden.dtype) != compute_dtype(student_hidden.dtype):
            raise TypeError(f"teacher_hidden must compute in student_hidden's precision ({student_hidden.dtype}), "
                            f"got {teacher_hidden.dtype}")
        check_ignore_index(ignore_index, optional=False)
        if target is not None:
            _check_labels("target", target, "student_hidden", student_hidden)
        if weight is not None:
            check_tensor("weight", weight)
            check_same_device("student_hidden", student_hidden, "weight", weight)
            check_broadcastable("weight", weight, tokens, "the per-token loss, shape")
        needs = [t is not None and t.requires_grad and torch.is_grad_enabled()
                 for t in (student_weight, student_bias, teacher_weight, teacher_bias)]
        options = options_fingerprint(student_hidden, teacher_hidden, student_weight.shape[1],
                                      teacher_weight.shape[1], needs, ignore_index, temperature, reduction,
                                      chunk_size, None if isinstance(normalizer, Tensor) else normalizer,
                                      per_token.__qualname__, getattr(per_token, "beta", None))
        data = [target, weight, normalizer if isinstance(normalizer, Tensor) else None]
        return student_weight.shape[0], options, data

    shard = agree_on_shards(process_group, check) if is_vocab_parallel(process_group) else None
    if shard is None:
        check()
    temperature = float(temperature)
    tokens = student_hidden.shape[:-1]
    dtype = compute_dtype(student_hidden.dtype)
    device = student_hidden.device
    if target is not None:
        valid = target.reshape(-1).to(device) != ignore_index
    else:
        valid = torch.ones(tokens.numel(), dtype=torch.bool, device=device)
    token_weight = None
    if weight is not None:
        token_weight = weight.detach().to(device=device, dtype=dtype).expand(tokens).reshape(-1)

    s_flat = student_hidden.reshape(-1, student_hidden.shape[-1])
    t_flat = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
    widest = student_weight.shape[0] if shard is None else max(shard.sizes)  # every rank walks the same chunks
    # Buffers alive per chunk: both heads' logits, the scaled copies, log-softmaxes, their
    # exponentials and the gradient (autograd's saved tensors on the chunk): about 10.
    rows = _chunk_rows(s_flat.shape[0], widest, dtype, device, 10, chunk_size, sharded=shard is not None)
    chunk = _DivergenceChunk(per_token, temperature, valid, token_weight, shard)
    plan = _Plan(heads=2, rows=rows, dtype=dtype, chunk=chunk, valid=None if target is None else valid, shard=shard)
    tensors = (s_flat, student_weight, student_bias, t_flat, teacher_weight, teacher_bias)
    reduce = reduction != "none"
    counted_weight = valid.to(dtype) if token_weight is None else torch.where(valid, token_weight, 0.0)
    divisor = _divisor(reduction, normalizer, counted_weight.sum())
    (loss,) = _FusedLinear.apply(plan, reduce, divisor, _needs(*tensors), *tensors)
    if not reduce:
        loss = loss.view(tokens)
    named = {"student_hidden": student_hidden, "student_weight": student_weight, "student_bias": student_bias,
             "teacher_hidden": teacher_hidden, "teacher_weight": teacher_weight, "teacher_bias": teacher_bias}
    computed, loss = loss, loss.to(student_hidden.dtype)
    check_loss_finite(loss, named, computed=computed, options={"weight": weight, "normalizer": normalizer})
    return loss


_DIVERGENCE_ARGS = r"""
    Args:
        student_hidden: The student's hidden states entering its head.
        student_weight: The student's head :math:`W_s`, shape :math:`(V, D_s)`.
        teacher_hidden: The teacher's hidden states, same tokens (its width :math:`D_t` may differ).
        teacher_weight: The teacher's head :math:`W_t`, shape :math:`(V, D_t)`, same vocabulary.
        student_bias, teacher_bias: The heads' biases, shape :math:`(V,)`, or ``None``.
        target: Optional labels with the tokens' shape; tokens equal to ``ignore_index`` count
            nowhere (the labels are read for nothing else).
        ignore_index: Label of the tokens to skip.
        temperature: :math:`T > 0`; both logits are divided by it. The value is not multiplied by
            :math:`T^2` (Hinton's factor, which keeps gradient sizes comparable across
            temperatures): multiply the result yourself where you want it.
        weight: Per-token weights broadcastable to the tokens' shape (treated as constants).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``; ``"mean"`` is the weighted mean over the
            counted tokens, as in :func:`losskit.kl_div`.
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.
        chunk_size: Tokens per chunk; ``None`` fits the chunk's buffers (both heads' logits and the
            autograd intermediates of the chunk, about ten of that size) within 64 MiB on a CPU and
            1 GiB on other devices.
        process_group: Split the vocabulary over this group's ranks: the heads (weights and
            biases) are this rank's contiguous block of classes, in rank order, the same block for
            the student and the teacher; the hidden states, ``target`` and ``weight`` are the same
            on every rank. The result and the hidden states' gradients equal the single-process
            ones; each head receives its block of the gradient (see
            :func:`fused_linear_cross_entropy`).

    The teacher's tensors get gradients only if they require them (a frozen teacher, the usual
    case, costs one matrix product per chunk and nothing in backward). Gradients are exact under
    every reduction; ``"none"`` recomputes both heads' logits in backward.

    Shape:
        - student_hidden: :math:`(N, D_s)` or :math:`(B, T, D_s)`; teacher_hidden the same tokens.
        - target, weight: the tokens' shape (:math:`(N,)` or :math:`(B, T)`).
        - output: scalar, or the tokens' shape with ``reduction="none"``.

    Returns:
        The loss in ``student_hidden``'s dtype; 0 at ignored tokens under ``"none"``; an empty or
        fully ignored batch gives 0 with a gradient, never NaN.

    Raises:
        ValueError: Shapes that do not fit together, ``temperature <= 0``, a bad reduction, a
            non-finite result.
        TypeError: Non-floating hidden states or weights, a head whose dtype or device differs
            from its hidden states, a student and teacher in different precisions or devices.
"""


def fused_linear_kl_div(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    *,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    target: Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    chunk_size: int | None = None,
    process_group: object | None = None,
) -> Tensor:
    return _fused_divergence(_kl_per_token, student_hidden, student_weight, teacher_hidden, teacher_weight,
                             student_bias=student_bias, teacher_bias=teacher_bias, target=target,
                             ignore_index=ignore_index, temperature=temperature, weight=weight,
                             reduction=reduction, normalizer=normalizer, chunk_size=chunk_size,
                             process_group=process_group)


fused_linear_kl_div.__doc__ = r"""Distillation KL divergence of a teacher's head from a student's, fused with the heads.

    :math:`\mathrm{KL}(P \,\|\, Q)` per token, with the teacher :math:`P` as the target and the
    student :math:`Q` as the prediction, as in :func:`losskit.kl_div`, both heads fused with
    their output projections and walked chunk by chunk of tokens like
    :func:`fused_linear_cross_entropy`. Equal in value and gradient to
    ``losskit.kl_div(s / T, torch.log_softmax(t / T, -1), log_target=True, ...)`` with
    ``s = student_hidden @ student_weight.T + student_bias`` and ``t`` the teacher's logits.

    .. math::
        Q = \mathrm{softmax}(s / T), \quad P = \mathrm{softmax}(t / T), \qquad
        \ell_n = \sum_k P_{n,k} \big(\log P_{n,k} - \log Q_{n,k}\big)
""" + _DIVERGENCE_ARGS + r"""
    Examples:
        >>> import torch, losskit
        >>> hidden = torch.tensor([[1.0, 0.0]])
        >>> student = torch.tensor([[0.0, 0.0], [1.0986123, 0.0]])  # logits [0, ln 3]: Q = [1/4, 3/4]
        >>> teacher = torch.zeros(2, 2)                              # P = [1/2, 1/2]
        >>> losskit.fused_linear_kl_div(hidden, student, hidden, teacher)  # 0.5 ln(4/3)
        tensor(0.1438)

    References:
        Hinton et al., "Distilling the Knowledge in a Neural Network", 2015. Liger-Kernel's
        fused-linear distillation losses (the chunked form).
"""


def fused_linear_js_div(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    *,
    beta: float = 0.5,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    target: Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
    chunk_size: int | None = None,
    process_group: object | None = None,
) -> Tensor:
    try:
        beta = check_number("beta", beta, low=0.0, high=1.0, low_open=True, high_open=True)
    except ValueError as error:
        raise ValueError(f"{error}. JS_beta vanishes identically at beta=0 and beta=1; for the forward "
                         f"KL(P || Q) use losskit.fused_linear_kl_div") from None
    return _fused_divergence(_js_per_token(beta), student_hidden, student_weight, teacher_hidden, teacher_weight,
                             student_bias=student_bias, teacher_bias=teacher_bias, target=target,
                             ignore_index=ignore_index, temperature=temperature, weight=weight,
                             reduction=reduction, normalizer=normalizer, chunk_size=chunk_size,
                             process_group=process_group)


fused_linear_js_div.__doc__ = r"""Generalized Jensen-Shannon divergence between a teacher's and a student's head, fused.

    :math:`\mathrm{JS}_\beta(P \,\|\, Q)` per token with the teacher :math:`P` and the student
    :math:`Q` (GKD's convention, as in :func:`losskit.js_div`), both heads fused with their
    output projections and walked chunk by chunk of tokens. Equal in value and gradient to
    ``losskit.js_div(s / T, torch.log_softmax(t / T, -1), beta=beta, log_target=True, ...)``.

    .. math::
        M = \beta P + (1 - \beta) Q, \qquad
        \ell_n = \beta\, \mathrm{KL}(P_n \,\|\, M_n) + (1 - \beta)\, \mathrm{KL}(Q_n \,\|\, M_n)

    ``beta`` lies in the open interval :math:`(0, 1)` (default 0.5, the symmetric JSD); at
    either end the divergence vanishes identically (use :func:`fused_linear_kl_div` for the
    forward KL).
""" + _DIVERGENCE_ARGS.replace(
    "    Args:\n", "    Args:\n        beta: Mixture weight of the teacher, in (0, 1).\n", 1) + r"""
    Examples:
        >>> import torch, losskit
        >>> hidden = torch.tensor([[1.0, 0.0]])
        >>> student = torch.tensor([[0.0, 0.0], [1.0986123, 0.0]])  # Q = [1/4, 3/4]
        >>> teacher = torch.zeros(2, 2)                              # P = [1/2, 1/2]
        >>> losskit.fused_linear_js_div(hidden, student, hidden, teacher)  # 1.5 ln 2 - 0.625 ln 5
        tensor(0.0338)

    References:
        Agarwal et al., "On-Policy Distillation of Language Models" (GKD), ICLR 2024.
        Liger-Kernel's ``LigerFusedLinearJSD`` (same :math:`\beta` convention).
"""
