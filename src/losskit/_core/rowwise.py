"""Gradients computed in the forward pass, chunk by chunk, for losses with one value per row.

A box loss gives one value per box from that box's own coordinates (and its target's). Through
plain autograd its forward pass keeps a few dozen full-size intermediates alive until backward;
here each chunk of rows is differentiated as soon as its loss is known, so between forward and
backward only the loss and its gradient (5 numbers per box) stay alive, and on a CPU the chunk's
intermediates stay in cache. Backward is one in-place multiply.

The gradient is the one autograd gives for the same expression, detaches included. Second
derivatives (``create_graph=True``) rebuild the graph of the expression, so they stay exact.
While ``torch.compile`` traces, or when the target needs a gradient too, the expression runs
under plain autograd instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

RowLoss = Callable[[Tensor, Tensor], Tensor]
LossAndGrad = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

# Most rows per chunk on a CPU, for the losses differentiated here by autograd chunk by chunk
# (SIoU, WIoU, NWD, ProbIoU...; the IoU family passes ``closed_form``, which blocks its pairs
# itself: :mod:`losskit._core.iou_grad`). A trade between dispatch overhead and memory, first
# measured on GIoU before it had a closed form (benchmarks/bench_boxes.py, 2 cores): 100k pairs in
# 3 chunks of 40k peaked at 5.8 MB against 7.7 MB in 2 chunks and torchvision's 7.3 MB. GPUs take
# everything in one chunk: their limit is kernel launches, not cache.
_CPU_ROWS = 40_000


def _loss_and_grad(fn: RowLoss, x: Tensor, t: Tensor, closed_form: LossAndGrad | None = None,
                   ) -> tuple[Tensor, Tensor]:
    """Loss per row and its gradient in ``x``, chunk by chunk, into preallocated outputs."""
    if closed_form is not None:
        return closed_form(x, t)
    rows = x.shape[0]
    chunks = -(-rows // _CPU_ROWS) if x.device.type == "cpu" else 1
    step = max(-(-rows // max(chunks, 1)), 1)  # equal chunks: 100k rows go as 2 x 50k, not 64k + 36k
    loss = x.new_empty(rows)
    grad = torch.empty_like(x)
    for start in range(0, rows, step):
        part = slice(start, start + step)
        with torch.enable_grad():
            chunk = x[part].detach().requires_grad_()
            value = fn(chunk, t[part])
            (chunk_grad,) = torch.autograd.grad(value.sum(), chunk)
        loss[part] = value.detach()
        grad[part] = chunk_grad
    return loss, grad


class _RowwiseLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, fn: RowLoss, closed_form: LossAndGrad | None) -> Tensor:
        ctx.fn, ctx.closed_form = fn, closed_form
        ctx.save_for_backward(x, t)
        loss, ctx.grad = _loss_and_grad(fn, x, t, closed_form)
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, None, None]:
        x, t = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the expression itself
            (grad,) = torch.autograd.grad(ctx.fn(x, t), x, grad_out, create_graph=True)
            return grad, None, None, None
        grad, ctx.grad = ctx.grad, None
        if grad is None:  # an earlier backward through this graph (retain_graph=True) used it
            _, grad = _loss_and_grad(ctx.fn, x, t, ctx.closed_form)
        return grad.mul_(grad_out.unsqueeze(-1)), None, None, None


def rowwise_loss(fn: RowLoss, x: Tensor, t: Tensor, closed_form: LossAndGrad | None = None) -> Tensor:
    """``fn(x, t)`` for ``x, t`` of shape ``(..., K)`` and a result of shape ``(...)``, where row
    ``i`` of the result depends only on row ``i`` of ``x`` and ``t``.

    Computed without gradient when ``x`` needs none, and with the gradient in the forward pass
    (see the module docstring) when only ``x`` needs one.
    """
    plain = not (torch.is_grad_enabled() and x.requires_grad) or t.requires_grad
    if plain or torch.compiler.is_compiling():
        return fn(x, t)
    flat = _RowwiseLoss.apply(x.reshape(-1, x.shape[-1]), t.reshape(-1, t.shape[-1]), fn, closed_form)
    return flat.view(x.shape[:-1])
