"""The sigmoid losses' elementwise kernels: binary cross-entropy exact in both tails, and the focal
loss's value and derivative computed together in one pass (chunked on CPU) as a custom autograd
function, with a plain reference for double backward and ``torch.compile``."""

from __future__ import annotations

import torch
import torch.nn.functional as TF
from torch import Tensor


def _binary_cross_entropy(x: Tensor, t: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    r"""Elementwise BCE on logits, :math:`p\, t \operatorname{softplus}(-x) + (1 - t) \operatorname{softplus}(x)`.

    A sum of two non-negative terms, each exact in both tails, so the loss keeps its relative
    precision however confident the logit: PyTorch's fused ``binary_cross_entropy_with_logits``
    gives 7% too little for ``BCE(-12, 0)`` in float32 and 0 for ``BCE(-25, 0)`` (true value 1.4e-11).
    """
    positive = TF.softplus(-x) * t
    if pos_weight is not None:
        positive = positive * pos_weight
    return positive + TF.softplus(x) * (1 - t)


def _focal_loss_and_grad(x: Tensor, t: Tensor, gamma: float, alpha: float | None, with_grad: bool,
                         out: tuple[Tensor | None, Tensor | None] = (None, None),
                         tw: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    r"""The elementwise sigmoid focal loss and, if asked, its derivative in ``x``, sharing every term.

    With :math:`q = \sigma(x)`, :math:`\bar q = \sigma(-x)`, :math:`\bar t = 1 - t` and
    :math:`m = 1 - p_t = t \bar q + \bar t q`:

    .. math::
        \mathrm{BCE} = \operatorname{log1p}(e^{-|x|}) + \mathrm{relu}(x) - x t,
        \qquad q - t = \bar t q - t \bar q

        \partial_x \ell = \alpha_t\, m^\gamma \big[(q - t) + \gamma (\bar t - t) \tfrac{q \bar q}{m}\, \mathrm{BCE}\big]

    Every term is taken from the logit directly, so nothing small cancels against something large:
    the textbook ``softplus(x) - x t`` and ``q - 1`` lose the small loss of a confident correct
    logit (7% at a logit of 12 in float32), and ``1 - q`` loses :math:`\bar q`, which is computed
    directly (``relu(x) - x t`` is exactly 0 for a correct 0/1 target). Since
    :math:`q \bar q \le \min(q, \bar q) \le m`, the ratio lies in [0, 1] and the gradient stays
    finite for gamma < 1 at saturated logits, where the textbook :math:`m^{\gamma-1}` is infinite.
    In-place ops on its own temporaries: on large inputs allocations cost as much as the arithmetic.
    Runs without autograd; results go to ``out`` (loss, grad) when given.

    ``tw`` is :math:`p\, t`, the target times ``pos_weight``, which scales the positive part of
    the BCE (and of its derivative, :math:`\bar t q - p\, t \bar q`); ``None``: :math:`t`.
    """
    q = torch.sigmoid(x)
    q_bar = torch.neg(x).sigmoid_()
    t_bar = 1 - t
    # softplus(x) t_bar + softplus(-x) t = log1p(e^-|x|) + relu(x) - x t: for a 0/1 target the last
    # two cancel exactly (x - x), never against the small log1p term, as softplus(x) - x t does;
    # log1p(e^-|x|) comes from the smaller sigmoid, without another exponential.
    bce = torch.minimum(q, q_bar).neg_().log1p_().neg_()  # log1p(e^-|x|) = -log1p(-sigmoid(-|x|))
    if tw is None:
        tw = t
        # The linear part first (16 - 16, then + 1e-7); the gradient's buffer is free until the end.
        bce.add_(torch.clamp_min(x, 0, out=out[1]).addcmul_(x, t, value=-1))
    else:  # with the positive part weighted: (t_bar + tw) log1p(e^-|x|) + t_bar relu(x) + tw relu(-x)
        bce.mul_(t_bar + tw).addcmul_(x.clamp_min(0), t_bar).addcmul_(x.clamp_max(0), tw, value=-1)
    miss = (q_bar * t).addcmul_(q, t_bar)
    factor = miss.square() if gamma == 2 else miss.pow(gamma)
    if alpha is not None:
        factor.mul_(t.mul(2 * alpha - 1).add_(1 - alpha))  # alpha_t = alpha t + (1 - alpha)(1 - t)
    loss = torch.mul(factor, bce, out=out[0])
    if not with_grad:
        return loss, None
    ratio = (q * q_bar).div_(miss.clamp_min_(torch.finfo(miss.dtype).tiny))  # 0/0 -> 0 where m = 0
    gap = q.mul_(t_bar).addcmul_(q_bar, tw, value=-1)  # q - t without the cancellation of q - 1
    inner = gap.addcmul_(ratio.mul_(bce), t_bar.sub_(t), value=gamma)  # t_bar - t = 1 - 2t
    return loss, torch.mul(inner, factor, out=out[1])


# Elements per chunk when a CPU input is walked in pieces: the dozen temporaries of one chunk
# (512 KB each in float32) stay in cache and are recycled by the allocator, instead of a dozen
# full-size tensors that go to main memory and, above glibc's mmap threshold, page-fault afresh
# on every call. Measured 2.5x faster on 4M elements on a 2-core machine; GPUs need no chunks.
_CPU_CHUNK = 1 << 17


def _focal_forward(x: Tensor, t: Tensor, gamma: float, alpha: float | None,
                   with_grad: bool, tw: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    if x.device.type != "cpu" or x.numel() <= _CPU_CHUNK or torch.compiler.is_compiling():
        return _focal_loss_and_grad(x, t, gamma, alpha, with_grad, tw=tw)
    flat_x, flat_t = x.reshape(-1), t.reshape(-1)
    flat_tw = None if tw is None else tw.reshape(-1)
    loss = torch.empty_like(flat_x)
    grad = torch.empty_like(flat_x) if with_grad else None
    for start in range(0, flat_x.numel(), _CPU_CHUNK):
        part = slice(start, start + _CPU_CHUNK)
        _focal_loss_and_grad(flat_x[part], flat_t[part], gamma, alpha, with_grad,
                             out=(loss[part], None if grad is None else grad[part]),
                             tw=None if flat_tw is None else flat_tw[part])
    return loss.view_as(x), None if grad is None else grad.view_as(x)


def _focal_reference(x: Tensor, t: Tensor, gamma: float, alpha: float | None, tw: Tensor | None = None) -> Tensor:
    """The focal loss as a plain differentiable expression, for second derivatives."""
    miss = t * torch.sigmoid(-x) + (1 - t) * torch.sigmoid(x)
    bce = _binary_cross_entropy(x, t) if tw is None else TF.softplus(-x) * tw + TF.softplus(x) * (1 - t)
    loss = bce * miss.pow(gamma)
    return loss if alpha is None else loss * (alpha * t + (1 - alpha) * (1 - t))


class _SigmoidFocal(torch.autograd.Function):
    """Sigmoid focal loss that computes its gradient in the forward pass.

    The loss and its derivative share every expensive term (two sigmoids, the BCE, the focal
    factor), so producing both costs little more than the loss alone, and the backward pass is
    one multiply. Autograd through the plain formula would keep about eight full-size
    intermediates alive until backward and recompute most of them. Second derivatives
    (``create_graph=True``) differentiate :func:`_focal_reference` instead, so they stay exact.
    """

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, gamma: float, alpha: float | None, tw: Tensor | None) -> Tensor:
        ctx.gamma, ctx.alpha = gamma, alpha
        loss, grad = _focal_forward(x, t, gamma, alpha, with_grad=ctx.needs_input_grad[0], tw=tw)
        ctx.save_for_backward(x, t, grad, tw)
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, t, grad, tw = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the gradient itself must be differentiable
            loss = _focal_reference(x, t, ctx.gamma, ctx.alpha, tw)
            (grad,) = torch.autograd.grad(loss, x, grad_out, create_graph=True)
            return grad, None, None, None, None
        return grad * grad_out, None, None, None, None
