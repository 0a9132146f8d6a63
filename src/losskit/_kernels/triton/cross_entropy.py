r"""Softmax cross-entropy on index targets as one Triton kernel: per-row loss and gradient.

One program per row (sample, or pixel of a dense layout) walks the classes twice in tiles:

1. an online pass for the peak :math:`m`, its column, the rest
   :math:`r = \sum_{k \ne \text{peak}} e^{\tilde x_k - m}` (the peak's own term 1 is never added,
   so a confident row keeps :math:`r` to full relative precision), the smoothing sums and, when
   asked, the spread :math:`s = \sum_k e^{\tilde x_k - m} (m - \tilde x_k)` of the entropy
   :math:`H = \operatorname{log1p}(r) + s / (1 + r)` (non-negative terms only, merged online);
2. the gradient, written straight into a ``(rows, C)`` buffer: a separate one that backward
   scales in place (:func:`cross_entropy`), or the logits themselves, times a per-row upstream
   gradient (:func:`cross_entropy_chunk`, one chunk of the fused linear cross-entropy).

The loss is :math:`(m - \tilde x_y) + \operatorname{log1p}(r)` and the target's gradient uses
:math:`1 - p_y = r / (1 + r)` where the target holds the peak: the formulas of
:func:`losskit.functional._softmax.cross_entropy_rows`, so both paths are exact where a
prediction is confident (a lead of 17 still gives its 4e-8 loss in float32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from losskit._core.numerics import compute_dtype
from losskit._kernels.triton._math import log1p, scalar_options, tanh


@triton.jit
def _cross_entropy_kernel(
    x_ptr, stride_n, stride_c, stride_s, spatial,  # logits (N, C, S) with their strides
    index_ptr, valid_ptr, weight_ptr, loss_ptr, grad_ptr, classes, options_ptr,
    scale_ptr, z_part_ptr, top_ptr, entropy_ptr,
    HAS_WEIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr, SMOOTH: tl.constexpr, ZLOSS: tl.constexpr,
    WITH_GRAD: tl.constexpr, HAS_SCALE: tl.constexpr, EXTRAS: tl.constexpr, ENTROPY: tl.constexpr,
    COMPUTE: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    # The options in the compute dtype (a float argument would reach a compiled kernel as float32).
    eps = tl.load(options_ptr)
    z_loss = tl.load(options_ptr + 1)
    softcap = tl.load(options_ptr + 2)
    scale_eps = tl.load(options_ptr + 3)  # eps / C
    base = x_ptr + (row // spatial) * stride_n + (row % spatial) * stride_s
    y = tl.load(index_ptr + row).to(tl.int64)
    valid = tl.load(valid_ptr + row) != 0
    cols = tl.arange(0, BLOCK)
    neg_inf = float("-inf")
    peak = tl.full((), neg_inf, COMPUTE)
    top = tl.full((), 0, tl.int64)
    rest = tl.zeros((), COMPUTE)
    spread = tl.zeros((), COMPUTE)  # sum_k e^(x~_k - peak) (peak - x~_k), entropy only
    smooth = tl.zeros((), COMPUTE)  # sum_k w_k x~_k
    weight_sum = tl.zeros((), COMPUTE)  # sum_k w_k
    for start in range(0, classes, BLOCK):
        offs = start + cols
        inside = offs < classes
        x = tl.load(base + offs * stride_c, mask=inside, other=0.0).to(COMPUTE)
        if HAS_SOFTCAP:
            x = softcap * tanh(x / softcap)
        if SMOOTH:  # lanes past the row read 0 with weight 0
            w = tl.load(weight_ptr + offs, mask=inside, other=0.0).to(COMPUTE) if HAS_WEIGHT else inside.to(COMPUTE)
            smooth += tl.sum(x * w, 0)
            weight_sum += tl.sum(w, 0)
        x = tl.where(inside, x, neg_inf)
        tile_peak = tl.max(x, 0)
        tile_top = tl.argmax(x, 0)
        shift = tl.where(tile_peak == neg_inf, 0.0, tile_peak)  # an all -inf tile adds nothing
        tile_rest = tl.sum(tl.where(cols == tile_top, 0.0, tl.exp(x - shift)), 0)
        # Merge: whichever peak is lower becomes an ordinary term (its 1, scaled) of the rest.
        bigger = tile_peak > peak
        new_peak = tl.maximum(peak, tile_peak)
        reference = tl.where(new_peak == neg_inf, 0.0, new_peak)  # -inf - -inf would be NaN
        old_scale = tl.exp(peak - reference)
        tile_scale = tl.exp(tile_peak - reference)
        if ENTROPY:
            # Each side's terms move to the new peak: e^(x-M)(M-x) = e^(p-M) e^(x-p) ((p-x) + (M-p)).
            below = tl.where(x == neg_inf, 0.0, shift - x)  # a -inf logit adds e^-inf * inf: nothing
            tile_spread = tl.sum(tl.exp(x - shift) * below, 0)
            old_lift = tl.where(peak == neg_inf, 0.0, reference - peak)
            tile_lift = tl.where(tile_peak == neg_inf, 0.0, reference - tile_peak)
            spread = (old_scale * (spread + old_lift * (rest + 1))
                      + tile_scale * (tile_spread + tile_lift * (tile_rest + 1)))
        rest = tl.where(bigger, rest * old_scale + old_scale + tile_rest, rest + tile_scale + tile_rest * tile_scale)
        top = tl.where(bigger, start + tile_top.to(tl.int64), top)
        peak = new_peak

    x_y = tl.load(base + y * stride_c).to(COMPUTE)
    if HAS_SOFTCAP:
        x_y = softcap * tanh(x_y / softcap)
    w_y = tl.load(weight_ptr + y).to(COMPUTE) if HAS_WEIGHT else tl.full((), 1.0, COMPUTE)
    log_total = log1p(rest)
    lse = peak + log_total
    # l = (1-eps) w_y (lse - x~_y) + eps/C sum_k w_k (lse - x~_k) + z_loss w_y lse^2
    loss = ((peak - x_y) + log_total) * w_y
    if SMOOTH:
        loss = loss * (1 - eps) + scale_eps * (weight_sum * lse - smooth)
    if ZLOSS:
        loss += z_loss * w_y * lse * lse
    tl.store(loss_ptr + row, tl.where(valid, loss, 0.0))
    if EXTRAS:  # the z-loss part of the loss, and the predicted class
        z_part = z_loss * w_y * lse * lse if ZLOSS else tl.zeros((), COMPUTE)
        tl.store(z_part_ptr + row, tl.where(valid, z_part, 0.0))
        tl.store(top_ptr + row, top)
    if ENTROPY:
        tl.store(entropy_ptr + row, tl.where(valid, log_total + spread / (rest + 1), 0.0))
    if WITH_GRAD:
        # d l / d x~_k = p_k (pull + extra) - pull [k = y] - eps/C w_k (see cross_entropy_rows)
        live = valid.to(COMPUTE)
        if HAS_SCALE:  # the upstream gradient of this row's loss
            live = tl.where(valid, tl.load(scale_ptr + row).to(COMPUTE), 0.0)
        pull = live * w_y * (1 - eps) if SMOOTH else live * w_y
        extra = tl.zeros((), COMPUTE)
        if ZLOSS:
            extra += 2 * z_loss * lse * live * w_y
        if SMOOTH:
            extra += live * scale_eps * weight_sum
        total = rest + 1
        p_y = tl.exp(x_y - peak) / total
        below_one = tl.where(y == top, rest / total, 1 - p_y)  # 1 - p_y, exact at the peak
        at_target = p_y * extra - below_one * pull
        out = grad_ptr + row * classes
        for start in range(0, classes, BLOCK):
            offs = start + cols
            inside = offs < classes
            raw = tl.load(base + offs * stride_c, mask=inside, other=0.0).to(COMPUTE)
            x = raw
            if HAS_SOFTCAP:
                x = softcap * tanh(raw / softcap)
            g = tl.exp(x - peak) / total * (pull + extra)
            g = tl.where(offs == y, at_target, g)
            if SMOOTH:
                w = tl.load(weight_ptr + offs, mask=inside, other=0.0).to(COMPUTE) if HAS_WEIGHT else 1.0
                g -= live * scale_eps * w
            if HAS_SOFTCAP:  # d x~ / d x = 1 - tanh^2
                cap = tanh(raw / softcap)
                g *= 1 - cap * cap
            g = tl.where(valid, g, 0.0)  # an ignored row may hold NaN: its gradient is 0
            tl.store(out + offs, g.to(grad_ptr.dtype.element_ty), mask=inside)


# Classes per tile: a row of up to this many is read in one tile, longer rows in several.
_MAX_BLOCK = 4096

_COMPUTE = {torch.float32: tl.float32, torch.float64: tl.float64}


def cross_entropy_rows(input: Tensor, index: Tensor, valid: Tensor, weight: Tensor | None, label_smoothing: float,
                       z_loss: float, softcap: float | None, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Per-sample loss ``index.shape`` of logits ``(N, C, *d)`` and, if asked, its gradient as a
    ``(N, *d, C)`` buffer in the compute dtype (the torch path's layout)."""
    batch, classes = input.shape[0], input.shape[1]
    logits = input.reshape(batch, classes, -1)  # a view for contiguous inputs: read in place
    spatial = logits.shape[2]
    dtype = compute_dtype(input.dtype)
    rows = index.numel()
    loss = torch.empty(rows, dtype=dtype, device=input.device)
    grad = torch.empty((rows, classes), dtype=dtype, device=input.device) if with_grad else loss
    block = min(triton.next_power_of_2(max(classes, 1)), _MAX_BLOCK)
    _cross_entropy_kernel[(rows,)](
        logits, logits.stride(0), logits.stride(1), logits.stride(2), spatial,
        index.reshape(-1).contiguous(), valid.reshape(-1).contiguous().view(torch.uint8),
        weight if weight is not None else loss, loss, grad, classes,
        scalar_options(dtype, input.device, label_smoothing, z_loss, softcap or 1.0, label_smoothing / max(classes, 1)),
        loss, loss, loss, loss,  # no upstream scale, extras or entropy (never read)
        HAS_WEIGHT=weight is not None, HAS_SOFTCAP=softcap is not None, SMOOTH=bool(label_smoothing),
        ZLOSS=bool(z_loss), WITH_GRAD=with_grad, HAS_SCALE=False, EXTRAS=False, ENTROPY=False,
        COMPUTE=_COMPUTE[dtype], BLOCK=block,
    )
    shaped = None if not with_grad else grad.view(batch, spatial, classes)
    return loss.view(index.shape), shaped


def cross_entropy_chunk(z: Tensor, index: Tensor, valid: Tensor, *, class_weight: Tensor | None = None,
                        label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float | None = None,
                        scale: Tensor | None = None, with_grad: bool = True, accuracy: bool = False,
                        entropy: bool = False) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
    """:func:`losskit.functional._softmax.cross_entropy_rows` on the kernel (one vocabulary block):
    the per-row loss of the logits ``z`` ``(n, C)``, ``z`` overwritten with its gradient times
    ``scale`` (per row; None: 1). ``extras["z"]`` is each row's z-loss part, ``extras["correct"]``
    (``accuracy``) whether its largest logit is the target, ``extras["entropy"]`` (``entropy``) the
    softmax entropy, 0 at rows that are not ``valid``."""
    if z.dim() != 2 or not z.is_contiguous():
        raise ValueError(f"z must be a contiguous (n, C) buffer, got shape {tuple(z.shape)}")
    rows, classes = z.shape
    loss = torch.empty(rows, dtype=z.dtype, device=z.device)
    z_part = torch.empty_like(loss)
    top = torch.empty(rows, dtype=torch.int64, device=z.device)
    spread = torch.empty_like(loss) if entropy else loss
    block = min(triton.next_power_of_2(max(classes, 1)), _MAX_BLOCK)
    _cross_entropy_kernel[(rows,)](
        z, z.stride(0), z.stride(1), 0, 1,
        index.contiguous(), valid.contiguous().view(torch.uint8), class_weight if class_weight is not None else loss,
        loss, z, classes,
        scalar_options(z.dtype, z.device, label_smoothing, z_loss, softcap or 1.0, label_smoothing / max(classes, 1)),
        scale.contiguous() if scale is not None else loss, z_part, top, spread,
        HAS_WEIGHT=class_weight is not None, HAS_SOFTCAP=softcap is not None, SMOOTH=bool(label_smoothing),
        ZLOSS=bool(z_loss), WITH_GRAD=with_grad, HAS_SCALE=scale is not None, EXTRAS=True, ENTROPY=entropy,
        COMPUTE=_COMPUTE[z.dtype], BLOCK=block,
    )
    extras = {"z": z_part}
    if accuracy:
        extras["correct"] = (top == index) & valid
    if entropy:
        extras["entropy"] = spread
    return loss, extras, z if with_grad else None


class CrossEntropy(torch.autograd.Function):
    """Index-target cross-entropy on the kernel; the gradient comes from forward, backward scales it
    in place. Second derivatives differentiate the torch path (``backend="torch"``)."""

    @staticmethod
    def forward(ctx, input: Tensor, index: Tensor, valid: Tensor, weight: Tensor | None,
                label_smoothing: float, z_loss: float, softcap: float | None) -> Tensor:
        ctx.options = (label_smoothing, z_loss, softcap)
        ctx.save_for_backward(input, index, valid, weight)
        loss, ctx.grad = cross_entropy_rows(input, index, valid, weight, *ctx.options,
                                            with_grad=ctx.needs_input_grad[0])
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        input, index, valid, weight = ctx.saved_tensors
        none = (None,) * 6
        if torch.is_grad_enabled():  # create_graph=True: the gradient itself must be differentiable
            import losskit

            label_smoothing, z_loss, softcap = ctx.options
            labels = torch.where(valid, index, -1)
            loss = losskit.cross_entropy(input, labels, weight=weight, ignore_index=-1, label_smoothing=label_smoothing,
                                         z_loss=z_loss, softcap=softcap, reduction="none", backend="torch")
            (grad,) = torch.autograd.grad(loss, input, grad_out.to(loss.dtype), create_graph=True)
            return grad, *none
        grad, ctx.grad = ctx.grad, None
        if grad is None:  # an earlier backward through this graph (retain_graph=True) used it
            _, grad = cross_entropy_rows(input, index, valid, weight, *ctx.options, with_grad=True)
        grad.mul_(grad_out.reshape(grad.shape[0], -1, 1).to(grad.dtype))
        return grad.movedim(-1, 1).reshape(input.shape).to(input.dtype), *none


def cross_entropy(input: Tensor, index: Tensor, valid: Tensor, weight: Tensor | None, label_smoothing: float,
                  z_loss: float = 0.0, softcap: float | None = None) -> Tensor:
    """Per-sample cross-entropy of index targets (0 where ``valid`` is False), differentiable."""
    return CrossEntropy.apply(input, index, valid, weight, label_smoothing, z_loss, softcap)
