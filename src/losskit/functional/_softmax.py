r"""Softmax cross-entropy on rows of logits, its value and gradient computed together in place.

One kernel for every index-target cross-entropy: :func:`losskit.cross_entropy` (and the losses
built on it) runs it over its logits, :func:`losskit.fused_linear_cross_entropy` over each chunk
of a head's output. The logits are overwritten with their gradient, so the loss needs no memory
beyond the gradient it returns.

Exact where a prediction is confident. The log-normaliser is
:math:`\mathrm{lse} = m + \operatorname{log1p}(r)`, with :math:`m` the largest logit and
:math:`r = \sum_{k \ne \text{peak}} e^{x_k - m}` summed without the peak's own term 1, and the
loss is :math:`(m - x_y) + \operatorname{log1p}(r)`: a sum of non-negative terms, where
``lse - x_y`` would cancel to a few digits once the target leads by 10 (4e-5 relative error in
float32, and nothing left from a lead of 17). The gradient at the target,
:math:`p_y \cdot c - (1 - \varepsilon) w_y`, is likewise formed with :math:`1 - p_y = r / (1 + r)`
when the target holds the peak.

Split over ranks by vocabulary (``shard=``, :mod:`losskit.functional._vocab_parallel`), each rank
holds a contiguous block of the columns; the per-row statistics (peak, rest, target logit,
smoothing sum) are combined across ranks once per call, and everything else stays local, so the
loss and each shard's gradient are those of the full row.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class RowStats(Protocol):
    """Combines per-row statistics of a vocabulary shard into those of the full row (one
    collective), for :func:`cross_entropy_rows` over column blocks held by different ranks."""

    start: int  # global index of this shard's first column
    classes: int  # columns of the full row
    weight_sum: Tensor | float  # sum of the full row's class weights (classes without weights)

    def combine(self, peak: Tensor, rest: Tensor, x_y: Tensor, smooth: Tensor | None,
                hit: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor]:
        """Local ``(peak, rest, x_y, smooth, hit)`` to global ``(peak, rest, scale, x_y, smooth,
        hit)``, ``scale = exp(local peak - global peak)``."""


def cross_entropy_rows(
    z: Tensor,
    index: Tensor,
    valid: Tensor,
    *,
    target_weight: Tensor | None = None,
    class_weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    scale: Tensor | None = None,
    with_grad: bool = True,
    accuracy: bool = False,
    shard: RowStats | None = None,
) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
    r"""Per-row cross-entropy of logits ``z`` ``(n, C)``, and ``z`` turned into its gradient.

    .. math::
        \tilde x = c \tanh(x / c), \qquad
        \ell = (1-\varepsilon)\, w_y (\mathrm{lse} - \tilde x_y)
               + \frac{\varepsilon}{C} \sum_k w_k (\mathrm{lse} - \tilde x_k) + z\, w_y\, \mathrm{lse}^2

    Args:
        z: Logits ``(n, C)`` in the compute dtype, a buffer this function overwrites.
        index: Target class per row ``(n,)``, any valid class where the row is ignored.
        valid: ``(n,)`` bool, False where the row counts nowhere (its loss and gradient are 0).
        target_weight: ``w[index]`` ``(n,)``, or None without class weights.
        class_weight: ``w`` ``(C,)``, or None.
        label_smoothing, z_loss, softcap: As in :func:`losskit.cross_entropy`.
        scale: Upstream gradient per row ``(n,)``, or None for 1.
        with_grad: Compute the gradient (into ``z``).
        accuracy: Also return ``extras["correct"]``: the largest logit is the target.
        shard: ``z`` holds columns ``[shard.start, shard.start + C)`` of rows of ``shard.classes``
            columns; ``index`` is global and ``class_weight`` this shard's slice. The statistics
            of the full rows come from ``shard.combine``; every rank must call with the same rows.

    Returns:
        ``(loss (n,), extras, gradient or None)``: ``extras["z"]`` is the z-loss part of each row's
        loss; the gradient is ``z`` itself, ``d loss / d logits`` times ``scale``.
    """
    eps, zl, cap = label_smoothing, z_loss, softcap
    classes = z.shape[1] if shard is None else shard.classes
    dcap = None
    if cap is not None:  # x~ = c tanh(x / c); d x~ / d x = 1 - tanh^2
        z.div_(cap).tanh_()
        if with_grad:
            dcap = torch.mul(z, z).neg_().add_(1)
        z.mul_(cap)
    extras: dict[str, Tensor] = {}
    if shard is None:
        here = None
        column = index.unsqueeze(1)
        if accuracy:
            extras["correct"] = (z.argmax(1) == index) & valid
    else:  # the target's column if this shard holds it (here), else any column, read as 0
        local = index - shard.start
        here = (local >= 0) & (local < z.shape[1])
        column = torch.where(here, local, torch.zeros_like(local)).unsqueeze(1)
    x_y = z.gather(1, column).squeeze(1)
    smooth = None
    if eps:
        smooth = z.sum(1) if class_weight is None else torch.mv(z, class_weight)
        weight_sum = classes if class_weight is None else class_weight.sum()
    peak, top = z.max(1, keepdim=True)
    z.sub_(peak).exp_()  # exp(x~ - max): exactly 1 at the peak
    rest = z.scatter_(1, top, 0.0).sum(1)  # every term but the peak's own 1
    z.scatter_(1, top, 1.0)
    peak = peak.squeeze(1)
    at_peak = index == top.squeeze(1)  # the target holds the peak (1 - p_y is then exact)
    if shard is not None:
        x_y = torch.where(here, x_y, 0.0)
        at_peak = here & (column == top).squeeze(1)
        peak, rest, rescale, x_y, smooth, at_peak = shard.combine(peak, rest, x_y, smooth, at_peak)
        z.mul_(rescale.unsqueeze(1))  # exp(x~ - global max)
        weight_sum = shard.weight_sum
        if accuracy:
            extras["correct"] = at_peak & valid
    log_total = torch.log1p(rest)
    lse = peak + log_total

    # l = (1-eps) w_y (lse - x~_y) + eps/C sum_k w_k (lse - x~_k) + z_loss w_y lse^2
    nll = (peak - x_y) + log_total  # lse - x~_y as two non-negative terms
    if target_weight is not None:
        nll = nll * target_weight
    ce = nll * (1 - eps) if eps else nll
    if eps:
        ce = ce + (eps / classes) * (weight_sum * lse - smooth)
    z_term = lse.square() * zl if zl else torch.zeros_like(lse)
    if zl and target_weight is not None:
        z_term = z_term * target_weight
    zero = lse.new_zeros(())
    extras["z"] = torch.where(valid, z_term, zero)
    loss = torch.where(valid, ce + z_term, zero)
    if not with_grad:
        return loss, extras, None

    # d l / d x~_k = p_k (pull + extra) - pull [k = y] - eps/C w_k, with pull = (1-eps) w_y and
    # extra = eps/C sum(w) + 2 z_loss w_y lse; at the target p_y extra - (1 - p_y) pull.
    rows = valid.to(z.dtype) if scale is None else torch.where(valid, scale, zero)
    wy_rows = rows if target_weight is None else rows * target_weight
    pull = wy_rows * (1 - eps) if eps else wy_rows
    extra = 2 * zl * lse * wy_rows if zl else torch.zeros_like(lse)
    if eps:
        extra = extra + rows * (eps / classes * weight_sum)
    total = rest + 1
    p_y = z.gather(1, column).squeeze(1) / total
    below_one = torch.where(at_peak, rest / total, 1 - p_y)  # 1 - p_y, exact at the peak
    z.mul_(((pull + extra) / total).unsqueeze(1))  # p_k (pull + extra)
    at_target = p_y * extra - below_one * pull
    if here is not None:  # a shard without the target keeps p_y (pull + extra) there
        at_target = torch.where(here, at_target, z.gather(1, column).squeeze(1))
    z.scatter_(1, column, at_target.unsqueeze(1))
    if eps:
        w = class_weight if class_weight is not None else z.new_ones(z.shape[1])
        z.addr_(rows, w, alpha=-eps / classes)
    if dcap is not None:
        z.mul_(dcap)
    return loss, extras, z
