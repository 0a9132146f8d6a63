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
  arithmetic. Masks here are 0/1 floats (a comparison written into a float tensor, which runs
  vectorized: one op where ``sign`` of a ``relu`` took two), and a select is ``torch.lerp``
  with a 0/1 weight, which returns either end exactly.
* **One workspace per call**, reused by every block, whose rows each quantity takes in turn
  (``out=`` and in-place ops): 8 floats per coordinate and 8 to 10 more per pair of a block,
  allocated once, so the cost does not depend on how the allocator treats many short-lived
  buffers. Its views (rows, halves, per-axis pairs) are made once per call too (``_Layout``) and
  shared by equal blocks: at 10k pairs indexing and dispatch, not arithmetic, set a block's time,
  and making the views once took a fifth to a third off it (loaded 2-core Xeon, one thread).

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


def _above(x: Tensor, threshold: float, out: Tensor) -> Tensor:
    """``[x > threshold]`` as 0/1 floats (0 for NaN), into ``out`` (which may be ``x``)."""
    return torch.gt(x, threshold, out=out)


def _guarded_reciprocal(den: Tensor, eps: float, out: Tensor) -> Tensor:
    """``1 / den`` where ``den > eps``, else 0, into ``out`` (which may be ``den``): the factor of a
    guarded ratio. NaN stays NaN (``0 / NaN``)."""
    floored = den.clamp_min(eps)
    return _above(den, eps, out).div_(floored)


# The helpers below take the rows of a (D, rows) quantity as a tuple (``_Layout`` makes them once
# per call): indexing a tensor costs a dispatch, and at 10k pairs a block's dispatches, not its
# arithmetic, set its time.


def _times_others(values: tuple[Tensor, ...], factor: Tensor, out: tuple[Tensor, ...]) -> None:
    """``out[k] = factor * prod(values[j] for j != k)``: ``factor`` times the derivative of the
    product of ``values`` in row ``k``. ``out`` must not overlap ``values``."""
    dims = len(values)
    for k in range(dims):
        others = [values[j] for j in range(dims) if j != k]
        torch.mul(others[0], factor, out=out[k])
        for row in others[1:]:
            out[k].mul_(row)


def _product(values: tuple[Tensor, ...], out: Tensor) -> Tensor:
    """Product of the rows ``values``, into ``out``."""
    torch.mul(values[0], values[1], out=out)
    for row in values[2:]:
        out.mul_(row)
    return out


def _squares(values: tuple[Tensor, ...], out: Tensor) -> Tensor:
    """Sum of squares of the rows ``values``, into ``out``."""
    torch.mul(values[0], values[0], out=out)
    for row in values[1:]:
        out.addcmul_(row, row)
    return out


def workspace_rows(spec: IoUSpec, dims: int) -> int:
    """Rows (floats per pair) of a block's workspace for ``spec`` and boxes of ``dims`` axes."""
    return 8 * dims + _SCALAR_ROWS[spec.kind] + _MISS_ROWS


def _area_beyond(big: tuple[Tensor, ...], small: tuple[Tensor, ...], extra: tuple[Tensor, ...], out: Tensor,
                 scratch: Tensor) -> Tensor:
    """``prod(big) - prod(small)`` for sides (rows) ``big = small + extra`` (``extra >= 0``), as the
    sum of non-negative terms ``sum_k prod(big[:k]) extra[k] prod(small[k+1:])``, into ``out``
    (``scratch``: one free row). The same sum as :func:`losskit.boxes.pair_geometry`'s."""
    dims = len(extra)
    for k in range(dims):
        factors = big[:k] + small[k + 1:]
        term = out if k == 0 else scratch
        torch.mul(extra[k], factors[0], out=term)
        for row in factors[1:]:
            term.mul_(row)
        if k:
            out.add_(term)
    return out


class _Layout:
    """The views of one block's workspace ``(workspace_rows(spec, D), rows)``, made once per call
    and shared by its equal blocks. The rows each quantity takes in turn are described in
    :func:`_block`."""

    def __init__(self, ws: Tensor, dims: int) -> None:
        d, rows = dims, ws.shape[1]
        self.ws, self.dims = ws, d
        # Rows 0..4D: the boxes, box-major, as (-lo, hi); rows 4D..8D: (half, min/max, axis).
        self.box_rows = ws[: 4 * d]
        boxes = self.box_rows.view(2, 2, d, rows)  # box, (-lo, hi), axis
        extremes = ws[4 * d : 8 * d].view(2, 2, d, rows)
        self.lo_halves, self.hi_halves = boxes[:, 0], boxes[:, 1]
        self.box1, self.box2 = boxes[0], boxes[1]
        self.minima, self.maxima = extremes[:, 0], extremes[:, 1]
        self.half0, self.half1 = extremes[0], extremes[1]
        self.ov, self.enc = extremes[1, 0], extremes[1, 1]
        self.ov_rows, self.enc_rows = self.ov.unbind(0), self.enc.unbind(0)
        self.s1, self.s2 = extremes[0, 0], extremes[0, 1]  # sizes, over the spent half 0
        self.s1_rows, self.s2_rows = self.s1.unbind(0), self.s2.unbind(0)
        self.size = extremes[0]
        self.axis_pairs = self.size.transpose(0, 1).unbind(0)  # (s1_k, s2_k) per axis, each (2, rows)
        # Box 2 becomes (lo1 - lo2, hi2 - hi1), then the 0/1 choice of box 1's entries, then the
        # gradient; box 1's rows are spare from then on.
        self.diff_lo, self.diff_hi = boxes[1, 0], boxes[1, 1]
        self.diff_hi_rows = self.diff_hi.unbind(0)
        self.diff_lo_rows = self.diff_lo.unbind(0)
        self.spare0, self.spare1 = boxes[0, 0], boxes[0, 1]  # beyond2 / offset, beyond1
        self.spare0_rows, self.spare1_rows = self.spare0.unbind(0), self.spare1.unbind(0)
        sc = ws[8 * d :]
        self.sc = sc.unbind(0)  # rows for values with one entry per pair
        self.axis_scratch = sc[4 : 4 + d]  # free while the miss is formed (D <= 3: rows 4-6)
        self.areas = sc[1:3]
        self.miss_rows = sc[-_MISS_ROWS:]
        self.block = sc
        self.quarter_pi = ws.new_tensor(math.pi / 4)  # CIoU's angle of a point box


def _exact_miss(lay: _Layout, inter: Tensor, giou: bool, eps: float) -> Tensor:
    """``1 - IoU`` as :func:`losskit.boxes.pair_geometry` forms it with ``exact_miss=True``: the areas
    of each box outside the other, summed from the parts of their sides outside the other box, over
    their sum with the intersection (1 for a degenerate union). ``1 - IoU`` itself keeps few digits
    of a close prediction's loss.

    Reads the sizes, the differences ``(lo1 - lo2, hi2 - hi1)`` and the overlaps (clamped at 0) of
    ``lay``; box 1's rows and rows 4 and 5 are free workspace. The miss goes to the first miss row;
    with ``giou``, the second gets the enclosing area minus the union, GIoU's gap, the same way.
    """
    scratch0, scratch1 = lay.sc[4], lay.sc[5]
    out0, out1 = lay.miss_rows[0], lay.miss_rows[1]
    beyond2, beyond1 = lay.spare0, lay.spare1
    # Per axis, how far box 2 reaches beyond box 1 (both ends together), and box 1 beyond box 2.
    torch.clamp_min(lay.box2, 0.0, out=lay.box1)  # both ends at once, over box 1's spare rows
    beyond2.add_(beyond1)
    torch.clamp_max(lay.diff_lo, 0.0, out=beyond1)
    beyond1.add_(torch.clamp_max(lay.diff_hi, 0.0, out=lay.axis_scratch)).neg_()
    torch.minimum(lay.s1, beyond1, out=beyond1)
    only1 = _area_beyond(lay.s1_rows, lay.ov_rows, lay.spare1_rows, out0, scratch1)  # A1 - I
    if giou:  # C - U = (C - A1) - (A2 - I): the enclosing sides are s1 + beyond2
        _area_beyond(lay.enc_rows, lay.s1_rows, lay.spare0_rows, out1, scratch1)
    torch.minimum(lay.s2, beyond2, out=beyond2)
    only2 = _area_beyond(lay.s2_rows, lay.ov_rows, lay.spare0_rows, scratch0, scratch1)  # A2 - I
    if giou:
        out1.sub_(only2)
    only = only1.add_(only2)
    exact_union = torch.add(only, inter, out=scratch0)
    proper = _above(exact_union, eps, scratch1)  # [U > eps] as 0/1
    # only / U where U > eps, else 1 (NaN stays NaN through only); the 1 is added as 1 - [U > eps],
    # a 0 or 1 formed apart: adding 1 - [U > eps] to the ratio in two steps would round it.
    miss = only.mul_(proper).div_(exact_union.clamp_min_(eps))
    return miss.add_(proper.neg_().add_(1.0))


def _block(x: Tensor, t: Tensor, spec: IoUSpec, lay: _Layout, loss: Tensor, grad_out: Tensor) -> None:
    """Loss and gradient of one block of pairs: ``x``, ``t`` ``(rows, 2D)`` in, the loss written into
    ``loss`` ``(rows,)`` and the gradient into ``grad_out`` ``(rows, 2D)``; ``lay`` holds the views
    of the workspace, ``(workspace_rows(spec, D), rows)``."""
    d = lay.dims
    eps = spec.eps
    sc = lay.sc
    # Rows 0..4D: the boxes, box-major, as (-lo, hi). With the low corner negated one minimum gives
    # (-max(lo), min(hi)) and one maximum (-min(lo), max(hi)); sizes, overlaps and the enclosing
    # box are then sums of halves, with no sign vector to broadcast.
    torch.stack(x.unbind(1) + t.unbind(1), out=lay.box_rows)  # faster than copy_ from a transposed view
    lay.lo_halves.neg_()
    # Rows 4D..8D: (half, min/max, axis), half 0 = (-max(lo), -min(lo)), half 1 = (min(hi), max(hi)).
    torch.minimum(lay.box1, lay.box2, out=lay.minima)
    torch.maximum(lay.box1, lay.box2, out=lay.maxima)
    lay.half1.add_(lay.half0)  # (ov, enc) = (min(hi) - max(lo), max(hi) - min(lo))
    ov, enc = lay.ov, lay.enc
    torch.add(lay.hi_halves, lay.lo_halves, out=lay.half0)  # (s1, s2), over the spent half 0
    s1, s2 = lay.s1, lay.s2
    # Box 2 becomes (lo1 - lo2, hi2 - hi1); box 1's rows are free from here on.
    diff = lay.box2.sub_(lay.box1)
    iw = ov.clamp_min_(0.0)
    inter = _product(lay.ov_rows, sc[0])
    kind = spec.kind
    # Rows 4 and 5 (dS/dA1, dS/dI later) are free until the IoU's gradient is formed.
    miss = _exact_miss(lay, inter, kind == "giou", eps)
    miss_rows = lay.miss_rows
    off = None
    if kind not in ("iou", "giou"):  # ((hi2 - hi1) + (lo2 - lo1)) / 2, from exact differences
        off = torch.sub(lay.diff_hi, lay.diff_lo, out=lay.spare0).mul_(0.5)
    chosen = _above(diff, 0.0, diff)

    _product(lay.axis_pairs, lay.areas)  # (A1, A2)
    union = sc[1].add_(sc[2]).sub_(inter)
    r_union = _guarded_reciprocal(union, eps, sc[2])
    iou = torch.mul(inter, r_union, out=sc[3])
    # dIoU/dI = (1 + IoU) / U and dIoU/dA1 = -IoU / U (U = A1 + A2 - I): dS/dI and dS/dA1 so far.
    g_area = torch.mul(iou, r_union, out=sc[4])
    g_inter = torch.add(r_union, g_area, out=sc[5])
    g_area.neg_()
    d_enc = d_size = half_d_off = focus = None  # dS/denc, dS/ds1 beyond A1, dS/dd / 2, Focal-EIoU's weight

    if kind == "iou":
        loss.copy_(miss)
        if spec.mode != "linear":
            _iou_mode(spec, iou, loss, g_inter, g_area)
    elif kind == "giou":
        hull = _product(lay.enc_rows, sc[0])
        r_hull = _guarded_reciprocal(hull, eps, sc[2])
        torch.addcmul(miss, miss_rows[1], r_hull, out=loss)  # 1 - IoU + (C - U) / C
        # S = IoU - 1 + U / C for C > eps: dS/dU = 1/C (U = A1 + A2 - I), dS/dC = -U/C^2.
        g_inter.sub_(r_hull)
        g_area.add_(r_hull)
        _times_others(lay.enc_rows, union.mul_(r_hull).mul_(r_hull).neg_(), lay.spare0_rows)
        d_enc = lay.spare0
    else:
        r_c2 = _guarded_reciprocal(_squares(lay.enc_rows, sc[0]), eps, sc[0])
        centre = _squares(lay.spare0_rows, sc[1]).mul_(r_c2)
        torch.add(miss, centre, out=loss)
        # S -= rho^2 / c^2: dS/dd = -2 d / c^2, dS/denc = 2 enc rho^2 / c^4.
        half_d_off = off.mul_(r_c2).neg_()
        if kind == "eiou":
            eiou_d_enc, d_size = _eiou_terms(lay.size, enc, eps, loss)
            if spec.gamma is not None:
                focus = iou.pow(spec.gamma)
        d_enc = enc.mul_(centre.mul_(r_c2).mul_(2.0))  # the enclosing sides are spent
        if kind == "ciou":
            d_size = _ciou_terms(lay, iou, miss, spec, loss, g_inter, g_area)
        elif kind == "eiou":
            d_enc.add_(eiou_d_enc)
        elif kind != "diou":
            raise ValueError(f"no closed form for kind={kind!r}")

    # dS/ds1 through A1, over s2 (spent); then dS/dov_k = dS/dI * (product of the other overlaps)
    # where ov_k > 0, over s1.
    _times_others(lay.s1_rows, g_area, lay.s2_rows)
    g_size = s2
    if d_size is not None:
        g_size.add_(d_size)
    _times_others(lay.ov_rows, g_inter, lay.s1_rows)
    g_ov = s1.mul_(iw.sign_())
    # ov = min(hi) + min(-lo) and enc = max(hi) + max(-lo): box 1's entry that is the min takes
    # dS/dov, otherwise (ties included) dS/denc. With dd/d(-lo1) = 1/2 and dd/dhi1 = -1/2:
    # dS/d(-lo1) = pick_lo + g_size + dS/dd / 2 and dS/dhi1 = pick_hi + g_size - dS/dd / 2.
    for side in (lay.diff_lo, lay.diff_hi):  # side 0: -lo, side 1: hi; the pick replaces the 0/1 weights
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
    columns = grad_out.unbind(1)
    for k in range(d):
        lo_col, hi_col = columns[k], columns[d + k]
        if half_d_off is None:
            lo_col.copy_(lay.diff_lo_rows[k])
            torch.neg(lay.diff_hi_rows[k], out=hi_col)
        else:
            torch.add(lay.diff_lo_rows[k], lay.spare0_rows[k], out=lo_col)
            torch.sub(lay.spare0_rows[k], lay.diff_hi_rows[k], out=hi_col)


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


def _ciou_terms(lay: _Layout, iou: Tensor, miss: Tensor, spec: IoUSpec, loss: Tensor, g_inter: Tensor,
                g_area: Tensor) -> Tensor:
    """CIoU's aspect term: adds ``alpha v`` to ``loss``, scales dS/dI and dS/dA1 when alpha is
    differentiated, and returns dS/ds1 of the term (in box 1's spare ``hi`` rows). ``miss`` is the
    exact ``1 - IoU``; workspace rows 0, 6 and 7 are free."""
    eps = spec.eps
    den_row, angle_rows, norm_rows = lay.sc[0], lay.block[6:8], lay.spare1
    w, h = lay.axis_pairs  # (2, rows) each: both boxes
    r_norm = _guarded_reciprocal(_squares(lay.axis_pairs, norm_rows), eps, norm_rows)  # 0 for a point box
    # atan(w / h) as atan2(w, h); pi/4 for a point box (w^2 + h^2 <= eps), as boxes.axis_aligned._aspect_angle.
    point = _above(r_norm, 0.0, torch.empty_like(r_norm)).neg_().add_(1.0)
    angle = torch.atan2(w, h, out=angle_rows).lerp_(lay.quarter_pi, point)
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
    layouts: dict[int, _Layout] = {}  # one per block size: every block but the last shares one
    for start in range(0, rows, step):
        part = slice(start, start + step)
        count = min(step, rows - start)
        if count not in layouts:
            layouts[count] = _Layout(workspace[: height * count].view(height, count), width // 2)
        _block(x[part], t[part], spec, layouts[count], loss[part], grad[part])
    return loss, grad
