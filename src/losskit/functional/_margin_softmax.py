r"""The cross-entropy over proxy logits that the margin losses of :mod:`losskit.functional.metric` share,
with its backward pass written out.

For embeddings :math:`x` ``(N, D)``, proxies :math:`W` ``(C, D)`` and labels :math:`y`:

.. math::
    z_{ij} = \frac{\langle u_i, w_j\rangle}{\lVert w_j\rVert}, \qquad
    z_{i y_i} \leftarrow t_i, \qquad \ell_i = -\log\operatorname{softmax}(z_i)_{y_i},

with :math:`u = \mathrm{row}(x)` ``(N, D)`` (for example :math:`s\hat x`), the division by
:math:`\lVert w_j\rVert` only for unit proxies, :math:`z_{ij}` the best of class :math:`j`'s
:math:`K` sub-centres for ``(C, K, D)`` proxies, and the labelled logit
:math:`t_i = \mathrm{target\_logit}(x_i, w_{y_i})` (the margin).

**Why a written-out backward pass.** At 65k classes the ``(N, C)`` logits and the ``(C, D)``
proxies dwarf everything else, and autograd of the formula passes over them many times: the
division by the norms and its backward, the margin's mask, the softmax and its backward, each
a full pass through memory. Here:

* the logits are one matrix product, scaled column by column by :math:`1/\lVert w_j\rVert`
  (no normalized copy of the proxies); the margin touches the :math:`N` labelled entries only;
* the scaling, the margin, the softmax's maximum and exponentials, and the logits' gradient up
  to a factor per row, happen block by block of rows while the block is in cache, in place in
  the product's buffer, which the backward pass reads (two matrix products) and never writes;
  the labelled column's share of those products is corrected on :math:`N` rows;
* the backward pass through the proxies' normalization is in closed form:
  :math:`\partial w_j = a_j - w_j \langle a_j, w_j\rangle / \lVert w_j\rVert^2` with
  :math:`a_j = \sum_i \partial z_{ij}\, u_i / \lVert w_j\rVert`, one pass over the gradient;
* the small parts (``row`` and ``target_logit``, ``(N, D)``) are differentiated by autograd.

Precision is that of :func:`losskit._core.numerics.log_softmax`: the exponentials are taken
relative to each row's largest logit; where that is the labelled one it is left out of their sum
:math:`r`, so a confident class's loss :math:`\operatorname{log1p}(r)` and gradient
:math:`-r / (1 + r)` keep their relative precision.

Under ``torch.compile``, for an empty batch, and when a second derivative is taken, the same
formula runs through autograd (:func:`_plain`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as TF
from torch import Tensor

from losskit._core.numerics import log_softmax

# Rows of the (N, C) logits handled at once on a CPU: about 8 MiB, so that the passes after the
# matrix product find the block in cache, in blocks large enough that each operation's thread
# start-up stays small (on a loaded machine a thread that waits for a core costs each one).
_BLOCK_BYTES = 1 << 23
# Dimensions of column-major proxies whose products are summed at once in _row_dots.
_DOT_CHUNK = 16


class MarginLogits(NamedTuple):
    """How a margin loss builds its logits (see the module's docstring)."""

    row: Callable[[Tensor], Tensor]  # x (N, D) -> u (N, D)
    unit_proxies: bool  # divide column j by |w_j|
    target_logit: Callable[[Tensor, Tensor], Tensor]  # (x (N, D), w_y (N, D) or (N, K, D)) -> (N,)


def margin_cross_entropy(x: Tensor, proxies: Tensor, target: Tensor, logits: MarginLogits) -> Tensor:
    """Per-sample cross-entropy ``(N,)`` over the margin logits of ``x`` ``(N, D)`` against ``proxies``
    ``(C, D)`` or ``(C, K, D)`` (same dtype), labels ``target`` ``(N,)``."""
    if x.shape[0] == 0 or torch.compiler.is_compiling():
        return _plain(x, proxies, target, logits)
    if torch.is_grad_enabled() and (x.requires_grad or proxies.requires_grad):
        return _MarginCrossEntropy.apply(x, proxies, target, logits)
    with torch.no_grad():
        return _Forward(x, proxies, target, logits).loss


def _plain(x: Tensor, proxies: Tensor, target: Tensor, logits: MarginLogits) -> Tensor:
    """The formula through autograd: the reference of the written-out pass, and its fallback."""
    flat = proxies.reshape(-1, proxies.shape[-1])
    z = logits.row(x) @ flat.T
    if logits.unit_proxies:
        z = z / flat.norm(dim=-1).clamp_min(torch.finfo(flat.dtype).tiny)
    if proxies.dim() == 3:
        z = z.view(x.shape[0], *proxies.shape[:2]).amax(-1)
    index = target.unsqueeze(1)
    z = z.scatter(1, index, logits.target_logit(x, proxies[target]).unsqueeze(1).to(z.dtype))
    return -log_softmax(z, 1).gather(1, index).squeeze(1)


def _row_dots(a: Tensor, b: Tensor) -> Tensor:
    r""":math:`\langle a_j, b_j\rangle` of the rows of two ``(C, D)`` tensors laid out alike, without
    their ``(C, D)`` product. For column-major rows (the transpose of a ``(D, C)`` weight, as in
    pytorch-metric-learning) a reduction along the rows is strided and slow on a CPU; there the
    dots accumulate a few dimensions at a time over contiguous ``(C,)`` slices."""
    if a.device.type != "cpu" or a.stride(-1) == 1 or a.stride(0) != 1:
        return (a * b).sum(-1)
    dots = a.new_zeros(a.shape[0])
    for start in range(0, a.shape[1], _DOT_CHUNK):
        a_d, b_d = a.T[start:start + _DOT_CHUNK], b.T[start:start + _DOT_CHUNK]
        dots += (a_d * b_d).sum(0)
    return dots


def _row_blocks(rows: int, row_bytes: int, device: torch.device) -> list[slice]:
    """Slices of ``rows`` rows of ``row_bytes`` each that fit a cache-sized block on a CPU (one
    slice elsewhere: there each operation is a kernel launch)."""
    step = max(1, _BLOCK_BYTES // max(row_bytes, 1)) if device.type == "cpu" else rows
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


class _Forward:
    r"""The forward pass, and what the backward pass needs.

    With :math:`E_{ij} = e^{z_{ij} - m_i}`, :math:`m_i` the row's largest logit, and
    :math:`E_{i y_i} = 0` where the labelled class leads (the peak's own term, 1, stays out of
    ``rest``, the row sums, so that :math:`\operatorname{log1p}` of them keeps the loss of a
    confident class exact), ``operand`` ``(N, C K)`` holds :math:`E_{ij} / \lVert w_{jk}\rVert`
    (without unit proxies :math:`E_{ij}`) at the sub-centre :math:`k` that gave :math:`z_{ij}`,
    shared among ties as the maximum's gradient is, and 0 at the others: the gradient of the
    product's logits up to the factor :math:`g_i / \sum_j E_{ij}` of each row, except in the
    labelled column.
    """

    def __init__(self, x: Tensor, proxies: Tensor, target: Tensor, logits: MarginLogits,
                 needs: tuple[bool, bool] = (False, False)):
        n, dim = x.shape
        flat = proxies.reshape(-1, dim)
        sub_centres = proxies.shape[1] if proxies.dim() == 3 else 1
        with torch.enable_grad() if any(needs) else torch.no_grad():
            self.x = x.detach().requires_grad_(needs[0])
            self.w_target = proxies[target].detach().requires_grad_(needs[1])
            self.u = logits.row(self.x)
            self.t = logits.target_logit(self.x, self.w_target)
        self.inverse_norms = None
        if logits.unit_proxies:
            self.inverse_norms = 1 / _row_dots(flat, flat).sqrt_().clamp_min_(torch.finfo(flat.dtype).tiny)
        operand = self.u.detach() @ flat.T  # (N, C K)
        index = target.unsqueeze(1)
        t = self.t.detach().unsqueeze(1).to(operand.dtype)
        peak, labelled, e_target, rest = (operand.new_empty(n, 1) for _ in range(4))
        tiny = torch.finfo(operand.dtype).tiny
        log_tiny = math.log(tiny)
        for rows in _row_blocks(n, operand.shape[1] * operand.element_size(), x.device):
            products = operand[rows].view(-1, proxies.shape[0], sub_centres)
            if self.inverse_norms is not None:
                products.mul_(self.inverse_norms.view(products.shape[1:]))
            if sub_centres == 1:
                z = products.squeeze(-1)  # in place
            else:
                z = products.amax(-1)
                products.eq_(z.unsqueeze(-1))  # 1 at the best sub-centre, which gave the class's logit
            z.scatter_(1, index[rows], t[rows])
            torch.gather(z, 1, index[rows], out=labelled[rows])
            torch.amax(z, 1, keepdim=True, out=peak[rows])
            # e^u for u at most log(tiny) is 0 (each such term below float32's 1.2e-38): computed as
            # a subnormal number it costs tenfold on a CPU
            TF.threshold_(z.sub_(peak[rows]), log_tiny, -math.inf).exp_()
            e_target[rows] = z.gather(1, index[rows]).masked_fill_(labelled[rows] == peak[rows], 0.0)
            z.scatter_(1, index[rows], e_target[rows])
            torch.sum(z, 1, keepdim=True, out=rest[rows])
            if sub_centres > 1:  # E at the best sub-centre, shared among ties
                products.div_(products.sum(-1, keepdim=True)).mul_(z.unsqueeze(-1))
            if self.inverse_norms is not None:
                products.mul_(self.inverse_norms.view(products.shape[1:]))
            # and so are the subnormal entries (each below 1.2e-38) in the backward pass's products
            TF.threshold_(products, tiny, 0.0)  # NaN stays NaN
        peak, labelled, rest = peak.squeeze(1), labelled.squeeze(1), rest.squeeze(1)
        self.leads = labelled == peak
        # -log q_y = log(sum_j E_j) + m - z_y: log1p(rest) where y leads (z_y = m exactly, also
        # for an infinite peak, where m - z_y would be NaN); elsewhere the sum holds the peak's 1.
        self.loss = torch.where(self.leads, torch.log1p(rest), torch.log(rest) + (peak - labelled))
        self.total = torch.where(self.leads, 1 + rest, rest)  # sum_j E_j
        self.operand, self.rest, self.e_target = operand, rest, e_target.squeeze(1)
        self.flat, self.target, self.needs = flat, target, needs

    def backward(self, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        r"""Gradients with respect to ``x`` and the flat proxies ``(C K, D)``.

        :math:`\partial z_{ij} = g_i (q_{ij} - [j = y_i])` with :math:`q_{ij} = E_{ij} / \sum_k E_{ik}`:
        ``operand`` times :math:`g_i / \sum_k E_{ik}` off the labelled column; there the gradient
        goes through ``target_logit`` and the column's share of the products is taken back."""
        row_scale = (grad / self.total).unsqueeze(1)  # (N, 1)
        # (q_y - 1) sum_k E_k: -rest where the labelled class leads (1 - q_y would cancel)
        grad_target = (grad / self.total) * torch.where(self.leads, -self.rest, self.e_target - self.rest)
        # the labelled column's entries of the operand (N, K), and its proxies (N, K, D)
        w_target = self.w_target.detach().view(self.target.shape[0], -1, self.flat.shape[1])
        k = w_target.shape[1]
        columns = self.target.unsqueeze(1) * k + torch.arange(k, device=self.target.device)
        in_target = self.operand.gather(1, columns)
        grad_u = grad_flat = None
        if self.needs[0]:
            grad_u = self.operand @ self.flat - (in_target.unsqueeze(1) @ w_target).squeeze(1)
            grad_u *= row_scale
        if self.needs[1]:
            grad_flat = torch.empty_like(self.flat)
            scaled_u = self.u.detach() * row_scale
            torch.mm(self.operand.T, scaled_u, out=grad_flat)
            grad_flat.index_add_(0, columns.flatten(), (-in_target.unsqueeze(-1) * scaled_u.unsqueeze(1)).flatten(0, 1))
            if self.inverse_norms is not None:
                # the normalization's backward pass: a_j - w_j <a_j, w_j> / |w_j|^2
                radial = _row_dots(grad_flat, self.flat) * self.inverse_norms.square()
                grad_flat.addcmul_(self.flat, radial.unsqueeze(1), value=-1)
        return self._small_parts(grad_u, grad_target, grad_flat)

    def _small_parts(self, grad_u: Tensor | None, grad_target: Tensor,
                     grad_flat: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """Through ``row`` and ``target_logit`` by autograd (their graph kept: the backward pass may
        run again); the labelled proxies' part is added to their rows of ``grad_flat``."""
        pairs = [(out, g) for out, g in ((self.u, grad_u), (self.t, grad_target.to(self.t.dtype)))
                 if g is not None and out.requires_grad]
        leaves = [leaf for leaf in (self.x, self.w_target) if leaf.requires_grad]
        grads = {}
        if pairs and leaves:
            outputs, grad_outputs = zip(*pairs, strict=True)
            found = torch.autograd.grad(outputs, leaves, grad_outputs, retain_graph=True, allow_unused=True)
            grads = dict(zip(map(id, leaves), found, strict=True))
        grad_x, grad_w_target = grads.get(id(self.x)), grads.get(id(self.w_target))
        if self.needs[0] and grad_x is None:
            grad_x = torch.zeros_like(self.x)
        if grad_flat is not None and grad_w_target is not None:
            grad_flat.view(-1, *self.w_target.shape[1:]).index_add_(0, self.target, grad_w_target)
        return grad_x, grad_flat


class _MarginCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, proxies: Tensor, target: Tensor, logits: MarginLogits) -> Tensor:
        ctx.state = _Forward(x, proxies, target, logits, needs=(x.requires_grad, proxies.requires_grad))
        ctx.logits = logits
        ctx.save_for_backward(x, proxies, target)
        return ctx.state.loss

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, proxies, target = ctx.saved_tensors
        needs = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # a second derivative: through the formula
            wanted = [tensor for tensor, need in zip((x, proxies), needs, strict=True) if need]
            with torch.enable_grad():
                found = iter(torch.autograd.grad(_plain(x, proxies, target, ctx.logits), wanted, grad,
                                                 create_graph=True))
            grad_x, grad_proxies = (next(found) if need else None for need in needs)
            return grad_x, grad_proxies, None, None
        grad_x, grad_flat = ctx.state.backward(grad)
        grad_proxies = None if grad_flat is None else grad_flat.view(proxies.shape)
        return grad_x, grad_proxies, None, None
