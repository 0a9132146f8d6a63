r"""Sigmoid focal loss and binary cross-entropy on logits as one elementwise Triton kernel.

Each element's loss and its derivative share every term (two sigmoids, the BCE, the focal
factor), computed once in one pass; backward is one multiply. The formulas are those of the torch
path (:func:`losskit.sigmoid_focal_loss`), each term taken from the logit directly:

.. math::
    \mathrm{BCE} = \operatorname{log1p}(e^{-|x|}) + \mathrm{relu}(x) - x t, \qquad
    m = t \sigma(-x) + (1 - t) \sigma(x)

    \ell = \alpha_t m^\gamma \mathrm{BCE}, \qquad
    \partial_x \ell = \alpha_t m^\gamma \big[(1 - t)\sigma(x) - p t \sigma(-x)
        + \gamma (1 - 2t) \tfrac{\sigma(x)\sigma(-x)}{m} \mathrm{BCE}\big]

so nothing small cancels against something large (a loss of 1e-13 at a logit of 30 keeps its
digits). ``gamma=0`` without ``alpha`` is the binary cross-entropy, ``p t`` its positive weight.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from losskit._kernels.triton._math import log1p, scalar_options


@triton.jit
def _sigmoid_focal_kernel(
    x_ptr, t_ptr, tw_ptr, loss_ptr, grad_ptr, numel, options_ptr,
    HAS_TW: tl.constexpr, HAS_ALPHA: tl.constexpr, GAMMA: tl.constexpr, WITH_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    gamma = tl.load(options_ptr)  # in the compute dtype, exact in float64
    alpha = tl.load(options_ptr + 1)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    x = tl.load(x_ptr + offs, mask=inside, other=0.0)
    t = tl.load(t_ptr + offs, mask=inside, other=0.0)
    q = 1 / (1 + tl.exp(-x))  # sigma(x)
    q_bar = 1 / (1 + tl.exp(x))  # sigma(-x), never 1 - sigma(x)
    t_bar = 1 - t
    softplus_tail = -log1p(-tl.minimum(q, q_bar))  # log1p(e^-|x|) from the smaller sigmoid
    if HAS_TW:  # (t_bar + tw) log1p(e^-|x|) + t_bar relu(x) + tw relu(-x)
        tw = tl.load(tw_ptr + offs, mask=inside, other=0.0)
        bce = softplus_tail * (t_bar + tw) + tl.maximum(x, 0.0) * t_bar - tl.minimum(x, 0.0) * tw
    else:  # relu(x) - x t as one product, never a difference: x t_bar for x >= 0, |x| t below
        tw = t
        bce = softplus_tail + tl.where(x >= 0, x * t_bar, -x * t)
    miss = q_bar * t + q * t_bar  # 1 - p_t
    if GAMMA == 0:
        factor = tl.full(x.shape, 1.0, x.dtype)
    elif GAMMA == 1:
        factor = miss
    elif GAMMA == 2:
        factor = miss * miss
    elif GAMMA == 3:  # gamma 1/2
        factor = tl.sqrt(miss)
    elif GAMMA == 4:  # gamma 3/2
        factor = miss * tl.sqrt(miss)
    else:  # exp(gamma log m) in float64: its error grows with |gamma log m| (60 at m = 1e-13)
        wide = miss.to(tl.float64)
        factor = tl.where(wide > 0, tl.exp(gamma * tl.log(tl.where(wide > 0, wide, 1.0))), 0.0).to(x.dtype)
    if HAS_ALPHA:
        factor *= t * (2 * alpha - 1) + (1 - alpha)
    tl.store(loss_ptr + offs, factor * bce, mask=inside)
    if WITH_GRAD:
        gap = q * t_bar - q_bar * tw  # q - t without the cancellation of q - 1
        inner = gap
        if GAMMA != 0:  # q q_bar / m lies in [0, 1]: 0/0 -> 0 where m = 0
            ratio = q * q_bar / tl.maximum(miss, 1.1754943508222875e-38)
            inner += gamma * ratio * bce * (t_bar - t)
        tl.store(grad_ptr + offs, inner * factor, mask=inside)


_BLOCK = 1024


# The exponents taken exactly, without exp(gamma log m): their codes in the kernel (GAMMA).
_EXACT_GAMMA = {0.0: 0, 1.0: 1, 2.0: 2, 0.5: 3, 1.5: 4}


def sigmoid_focal_pass(x: Tensor, t: Tensor, gamma: float, alpha: float | None, tw: Tensor | None,
                       with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Elementwise loss and, if asked, its derivative; ``x``, ``t`` (and ``tw``) of one shape and
    one floating dtype (float32 or float64)."""
    flat_x, flat_t = x.reshape(-1).contiguous(), t.reshape(-1).contiguous()
    flat_tw = None if tw is None else tw.expand_as(x).reshape(-1).contiguous()
    loss = torch.empty_like(flat_x)
    grad = torch.empty_like(flat_x) if with_grad else loss
    grid = (triton.cdiv(flat_x.numel(), _BLOCK),)
    _sigmoid_focal_kernel[grid](
        flat_x, flat_t, flat_tw if flat_tw is not None else flat_x, loss, grad, flat_x.numel(),
        scalar_options(flat_x.dtype, flat_x.device, gamma, alpha if alpha is not None else 0.0),
        HAS_TW=tw is not None, HAS_ALPHA=alpha is not None,
        GAMMA=_EXACT_GAMMA.get(float(gamma), -1), WITH_GRAD=with_grad, BLOCK=_BLOCK,
    )
    return loss.view(x.shape), grad.view(x.shape) if with_grad else None


class SigmoidFocal(torch.autograd.Function):
    """The kernel's loss, its gradient computed in forward. Second derivatives differentiate the
    torch path (``backend="torch"``)."""

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, gamma: float, alpha: float | None, tw: Tensor | None) -> Tensor:
        ctx.gamma, ctx.alpha = gamma, alpha
        loss, grad = sigmoid_focal_pass(x, t, gamma, alpha, tw, with_grad=ctx.needs_input_grad[0])
        ctx.save_for_backward(x, t, grad, tw)
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, t, grad, tw = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain torch expression
            miss = t * torch.sigmoid(-x) + (1 - t) * torch.sigmoid(x)
            positive = torch.nn.functional.softplus(-x) * (t if tw is None else tw)
            loss = (positive + torch.nn.functional.softplus(x) * (1 - t)) * miss.pow(ctx.gamma)
            if ctx.alpha is not None:
                loss = loss * (ctx.alpha * t + (1 - ctx.alpha) * (1 - t))
            (grad,) = torch.autograd.grad(loss, x, grad_out, create_graph=True)
            return grad, None, None, None, None
        return grad * grad_out, None, None, None, None


def sigmoid_focal(x: Tensor, t: Tensor, gamma: float, alpha: float | None, tw: Tensor | None = None) -> Tensor:
    """Elementwise sigmoid focal loss (``gamma=0, alpha=None``: binary cross-entropy), ``tw`` the
    target times ``pos_weight`` or None; differentiable."""
    return SigmoidFocal.apply(x, t, float(gamma), alpha, tw)
