r"""The voxel-wise sigmoid focal term of the compound region losses, per sample.

MONAI's ``DiceFocalLoss`` and ``GeneralizedDiceFocalLoss`` add to the region term a sigmoid focal
loss on every channel against the one-hot target (whatever the region term's activation). Here
each (sample, channel)'s sum of that term over the valid voxels is computed from index labels in
their own dtype, with no one-hot tensor: a channel's label at a voxel is ``y == c``.

.. math::
    z = \pm x \ (+ \text{ where } y = c), \qquad
    f = \alpha_t\, \sigma(-z)^\gamma\, \operatorname{softplus}(-z), \qquad
    \frac{\partial f}{\partial z} = -\alpha_t\, \sigma(-z)^\gamma
        \big(\sigma(-z) + \gamma\, \sigma(z) \operatorname{softplus}(-z)\big)

Every factor keeps its relative precision however confident the logit (see
:func:`_focal_and_slope`), so a confident voxel's tiny loss and gradient keep their digits.

**Memory.** :class:`_FocalSums` reads the logits chunk by chunk (about 2 MB of float32 on a CPU,
64 MB on a GPU) and keeps no activation for backward: the forward pass writes each logit's slope,
once, in the logits' dtype, into the buffer that backward scales into the gradient in place; the
plain form (floating targets, ``torch.compile``, second derivatives) builds the same values with
autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from losskit._core.numerics import compute_dtype, upcast

_CPU_CHUNK = 1 << 19  # logits per chunk: cache-sized on a CPU
_ACCELERATOR_CHUNK = 1 << 24  # fewer launches on a GPU


def _focal_and_slope(x: Tensor, hit: Tensor, gamma: float, alpha: float | None,
                     slope: bool) -> tuple[Tensor, Tensor | None]:
    r"""The focal loss of logits ``x`` against binary labels ``hit`` (bool), and ``d loss / dx``.

    Both labels are one function of :math:`v = -z` (:math:`-x` where labelled, :math:`x`
    elsewhere): :math:`f = g(v) = \sigma(v)^\gamma \operatorname{softplus}(v)` and
    :math:`g'(v) = \sigma(v)^\gamma (\sigma(v) + \gamma (1 - \sigma(v)) \operatorname{softplus}(v))`.
    ``torch.sigmoid`` and ``softplus`` keep their relative precision for any :math:`v`, and
    :math:`1 - \sigma(v)` matters only where :math:`\sigma(v)` is not near 1 (beside it, the term is
    below :math:`\gamma\, v e^{-v}`), so every factor keeps its digits. Two transcendental functions
    an element."""
    v = torch.where(hit, -x, x)
    p = torch.sigmoid(v)
    nll = F.softplus(v)
    modulation = p.square() if gamma == 2 else p.pow(gamma)
    loss = modulation * nll
    grad = None
    if slope:
        dv = ((1 - p) * nll).mul_(gamma).add_(p).mul_(modulation)
        grad = torch.where(hit, -dv, dv)
    if alpha is not None:
        factor = torch.where(hit, x.new_tensor(alpha), x.new_tensor(1 - alpha))  # in x's dtype, not float32
        loss = loss * factor
        grad = None if grad is None else grad * factor
    return loss, grad


def _chunk_parts(logits: Tensor) -> list[slice]:
    n, c, s = logits.shape
    budget = _CPU_CHUNK if logits.device.type == "cpu" else _ACCELERATOR_CHUNK
    step = max(1, budget // max(1, n * c))
    return [slice(start, min(start + step, s)) for start in range(0, s, step)] or [slice(0, 0)]


def _chunk_labels(labels: Tensor, part: slice, first: int, classes: int,
                  ignore_index: int | None) -> tuple[Tensor, Tensor | None]:
    """``y == c`` for the kept channels ``first..classes-1`` (N, C', s), and the valid voxels (N, 1, s)."""
    y = labels[:, part].unsqueeze(1)
    channels = torch.arange(first, classes, device=labels.device).view(1, -1, 1)
    valid = None if ignore_index is None else y != ignore_index
    return y == channels, valid


def _sweep(logits: Tensor, labels: Tensor, first: int, ignore_index: int | None, gamma: float,
           alpha: float | None, slopes: Tensor | None) -> Tensor:
    """One pass over the chunks: the per-(sample, channel) sums ``(N, C')``; with ``slopes`` (a tensor
    like ``logits``), also each logit's ``d sum / dx`` written into it (0 in dropped channels and at
    ignored voxels)."""
    n, c, _ = logits.shape
    total = logits.new_zeros((n, c - first), dtype=compute_dtype(logits.dtype))
    if slopes is not None and first:
        slopes[:, :first].zero_()
    for part in _chunk_parts(logits):
        hit, valid = _chunk_labels(labels, part, first, c, ignore_index)
        x = upcast(logits[:, first:, part])
        if valid is not None:
            x = torch.where(valid, x, 0.0)  # ignored voxels may hold anything
        loss, slope = _focal_and_slope(x, hit, gamma, alpha, slope=slopes is not None)
        if valid is not None:
            loss = loss * valid
            slope = None if slope is None else slope * valid
        total += loss.sum(2)
        if slope is not None:
            slopes[:, first:, part] = slope
    return total


class _FocalSums(torch.autograd.Function):
    """Per-(sample, channel) focal sums of logits ``(N, C, S)`` against index labels ``(N, S)``.

    With a gradient to come, the forward pass writes each logit's slope, in the logits' dtype, into
    the buffer that backward scales in place and returns as the gradient: one pass over the logits
    and no other saved tensor."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, first: int, ignore_index: int | None,  # noqa: ANN205
                gamma: float, alpha: float | None, keep: bool) -> Tensor:
        slopes = torch.empty_like(logits) if keep else None
        ctx.save_for_backward(logits, labels)
        ctx.options = first, ignore_index, gamma, alpha
        ctx.slopes = slopes
        return _sweep(logits, labels, first, ignore_index, gamma, alpha, slopes)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN205
        logits, labels = ctx.saved_tensors
        first, ignore_index, gamma, alpha = ctx.options
        nothing = (None,) * 6
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain form
            sums = plain_focal_sums(logits, labels, first, ignore_index, gamma, alpha)
            return torch.autograd.grad(sums, logits, grad, create_graph=True)[0], *nothing
        slopes, ctx.slopes = ctx.slopes, None  # scaled in place once; a second backward recomputes them
        if slopes is None:
            slopes = torch.empty_like(logits)
            _sweep(logits, labels, first, ignore_index, gamma, alpha, slopes)
        slopes[:, first:] *= grad.unsqueeze(2).to(slopes.dtype)
        return slopes, *nothing


def plain_focal_sums(logits: Tensor, labels: Tensor, first: int, ignore_index: int | None, gamma: float,
                     alpha: float | None) -> Tensor:
    """:class:`_FocalSums` with autograd (the reference form; what ``torch.compile`` traces)."""
    hit, valid = _chunk_labels(labels, slice(None), first, logits.shape[1], ignore_index)
    x = upcast(logits[:, first:])
    if valid is not None:
        x = torch.where(valid, x, 0.0)
    loss, _ = _focal_and_slope(x, hit, gamma, alpha, slope=False)
    if valid is not None:
        loss = loss * valid
    return loss.sum(2)


def focal_sums(logits: Tensor, labels: Tensor, *, first: int, ignore_index: int | None, gamma: float,
               alpha: float | None) -> Tensor:
    """Per-(sample, channel) focal sums ``(N, C')`` in the compute dtype, of logits ``(N, C, S)`` and
    index labels ``(N, S)`` (any integer dtype, ``ignore_index`` at ignored voxels), over channels
    ``first..C-1``."""
    if torch.compiler.is_compiling():
        return plain_focal_sums(logits, labels, first, ignore_index, gamma, alpha)
    keep = torch.is_grad_enabled() and logits.requires_grad
    return _FocalSums.apply(logits, labels, first, ignore_index, gamma, alpha, keep)


def dense_focal_sums(logits: Tensor, labels: Tensor, *, first: int, gamma: float, alpha: float | None) -> Tensor:
    """Per-(sample, channel) focal sums of logits ``(N, C, S)`` against floating labels
    ``(N, C, S)`` in ``[0, 1]`` (soft labels: :math:`\\alpha_t` and :math:`1 - p_t` interpolate
    linearly in the label, as :func:`losskit.sigmoid_focal_loss`)."""
    x, t = upcast(logits[:, first:]), labels[:, first:].to(compute_dtype(logits.dtype))
    nll = F.softplus(x) - x * t  # BCE with logits
    miss = t * torch.sigmoid(-x) + (1 - t) * torch.sigmoid(x)  # 1 - p_t
    hard = (t == 0) | (t == 1)
    soft_log_miss = miss.clamp_min(torch.finfo(miss.dtype).tiny).log()
    log_miss = torch.where(hard, F.logsigmoid(torch.where(t == 1, -x, x)), soft_log_miss)
    loss = torch.exp(gamma * log_miss) * nll
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss.sum(2)
