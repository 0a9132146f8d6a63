"""The exact cross-entropy kernel the softmax losses share: a custom autograd function over index
targets (chunked on CPU), its plain reference under ``torch.compile``, and the probability-target form."""

from __future__ import annotations

import torch
from torch import Tensor

from losskit._core.numerics import (
    log_softmax,
    upcast,
    weighted_log,
)
from losskit.functional._class_targets import _along_class_dim, _ClassTargets, _gather_class, _smoothed
from losskit.functional._softmax import cross_entropy_rows

# Elements per chunk when a CPU cross-entropy is walked in pieces, so that the kernel's passes
# over a chunk run in cache (as in the sigmoid focal kernel); GPUs take everything at once.
_CPU_CROSS_ENTROPY_CHUNK = 1 << 20


def _cross_entropy_reference(logits: Tensor, index: Tensor, valid: Tensor, weight: Tensor | None,
                             label_smoothing: float, z_loss: float, softcap: float | None) -> Tensor:
    """The per-sample cross-entropy as a plain differentiable expression, on the exact log-softmax:
    for second derivatives and for ``torch.compile``."""
    x = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    log_q = log_softmax(x, 1)  # as the kernel: -inf stays, an infinite loss where it is read
    w_y = None if weight is None else weight[index]
    nll = -_gather_class(log_q, index)
    loss = nll if w_y is None else nll * w_y
    if label_smoothing:
        per_class = -log_q if weight is None else -log_q * _along_class_dim(weight, log_q)
        loss = (1 - label_smoothing) * loss + label_smoothing / x.shape[1] * per_class.sum(1)
    if z_loss:
        z_term = torch.logsumexp(x, dim=1).square() * z_loss
        loss = loss + (z_term if w_y is None else z_term * w_y)
    return torch.where(valid, loss, loss.new_zeros(()))


def _cross_entropy_pass(input: Tensor, index: Tensor, valid: Tensor, weight: Tensor | None, label_smoothing: float,
                        z_loss: float, softcap: float | None, with_grad: bool) -> tuple[Tensor, Tensor]:
    """Per-sample loss ``index.shape`` and, in the returned buffer ``(N, *d, C)``, its gradient."""
    classes, dtype = input.shape[1], upcast(input[:0]).dtype
    work = torch.empty((input.shape[0], *input.shape[2:], classes), dtype=dtype, device=input.device)
    work.copy_(input.movedim(1, -1))
    rows, flat_index, flat_valid = work.view(-1, classes), index.reshape(-1), valid.reshape(-1)
    target_weight = None if weight is None else weight[flat_index]
    loss = work.new_empty(rows.shape[0])
    step = max(1, _CPU_CROSS_ENTROPY_CHUNK // max(classes, 1)) if input.device.type == "cpu" else rows.shape[0]
    for start in range(0, rows.shape[0], step):
        part = slice(start, start + step)
        loss[part] = cross_entropy_rows(
            rows[part], flat_index[part], flat_valid[part],
            target_weight=None if target_weight is None else target_weight[part], class_weight=weight,
            label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, with_grad=with_grad)[0]
    return loss.view(index.shape), work


class _CrossEntropy(torch.autograd.Function):
    """Index-target cross-entropy on the shared exact kernel, its gradient computed in forward.

    The logits are copied once, in the compute dtype and with the class dimension last, into the
    buffer that :func:`~losskit.functional._softmax.cross_entropy_rows` turns into their gradient
    in place (chunk by chunk on a CPU), so the loss keeps no log-softmax alive until backward and
    backward is one multiply. Second derivatives differentiate :func:`_cross_entropy_reference`.
    """

    @staticmethod
    def forward(ctx, input: Tensor, index: Tensor, valid: Tensor, weight: Tensor | None,
                label_smoothing: float, z_loss: float, softcap: float | None) -> Tensor:
        ctx.options = (label_smoothing, z_loss, softcap)
        ctx.save_for_backward(input, index, valid, weight)
        loss, work = _cross_entropy_pass(input, index, valid, weight, *ctx.options, with_grad=ctx.needs_input_grad[0])
        ctx.grad = work if ctx.needs_input_grad[0] else None
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        input, index, valid, weight = ctx.saved_tensors
        none = (None,) * 6
        if torch.is_grad_enabled():  # create_graph=True: the gradient itself must be differentiable
            logits = upcast(input)
            loss = _cross_entropy_reference(logits, index, valid, weight, *ctx.options)
            (grad,) = torch.autograd.grad(loss, input, grad_out, create_graph=True)
            return grad, *none
        grad, ctx.grad = ctx.grad, None
        if grad is None:  # an earlier backward through this graph (retain_graph=True) used it
            _, grad = _cross_entropy_pass(input, index, valid, weight, *ctx.options, with_grad=True)
        grad.mul_(grad_out.unsqueeze(-1).to(grad.dtype))
        return grad.movedim(-1, 1).to(input.dtype), *none


def _index_cross_entropy(input: Tensor, targets: _ClassTargets, weight: Tensor | None, label_smoothing: float,
                         z_loss: float = 0.0, softcap: float | None = None) -> Tensor:
    """Per-sample cross-entropy of index targets (0 at ignored samples), with class weights,
    smoothing, z-loss and softcap applied; ``input`` in any floating dtype, the result in its
    compute dtype."""
    if torch.compiler.is_compiling():
        return _cross_entropy_reference(upcast(input), targets.index, targets.mask, weight, label_smoothing,
                                        z_loss, softcap)
    return _CrossEntropy.apply(input, targets.index, targets.mask, weight, label_smoothing, z_loss, softcap)


def _softmax_cross_entropy(logits: Tensor, targets: _ClassTargets, weight: Tensor | None,
                           label_smoothing: float) -> Tensor:
    r"""Per-sample cross-entropy with class weights and smoothing applied (0 at ignored samples).

    Index targets go to the shared exact kernel (:func:`_index_cross_entropy`), whose per-sample
    value is this formula: :math:`(1-\varepsilon) w_y (-\log q_y) + \frac{\varepsilon}{C}
    \sum_k w_k (-\log q_k)`. Probability targets use the same formula with :math:`t` in place of
    the one-hot :math:`y`, on the exact log-softmax.
    """
    if targets.index is not None:
        return _index_cross_entropy(logits, targets, weight, label_smoothing)
    soft = _smoothed(targets.soft, label_smoothing)
    if weight is not None:
        soft = soft * _along_class_dim(weight, soft)
    return -(soft * weighted_log(log_softmax(logits, 1), soft)).sum(1)
