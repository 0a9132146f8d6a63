r"""IoU-family box losses and their gradients in closed form, without autograd.

For aligned pairs of corner boxes (``xyxy``, or ``xyzxyz`` in 3-D) this computes the loss of each
pair and its gradient in the first box together, block by block. What makes it fast on CPUs of
any make is doing less, not tuning for one cache:

* **Coordinate-major blocks.** Each block of pairs is copied once into rows of a workspace (one
  row per coordinate, the low corner negated), so every later op is a contiguous op, and
  several rows go in one op: both boxes' sizes are one addition, the overlap and the enclosing
  box one more. An op on column views of the ``(rows, 2D)`` inputs reads with a stride of ``2D``
  and costs several contiguous ops.
* **The gradient written out by hand** from the value's own intermediates, instead of an
  autograd graph: nothing to record, save or walk, and about half the ops of forward plus
  backward. It is checked against autograd on the expressions of :mod:`losskit.boxes` in float64
  (``tests/test_boxes.py``).
* **Vectorized kernels only.** Comparisons with bool results, ``torch.where``, ``masked_fill``
  and ops mixing bool and float tensors run element by element on CPUs, several times slower than
  arithmetic. Masks here are 0/1 floats (``sign`` of a ``relu``), and a select is ``torch.lerp``
  with a 0/1 weight, which returns either end exactly.
* **One workspace per call**, reused by every block, whose rows each quantity takes in turn
  (``out=`` and in-place ops): 8 floats per coordinate and 8 to 10 more per pair of a block,
  allocated once, so the cost does not depend on how the allocator treats many short-lived
  buffers.

The geometry is that of :func:`losskit.boxes.pair_geometry`, with the same conventions:

* ``min`` and ``max`` are exact; at a tie the overlap's derivative goes to the second box's
  coordinate (the target's) and the enclosing box's to the first;
* every guarded ratio ``a / b`` with ``b <= eps`` is 0 with a zero gradient, and NaN stays NaN;
* the centre offset is ``((lo2 - lo1) + (hi2 - hi1)) / 2``: differences of nearby coordinates are
  exact in floating point, sums of large ones are not.

Notation in the comments: ``S`` the similarity, the loss ``1 - S`` (times a detached focus for
Focal-EIoU); ``I``, ``U``, ``C`` the intersection, union and enclosing areas; ``s1``, ``s2`` the
boxes' sides; ``ov`` the overlap per axis (``min(hi) - max(lo)``, negative when apart); ``enc``
the enclosing box's sides; ``d`` the centre offset per axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Pairs per block on a CPU, per intra-op thread. Above a few thousand pairs an op's dispatch cost
# is small beside its work, and a block's workspace (about 24 floats per pair, 3 MB at 32k) stays
# in the last-level cache of any current CPU. Measured with benchmarks/bench_boxes.py (see the
# README). GPUs take every pair in one block: their limit is kernel launches, not cache.
CPU_BLOCK = 32_768
# Below this many pairs one block takes them all; above it there are at least _MIN_BLOCKS blocks,
# so that the workspace (24 floats per pair of a block for a 2-D GIoU) plus the stored loss and
# gradient (5 floats per pair) stays near the 15 floats per pair that torchvision's autograd graph
# keeps for its GIoU loss, the leanest of its three (benchmarks/bench_boxes.py, tracker). Each
# block costs the same ~100 op dispatches, which dominate at 10k pairs: there, one thread, GIoU
# took 2.8 ms in 3 blocks, 2.0 ms in 2 and 1.4 ms in 1, against 2.4 ms for the plain formula.
# Two blocks keep both the speed and the memory goals.
_SPLIT_ABOVE = 4_096
_MIN_BLOCKS = 2

_ASPECT = 4 / math.pi**2  # CIoU's v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2
_SCALAR_ROWS = {"iou": 6, "giou": 6, "diou": 6, "ciou": 8, "eiou": 6}  # see _block
_MISS_ROWS = 2  # the exact 1 - IoU and GIoU's hull gap, see _exact_miss


@dataclass(frozen=True)
class IoUSpec:
    """Which loss of the IoU family, and its options (see :mod:`losskit.functional.boxes`)."""

    kind: str  # "iou", "giou", "diou", "ciou" or "eiou"
    eps: float
    mode: str = "linear"  # iou: "linear", "square" or "log"
    alpha_gate: float | None = None  # ciou
    alpha_no_grad: bool = True  # ciou
    gamma: float | None = None  # eiou: Focal-EIoU's detached IoU^gamma


def _positive_(x: Tensor) -> Tensor:
    """``[x > 0]`` as 0/1 floats (0 for NaN), in place."""
    return x.relu_().sign_()


def _guarded_reciprocal(den: Tensor, eps: float, out: Tensor) -> Tensor:
    """``1 / den`` where ``den > eps``, else 0, into ``out`` (which may be ``den``): the factor of a
    guarded ratio. NaN stays NaN (``0 / NaN``)."""
    floored = den.clamp_min(eps)
    return _positive_(torch.sub(den, eps, out=out)).div_(floored)


def _times_others(values: Tensor, factor: Tensor, out: Tensor) -> Tensor:
    """``out[k] = factor * prod(values[j] for j != k)`` for ``(D, rows)`` values: ``factor`` times
    the derivative of the product over ``D`` in row ``k``. ``out`` must not overlap ``values``."""
    dims = values.shape[0]
    for k in range(dims):
        others = [values[j] for j in range(dims) if j != k]
        torch.mul(others[0], factor, out=out[k])
        for row in others[1:]:
            out[k].mul_(row)
    return out


def _product(values: Tensor, out: Tensor) -> Tensor:
    """Product over the first dimension, into ``out``."""
    torch.mul(values[0], values[1], out=out)
    for row in values[2:]:
        out.mul_(row)
    return out


def _squares(values: Tensor, out: Tensor) -> Tensor:
    """Sum of squares over the first dimension, into ``out``."""
    torch.mul(values[0], values[0], out=out)
    for row in values[1:]:
        out.addcmul_(row, row)
    return out


def workspace_rows(spec: IoUSpec, dims: int) -> int:
    """Rows (floats per pair) of a block's workspace for ``spec`` and boxes of ``dims`` axes."""
    return 8 * dims + _SCALAR_ROWS[spec.kind] + _MISS_ROWS


def _area_beyond(big: Tensor, small: Tensor, extra: Tensor, out: Tensor, scratch: Tensor) -> Tensor:
    """``prod(big) - prod(small)`` for ``(D, rows)`` sides ``big = small + extra`` (``extra >= 0``), as
    the sum of non-negative terms ``sum_k prod(big[:k]) extra[k] prod(small[k+1:])``, into ``out``
    (``scratch``: one free row). The same sum as :func:`losskit.boxes.pair_geometry`'s."""
    dims = extra.shape[0]
    for k in range(dims):
        factors = [big[j] for j in range(k)] + [small[j] for j in range(k + 1, dims)]
        term = out if k == 0 else scratch
        torch.mul(extra[k], factors[0], out=term)
        for row in factors[1:]:
            term.mul_(row)
        if k:
            out.add_(term)
    return out


def _exact_miss(size: Tensor, diff: Tensor, iw: Tensor, inter: Tensor, beyond: Tensor, scratch: Tensor,
                out: Tensor, hull: Tensor | None, eps: float) -> Tensor:
    """``1 - IoU`` as :func:`losskit.boxes.pair_geometry` forms it with ``exact_miss=True``: the areas
    of each box outside the other, summed from the parts of their sides outside the other box, over
    their sum with the intersection (1 for a degenerate union). ``1 - IoU`` itself keeps few digits
    of a close prediction's loss.

    ``diff`` is ``(lo1 - lo2, hi2 - hi1)``; ``beyond`` ``(2, D, rows)`` and ``scratch`` (2 rows) are
    free workspace. The miss goes to ``out[0]``; with ``hull`` (the enclosing sides), ``out[1]``
    gets the enclosing area minus the union, GIoU's gap, the same way.
    """
    s1, s2 = size[0], size[1]
    beyond2, beyond1 = beyond[0], beyond[1]
    # Per axis, how far box 2 reaches beyond box 1 (both ends together), and box 1 beyond box 2.
    torch.clamp_min(diff[0], 0.0, out=beyond2)
    torch.clamp_max(diff[0], 0.0, out=beyond1)
    for k in range(diff.shape[1]):
        beyond2[k].add_(torch.clamp_min(diff[1, k], 0.0, out=scratch[0]))
        beyond1[k].add_(torch.clamp_max(diff[1, k], 0.0, out=scratch[0]))
    beyond1.neg_()
    only1 = _area_beyond(s1, iw, torch.minimum(s1, beyond1, out=beyond1), out[0], scratch[1])  # A1 - I
    if hull is not None:  # C - U = (C - A1) - (A2 - I): the enclosing sides are s1 + beyond2
        _area_beyond(hull, s1, beyond2, out[1], scratch[1])
    only2 = _area_beyond(s2, iw, torch.minimum(s2, beyond2, out=beyond2), scratch[0], scratch[1])  # A2 - I
    if hull is not None:
        out[1].sub_(only2)
    only = only1.add_(only2)
    exact_union = torch.add(only, inter, out=scratch[0])
    proper = _positive_(torch.sub(exact_union, eps, out=scratch[1]))  # [U > eps] as 0/1
    # only / U where U > eps, else 1 (NaN stays NaN through only); the 1 is added as 1 - [U > eps],
    # a 0 or 1 formed apart: adding 1 - [U > eps] to the ratio in two steps would round it.
    miss = only.mul_(proper).div_(exact_union.clamp_min_(eps))
    return miss.add_(proper.neg_().add_(1.0))


def _block(x: Tensor, t: Tensor, spec: IoUSpec, ws: Tensor, loss: Tensor, grad_out: Tensor) -> None:
    """Loss and gradient of one block of pairs: ``x``, ``t`` ``(rows, 2D)`` in, the loss written into
    ``loss`` ``(rows,)`` and the gradient into ``grad_out`` ``(rows, 2D)``; ``ws`` is the workspace,
    ``(workspace_rows(spec, D), rows)``."""
    rows, width = x.shape
    d = width // 2
    eps = spec.eps
    # Rows 0..4D: the boxes, box-major, as (-lo, hi). With the low corner negated one minimum gives
    # (-max(lo), min(hi)) and one maximum (-min(lo), max(hi)); sizes, overlaps and the enclosing
    # box are then sums of halves, with no sign vector to broadcast.
    boxes = ws[: 4 * d].view(2, 2, d, rows)  # box, (-lo, hi), axis
    torch.stack(x.unbind(1) + t.unbind(1), out=ws[: 4 * d])  # faster than copy_ from a transposed view
    boxes[:, 0].neg_()
    # Rows 4D..8D: (half, min/max, axis), half 0 = (-max(lo), -min(lo)), half 1 = (min(hi), max(hi)).
    extremes = ws[4 * d : 8 * d].view(2, 2, d, rows)
    box1, box2 = boxes[0], boxes[1]
    torch.minimum(box1, box2, out=extremes[:, 0])
    torch.maximum(box1, box2, out=extremes[:, 1])
    ov_enc = extremes[1].add_(extremes[0])  # (ov, enc) = (min(hi) - max(lo), max(hi) - min(lo))
    ov, enc = ov_enc[0], ov_enc[1]
    size = torch.add(boxes[:, 1], boxes[:, 0], out=extremes[0])  # (s1, s2), over the spent half 0
    s1, s2 = size[0], size[1]
    # Box 2 becomes (lo1 - lo2, hi2 - hi1); box 1's rows are free from here on.
    diff = box2.sub_(box1)
    spare = box1  # (2, D, rows), free
    iw = ov.clamp_min_(0.0)
    sc = ws[8 * d :]  # rows for values with one entry per pair
    inter = _product(iw, sc[0])
    miss_rows = sc[-_MISS_ROWS:]
    # Rows 4 and 5 (dS/dA1, dS/dI later) are free until the IoU's gradient is formed.
    miss = _exact_miss(size, diff, iw, inter, spare, sc[4:6], miss_rows, enc if spec.kind == "giou" else None, eps)
    off = None
    if spec.kind not in ("iou", "giou"):  # ((hi2 - hi1) + (lo2 - lo1)) / 2, from exact differences
        off = torch.sub(diff[1], diff[0], out=spare[0]).mul_(0.5)
    chosen = _positive_(diff)

    areas = _product(size.transpose(0, 1), sc[1:3])
    union = areas[0].add_(areas[1]).sub_(inter)
    r_union = _guarded_reciprocal(union, eps, sc[2])
    iou = torch.mul(inter, r_union, out=sc[3])
    # dIoU/dI = (1 + IoU) / U and dIoU/dA1 = -IoU / U (U = A1 + A2 - I): dS/dI and dS/dA1 so far.
    g_area = torch.mul(iou, r_union, out=sc[4])
    g_inter = torch.add(r_union, g_area, out=sc[5])
    g_area.neg_()
    d_enc = d_size = half_d_off = focus = None  # dS/denc, dS/ds1 beyond A1, dS/dd / 2, Focal-EIoU's weight

    kind = spec.kind
    if kind == "iou":
        loss.copy_(miss)
        if spec.mode != "linear":
            _iou_mode(spec, iou, loss, g_inter, g_area)
    elif kind == "giou":
        hull = _product(enc, sc[0])
        r_hull = _guarded_reciprocal(hull, eps, sc[2])
        torch.addcmul(miss, miss_rows[1], r_hull, out=loss)  # 1 - IoU + (C - U) / C
        # S = IoU - 1 + U / C for C > eps: dS/dU = 1/C (U = A1 + A2 - I), dS/dC = -U/C^2.
        g_inter.sub_(r_hull)
        g_area.add_(r_hull)
        d_enc = _times_others(enc, union.mul_(r_hull).mul_(r_hull).neg_(), spare[0])
    else:
        r_c2 = _guarded_reciprocal(_squares(enc, sc[0]), eps, sc[0])
        centre = _squares(off, sc[1]).mul_(r_c2)
        torch.add(miss, centre, out=loss)
        # S -= rho^2 / c^2: dS/dd = -2 d / c^2, dS/denc = 2 enc rho^2 / c^4.
        half_d_off = off.mul_(r_c2).neg_()
        if kind == "eiou":
            eiou_d_enc, d_size = _eiou_terms(size, enc, eps, loss)
            if spec.gamma is not None:
                focus = iou.pow(spec.gamma)
        d_enc = enc.mul_(centre.mul_(r_c2).mul_(2.0))  # the enclosing sides are spent
        if kind == "ciou":
            d_size = _ciou_terms(size, iou, miss, spec, loss, g_inter, g_area, sc[0], sc[6:8], spare[1])
        elif kind == "eiou":
            d_enc.add_(eiou_d_enc)
        elif kind != "diou":
            raise ValueError(f"no closed form for kind={kind!r}")

    # dS/ds1 through A1, over s2 (spent); then dS/dov_k = dS/dI * (product of the other overlaps)
    # where ov_k > 0, over s1.
    g_size = _times_others(s1, g_area, s2)
    if d_size is not None:
        g_size.add_(d_size)
    g_ov = _times_others(iw, g_inter, s1).mul_(iw.sign_())
    # ov = min(hi) + min(-lo) and enc = max(hi) + max(-lo): box 1's entry that is the min takes
    # dS/dov, otherwise (ties included) dS/denc. With dd/d(-lo1) = 1/2 and dd/dhi1 = -1/2:
    # dS/d(-lo1) = pick_lo + g_size + dS/dd / 2 and dS/dhi1 = pick_hi + g_size - dS/dd / 2.
    for side in chosen:  # side 0: -lo, side 1: hi; the pick replaces the 0/1 weights
        if d_enc is None:
            side.mul_(g_ov)
        else:
            torch.lerp(d_enc, g_ov, side, out=side)
    pick = chosen.add_(g_size)
    if focus is not None:
        pick.mul_(focus)
        loss.mul_(focus)
        if half_d_off is not None:
            half_d_off.mul_(focus)
    # The loss is 1 - S: dL/dlo1 = dS/d(-lo1) and dL/dhi1 = -dS/dhi1. Written column by column:
    # a (D, rows) op into the (rows, 2D) gradient would run an inner loop of D elements.
    for k in range(d):
        lo_col, hi_col = grad_out[:, k], grad_out[:, d + k]
        if half_d_off is None:
            lo_col.copy_(pick[0, k])
            torch.neg(pick[1, k], out=hi_col)
        else:
            torch.add(pick[0, k], half_d_off[k], out=lo_col)
            torch.sub(half_d_off[k], pick[1, k], out=hi_col)


def _iou_mode(spec: IoUSpec, iou: Tensor, loss: Tensor, g_inter: Tensor, g_area: Tensor) -> None:
    """``iou_loss``'s square and log modes: the loss in place of the exact ``1 - IoU`` it holds, and
    dS/dI, dS/dA1 scaled by dS/dIoU."""
    if spec.mode == "square":  # S = IoU^2, and 1 - IoU^2 = (1 - IoU)(1 + IoU)
        loss.mul_(iou + 1)
        scale = 2 * iou
    else:  # S = 1 + ln max(IoU, floor); clamp_min passes the gradient where IoU >= floor
        floored = iou.clamp_min(max(spec.eps, torch.finfo(iou.dtype).tiny))
        # -ln IoU = -log1p(-(1 - IoU)), exact for IoU near 1 (where 1 - IoU < 1/2)
        near = torch.log1p(-loss.clamp_max(0.5)).neg_()
        torch.where(loss < 0.5, near, torch.log(floored).neg_(), out=loss)
        scale = torch.where(iou >= floored, floored.reciprocal(), 0.0)
    g_inter.mul_(scale)
    g_area.mul_(scale)


def _ciou_terms(size: Tensor, iou: Tensor, miss: Tensor, spec: IoUSpec, loss: Tensor, g_inter: Tensor,
                g_area: Tensor, den_row: Tensor, angle_rows: Tensor, norm_rows: Tensor) -> Tensor:
    """CIoU's aspect term: adds ``alpha v`` to ``loss``, scales dS/dI and dS/dA1 when alpha is
    differentiated, and returns dS/ds1 of the term (in ``norm_rows``). ``miss`` is the exact
    ``1 - IoU``; ``den_row``, ``angle_rows`` (2) and ``norm_rows`` (2) are free workspace rows."""
    eps = spec.eps
    w, h = size[:, 0], size[:, 1]  # (2, rows) each: both boxes
    r_norm = _guarded_reciprocal(_squares(size.transpose(0, 1), norm_rows), eps, norm_rows)  # 0 for a point box
    # atan(w / h) as atan2(w, h); pi/4 for a point box (w^2 + h^2 <= eps), as boxes._aspect_angle.
    point = _positive_(r_norm.clone()).neg_().add_(1.0)
    angle = torch.atan2(w, h, out=angle_rows).lerp_(angle_rows.new_tensor(math.pi / 4), point)
    delta = torch.sub(angle[1], angle[0], out=angle[0])
    v = torch.mul(delta, delta, out=angle[1]).mul_(_ASPECT)
    r_den = _guarded_reciprocal(torch.add(miss, v, out=den_row), eps, den_row)
    alpha = v * r_den
    if spec.alpha_gate is not None:
        alpha = torch.where(iou > spec.alpha_gate, alpha, 0.0)
    loss.addcmul_(alpha, v)
    if spec.alpha_no_grad:
        d_v = alpha  # -dS/dv
    else:  # alpha v = v^2 / D with D = 1 - IoU + v: d/dv = alpha (1 + (1 - IoU) / D), d/dIoU = -alpha^2
        d_v = alpha * (miss * r_den).add_(1.0)
        g_iou = 1 - alpha * alpha  # dS/dIoU
        g_inter.mul_(g_iou)
        g_area.mul_(g_iou)
    # dS/dangle1 = 2 (4/pi^2) d_v delta, with dangle/dw = h / (w^2 + h^2), dangle/dh = -w / (w^2 + h^2).
    scale = delta.mul_(d_v).mul_(r_norm[0]).mul_(2 * _ASPECT)
    d_size = norm_rows
    torch.mul(h[0], scale, out=d_size[0])
    torch.mul(w[0], scale.neg_(), out=d_size[1])
    return d_size


def _eiou_terms(size: Tensor, enc: Tensor, eps: float, loss: Tensor) -> tuple[Tensor, Tensor]:
    """EIoU's side terms ``sum_k (s1_k - s2_k)^2 / enc_k^2``: adds them to ``loss`` and returns their
    dS/denc and dS/ds1."""
    gap = size[0] - size[1]
    r_enc2 = _guarded_reciprocal(enc * enc, eps, torch.empty_like(enc))
    side = gap * gap * r_enc2
    for row in side:
        loss.add_(row)
    # S -= side: dS/denc = 2 side / enc = 2 side enc / enc^2, dS/ds1 = -2 (s1 - s2) / enc^2.
    return side.mul_(r_enc2).mul_(enc).mul_(2.0), gap.mul_(r_enc2).mul_(-2.0)


def block_rows(rows: int, device: torch.device) -> int:
    """Pairs per block: everything at once off the CPU; on a CPU :data:`CPU_BLOCK` per intra-op
    thread (up to 4, so that each op still splits across the threads), and at least
    :data:`_MIN_BLOCKS` equal blocks above :data:`_SPLIT_ABOVE` pairs."""
    if device.type != "cpu" or rows <= _SPLIT_ABOVE:
        return max(rows, 1)
    block = CPU_BLOCK * max(1, min(torch.get_num_threads(), 4))
    blocks = max(_MIN_BLOCKS, -(-rows // block))
    return -(-rows // blocks)


def iou_loss_and_grad(x: Tensor, t: Tensor, spec: IoUSpec) -> tuple[Tensor, Tensor]:
    """Loss per pair ``(N,)`` and its gradient in ``x`` ``(N, 2D)`` for corner boxes ``x``, ``t``
    of shape ``(N, 2D)`` (see the module docstring)."""
    rows, width = x.shape
    loss = x.new_empty(rows)
    grad = torch.empty_like(x)
    step = block_rows(rows, x.device)
    height = workspace_rows(spec, width // 2)
    workspace = x.new_empty(height * step)
    for start in range(0, rows, step):
        part = slice(start, start + step)
        count = min(step, rows - start)
        ws = workspace[: height * count].view(height, count)
        _block(x[part], t[part], spec, ws, loss[part], grad[part])
    return loss, grad
