"""Dtype policy shared by every loss.

Half and bfloat16 inputs are computed in float32 and the result is cast back to the input
dtype; float32 and float64 are computed as they are. Integer inputs where a floating input
is expected are an error raised by the checks, never a silent cast.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOW_PRECISION = (torch.float16, torch.bfloat16)  # computed in float32


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a loss computes in for inputs of ``dtype``."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def float_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a computation on values that may be integers (box coordinates): as
    :func:`compute_dtype`, and float32 for integers."""
    return compute_dtype(dtype) if dtype.is_floating_point else torch.float32


def upcast(x: Tensor) -> Tensor:
    """``x`` in its compute dtype (a no-op for float32 and float64)."""
    return x.float() if x.dtype in LOW_PRECISION else x


def safe_divide(total: Tensor | float, count: Tensor | int | float) -> Tensor | float:
    """``total / max(count, 1)``: a mean over ``count`` items that is 0 (the sum of nothing), not
    NaN, when there are none. A tensor ``count`` is cast to ``total``'s dtype (counts are exact
    there up to 2048 in float16, 2**24 in float32).

    Examples:
        >>> safe_divide(torch.tensor([3.0, 0.0]), torch.tensor([2, 0]))
        tensor([1.5000, 0.0000])
        >>> safe_divide(6.0, 0)
        6.0
    """
    if isinstance(count, Tensor):
        dtype = total.dtype if isinstance(total, Tensor) else torch.get_default_dtype()
        return total / count.clamp_min(1).to(dtype)
    return total / max(count, 1)


def as_option_tensor(value, like: Tensor) -> Tensor:
    """A tensor option (class weights, priors, quantiles) on ``like``'s device and dtype."""
    return torch.as_tensor(value, device=like.device).to(like.dtype)


def tiny(dtype: torch.dtype) -> float:
    """The smallest positive normal number of ``dtype``: a denominator floor that changes no real value."""
    return torch.finfo(dtype).tiny


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of ``dtype``: the default for smoothing terms that must not change the result."""
    return torch.finfo(dtype).eps


def weighted_log(log_values: Tensor, weights: Tensor) -> Tensor:
    r"""``log_values`` where ``weights`` is nonzero, 0 where it is 0: the log factor of a sum
    :math:`\sum_k w_k f(\log q_k)`.

    A class of target probability 0 then contributes exactly 0, with a zero gradient, whatever its
    log-probability holds (``-inf`` for a masked logit; ``0 * -inf`` would be NaN). A ``-inf`` under
    a positive weight stays ``-inf``: that loss is infinite, and the finiteness check names the
    input, where a floor (:func:`finite_log`) would give a finite number that depends on the dtype.
    A NaN weight is not 0, so it reaches the result.
    """
    return torch.where(weights == 0, 0.0, log_values)


def finite_log(log_values: Tensor) -> Tensor:
    """Log-probabilities with ``-inf`` raised to the dtype's most negative finite number.

    A class with probability 0 (a masked logit, a zero target) has log-probability ``-inf``;
    the floor keeps ``0 * log p`` at 0 instead of NaN, and the clamp's gradient there is 0,
    which is the true gradient of a term whose probability is 0. Use it only where the weight of
    ``log p`` vanishes with ``p`` (an entropy, ``p log p``); a weight that can be positive where
    ``p`` is 0 needs :func:`weighted_log`, or the floor turns an infinite loss into a finite one.
    """
    return log_values.clamp_min(torch.finfo(log_values.dtype).min)


class _GradientOnlyWhere(torch.autograd.Function):
    """Identity forward; the backward keeps the gradient where ``keep`` and writes 0 elsewhere."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor) -> Tensor:
        ctx.save_for_backward(keep)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (keep,) = ctx.saved_tensors
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or not _writable(grad, keep):
            return torch.where(keep, grad, grad.new_zeros(())), None
        # In place: the gradient arriving here is a buffer that the loss's own operations made
        # and that nothing reads after this node (it is the first operation on the input). A
        # full pass over it would cost as much as the softmax backward; on a CPU only the
        # ignored positions are written (their indices need a sync, free there).
        drop = ~keep
        if grad.device.type != "cpu":
            return grad.masked_fill_(drop, 0.0), None
        index = drop.nonzero(as_tuple=True)
        # A dimension along which keep broadcasts (size 1) is taken whole.
        full = tuple(slice(None) if size == 1 and grad.shape[dim] != 1 else index[dim]
                     for dim, size in enumerate(keep.shape))
        grad[full] = 0.0
        return grad, None


def _writable(grad: Tensor, keep: Tensor) -> bool:
    """``grad`` is a dense tensor that ``keep`` broadcasts to without adding dimensions."""
    return grad.is_contiguous() and keep.dim() == grad.dim()


def ignored_without_gradient(x: Tensor, keep: Tensor | None) -> Tensor:
    """``x`` unchanged, with an exact zero gradient where ``keep`` (broadcastable to ``x``) is False.

    Ignored positions may hold anything, NaN and inf included. A loss leaves them out of its value
    with ``torch.where``, but the backward of the operations that read them before (a softmax over
    a NaN row, a pooling window) multiplies 0 by NaN and returns NaN there. Replacing their
    gradient here keeps the forward pass free (no copy of the logits); the backward pass writes
    the ignored positions only (on a CPU; one masked pass on other devices). It is exact because
    the gradient of an ignored position is 0 by definition.

    Apply it to the loss's input before any other operation, so that the gradient arriving at it
    is a buffer of the loss's own, which it may overwrite.
    """
    if keep is None or not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return _GradientOnlyWhere.apply(x, keep)


# Taylor coefficients 1/k! of e^u - 1 - u = sum_{k >= 2} u^k / k!, highest first (Horner's order).
_EXP_TAIL = tuple(1 / math.factorial(k) for k in range(11, 1, -1))


def exp_tail(u: Tensor) -> Tensor:
    r""":math:`e^u - 1 - u \ge 0` to full relative precision: its Taylor series for :math:`|u| < 1/2`,
    where ``expm1(u) - u`` cancels to :math:`u^2 / 2`, and ``expm1(u) - u`` elsewhere."""
    near = u.abs() < 0.5
    v = torch.where(near, u, torch.zeros_like(u))
    tail = torch.full_like(v, _EXP_TAIL[0])
    for coefficient in _EXP_TAIL[1:]:
        tail = tail * v + coefficient
    return torch.where(near, v * v * tail, torch.expm1(u) - u)


class _LogSoftmax(torch.autograd.Function):
    """``log_softmax`` whose value and gradient keep their relative precision at the largest logit.

    ``torch.log_softmax`` computes :math:`x_k - m - \\log \\sum_j e^{x_j - m}`; where one logit
    leads the rest by more than about 10, the sum rounds to 1 plus a few ulps and its log, the
    whole loss of a confident correct prediction, keeps only a few digits (4e-5 relative error at a
    lead of 10 in float32, 2% at 14, 100% from 17 on), and the gradient :math:`q_m - 1` cancels the
    same way. Here the peak's own term, exactly 1, is left out of the sum, whose log is taken
    with ``log1p``: :math:`\\log q_k = (x_k - m) - \\operatorname{log1p}(\\sum_{j \\ne m} e^{x_j - m})`,
    and the backward pass forms :math:`1 - q_m` as :math:`\\sum_{j \\ne m} q_j`. Both are written
    in differentiable operations, so second derivatives work.
    """

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        peak, top = x.max(dim, keepdim=True)
        # <= 0, and exactly 0 at the peak, also where the peak is +inf (inf - inf would be NaN there:
        # the limit of an infinitely confident class is log q = 0, the others' -inf)
        shifted = (x - peak).scatter_(dim, top, 0.0)
        rest = shifted.exp().scatter_(dim, top, 0.0).sum(dim, keepdim=True)
        out = shifted.sub_(torch.log1p(rest))
        ctx.dim = dim
        ctx.save_for_backward(out, top)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        out, top = ctx.saved_tensors
        return log_softmax_backward(grad, out, top, ctx.dim), None


def log_softmax_backward(grad: Tensor, out: Tensor, top: Tensor, dim: int) -> Tensor:
    """:math:`g_k - q_k \\sum_j g_j` with ``out`` = :math:`\\log q`; at the peak ``top`` the same
    as :math:`g_m (1 - q_m) - q_m \\sum_{j \\ne m} g_j`, with :math:`1 - q_m = \\sum_{j \\ne m} q_j`."""
    q = out.exp()
    grad_peak, q_peak = grad.gather(dim, top), q.gather(dim, top)
    others = grad.scatter(dim, top, 0.0).sum(dim, keepdim=True)  # sum of g but the peak's
    below_one = q.scatter(dim, top, 0.0).sum(dim, keepdim=True)  # 1 - q_m, from the small q
    result = grad - q * (others + grad_peak)
    return result.scatter(dim, top, grad_peak * below_one - q_peak * others)


def log_softmax(x: Tensor, dim: int) -> Tensor:
    """``torch.log_softmax(x, dim)`` to full relative precision at the largest logit (see
    :class:`_LogSoftmax`): the log-probability of a confident class, and the gradient there, stay
    exact however far it leads. ``-inf`` logits give ``-inf`` (probability 0) with gradient 0, and
    a single ``+inf`` logit its limit: probability 1 there, 0 elsewhere, and a finite gradient."""
    if x.shape[dim] == 0 or x.numel() == 0:
        return torch.log_softmax(x, dim)
    return _LogSoftmax.apply(x, dim)
