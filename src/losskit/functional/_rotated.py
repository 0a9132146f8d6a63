r"""Rotated-box losses: exact rotated IoU (2-D and 3-D with yaw), GWD, KLD and KFIoU.

The IoU losses are ``1 -`` the similarities of :func:`losskit.boxes.rotated_box_iou` and
:func:`losskit.boxes.rotated_box_iou_3d`. The Gaussian losses follow mmrotate: a box
``(cx, cy, w, h, angle)`` is the Gaussian :math:`\mathcal{N}(\mu, \Sigma)` with
:math:`\Sigma = R_\theta \operatorname{diag}(w^2/4, h^2/4) R_\theta^\top` (mmrotate's map; ProbIoU
uses the uniform density's :math:`w^2/12`), sides clamped to at least 1e-7 as there, and a distance
:math:`d` becomes the loss through mmrotate's post-processing

.. math::

    f(d) = \operatorname{log1p}(d) \;|\; \sqrt{d} \;|\; d, \qquad
    \ell = 1 - \frac{1}{\tau + f(d)} \text{ if } \tau \ge 1, \text{ else } f(d).

Every formula is written in the frame of one box, from the differences of the sides and of the
angles, so that a near-converged loss is a sum of non-negative terms instead of a difference of
traces or logarithms (in float32 those keep few or no digits of a loss below 1e-3).

Peer conventions:

========================================== ===============================================
mmrotate                                   losskit
========================================== ===============================================
``RotatedIoULoss`` (log mode, eps 1e-6)    ``rotated_iou_loss(mode="log", eps=1e-6)``
``GDLoss("gwd")`` (its class defaults)     ``gwd_loss()``
``GDLoss("kld", fun="log1p", tau=1)``      ``kld_loss(tau=1.0)``
``KFLoss()`` (``fun="none"``)              ``kfiou_loss()``, on the decoded boxes' centres
========================================== ===============================================
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from losskit._core.checks import check_bool, check_number, check_one_of
from losskit._core.reduction import Reduction, reduce_for
from losskit._core.rowwise import rowwise_loss
from losskit.boxes import ROTATED_IOU_KINDS, rotated_iou_terms, safe_sqrt
from losskit.functional.boxes import _docs, _prepare

__all__ = ["gwd_loss", "kfiou_loss", "kld_loss", "rotated_iou_3d_loss", "rotated_iou_loss"]

_FUNS = ("log1p", "sqrt", "none")
_MIN_SIDE = 1e-7  # mmrotate clamps w and h to [1e-7, 1e7] before forming the covariance


def _prepare_rotated(input: Tensor, target: Tensor, fmt: str, eps: float | None, reduction: str,
                     normalizer: object) -> tuple[Tensor, Tensor, float]:
    """Checked boxes in the compute dtype: negative sizes and NaN or infinite coordinates, the angle
    included, raise naming the first bad row (one device sync per tensor, in ``_prepare``)."""
    return _prepare(input, target, fmt, eps, reduction, normalizer, formats=(fmt,))


def _iou_loss(x: Tensor, t: Tensor, fmt: str, kind: str, mode: str, eps: float) -> Tensor:
    """``1 - (IoU - penalty)`` or ``-ln IoU`` per pair, computed in float64 with the target's centre
    at the origin (see :func:`losskit.boxes.rotated_box_iou`)."""
    centre = 3 if fmt == "xyzwlhr" else 2
    origin = torch.cat((t[..., :centre], torch.zeros_like(t[..., centre:])), -1).detach()
    iou, penalty = rotated_iou_terms((x - origin).double(), (t - origin).double(), fmt, kind, eps)
    floor = max(eps, torch.finfo(iou.dtype).tiny)
    loss = -torch.log(iou.clamp_min(floor)) if mode == "log" else 1 - iou + penalty
    return loss.to(x.dtype)


def _check_iou_options(kind: str, mode: str) -> None:
    check_one_of("kind", kind, ROTATED_IOU_KINDS)
    check_one_of("mode", mode, ("linear", "log"))
    if mode == "log" and kind != "iou":
        raise ValueError(f"mode='log' is the log of the IoU itself; it needs kind='iou', got kind={kind!r}")


@_docs
def rotated_iou_loss(
    input: Tensor,
    target: Tensor,
    *,
    kind: Literal["iou", "giou", "diou"] = "iou",
    mode: Literal["linear", "log"] = "linear",
    eps: float | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Rotated IoU loss by exact polygon clipping: :math:`1 - \mathrm{IoU}` (GIoU, DIoU) or :math:`-\ln\mathrm{IoU}`.

    The overlap of two rotated rectangles, computed exactly and differentiably (see
    :func:`losskit.boxes.rotated_box_iou`), as the objective. Unlike the Gaussian stand-ins
    (:func:`probiou_loss`, :func:`gwd_loss`, :func:`kld_loss`) it is the evaluation metric itself;
    like the axis-aligned IoU loss it is flat for boxes that do not overlap, which GIoU (convex
    hull) and DIoU (centre distance over the hull's diameter) fix.

    .. math::

        \ell = 1 - \mathrm{IoU} + P \;|\; -\ln \max(\mathrm{IoU}, \varepsilon), \qquad
        P_{iou} = 0, \quad P_{giou} = \frac{|H| - |A \cup B|}{|H|}, \quad P_{diou} = \frac{\rho^2}{d^2}.

    Args:
        input: Predicted rotated boxes ``(cx, cy, w, h, angle)``, angle in radians, shape ``(..., 5)``.
        target: Target rotated boxes, same shape.
        kind: ``"iou"`` (the default), ``"giou"`` or ``"diou"``.
        mode: ``"linear"`` (the default, :math:`1 - \mathrm{IoU}`) or ``"log"`` (:math:`-\ln\mathrm{IoU}`,
            mmrotate's default, ``kind="iou"`` only).
        eps: Degenerate threshold and the log mode's floor of the IoU; ``None`` picks
            :func:`losskit.boxes.default_eps` (mmrotate: 1e-6).
{reduction_args}

    Shape:
        ``(..., 5)`` in; ``"none"`` returns ``(...)``, one loss per box.

    Returns:
        The loss, in ``input``'s dtype (the geometry runs in float64).

    Raises:
        ValueError: For a bad ``kind``, ``mode``, ``reduction`` or shape, or (value checks) a
            negative width or height, NaN/inf coordinates, or a non-finite angle (naming the row).

    Examples:
        >>> import math, torch, losskit
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0, math.pi / 4]])
        >>> target = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]])  # IoU = 1 / sqrt 2 (an octagon)
        >>> losskit.rotated_iou_loss(pred, target), losskit.rotated_iou_loss(pred, target, mode="log")
        (tensor(0.2929), tensor(0.3466))

    References:
        Zhou et al., "IoU Loss for 2D/3D Object Detection", 3DV 2019; mmrotate ``RotatedIoULoss``
        (modes linear and log, ``eps=1e-6``).
    """
    _check_iou_options(kind, mode)
    x, t, eps = _prepare_rotated(input, target, "xywhr", eps, reduction, normalizer)
    loss = rowwise_loss(lambda x, t: _iou_loss(x, t, "xywhr", kind, mode, eps), x, t)
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


@_docs
def rotated_iou_3d_loss(
    input: Tensor,
    target: Tensor,
    *,
    kind: Literal["iou", "giou", "diou"] = "giou",
    eps: float | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Rotated 3-D IoU loss of boxes with yaw ``(x, y, z, w, l, h, yaw)``: :math:`1 - \mathrm{GIoU}` by default.

    The exact 3-D overlap (the bird's-eye-view polygon intersection times the height overlap, see
    :func:`losskit.boxes.rotated_box_iou_3d`) for driving data (KITTI, nuScenes). GIoU encloses
    the pair in the BEV convex hull times the enclosing height, so boxes that do not overlap still
    get a gradient; DIoU penalises the 3-D centre distance over that prism's diameter.

    .. math::

        \ell = 1 - \mathrm{IoU}_{3D} + P, \qquad
        P_{giou} = \frac{|H_{bev}| h_C - |A \cup B|}{|H_{bev}| h_C}, \quad P_{diou} = \frac{\rho^2}{d^2}.

    Args:
        input: Predicted boxes, shape ``(..., 7)``: centre, width, length (along the heading),
            height, yaw about +z.
        target: Target boxes, same shape.
        kind: ``"giou"`` (the default), ``"diou"`` or ``"iou"``.
        eps: Degenerate threshold; ``None`` picks :func:`losskit.boxes.default_eps`.
{reduction_args}

    Shape:
        ``(..., 7)`` in; ``"none"`` returns ``(...)``.

    Returns:
        The loss, in ``input``'s dtype (the geometry runs in float64).

    Raises:
        ValueError: For a bad ``kind``, ``reduction`` or shape, or (value checks) a negative
            size, NaN/inf coordinates, or a non-finite yaw (naming the row).

    Examples:
        >>> import torch, losskit
        >>> pred = torch.tensor([[0.0, 0.0, 0.0, 2.0, 4.0, 2.0, 0.0]])
        >>> target = torch.tensor([[0.0, 0.0, 1.0, 2.0, 4.0, 2.0, 0.0]])  # half the height shared: IoU 1/3
        >>> losskit.rotated_iou_3d_loss(pred, target)  # hull 2 x 4 x 3 = union: GIoU = IoU
        tensor(0.6667)

    References:
        Zhou et al., "IoU Loss for 2D/3D Object Detection", 3DV 2019; Rezatofighi et al., CVPR
        2019 (GIoU); Zheng et al., AAAI 2020 (DIoU).
    """
    check_one_of("kind", kind, ROTATED_IOU_KINDS)
    x, t, eps = _prepare_rotated(input, target, "xyzwlhr", eps, reduction, normalizer)
    loss = rowwise_loss(lambda x, t: _iou_loss(x, t, "xyzwlhr", kind, "linear", eps), x, t)
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


# --- Gaussian losses ---------------------------------------------------------------------------


def _pair_frame(x: Tensor, t: Tensor) -> tuple[Tensor, ...]:
    """Half sides ``ap, bp, at, bt`` (clamped as mmrotate), the centre offset ``(dx, dy)`` (target
    minus prediction) and ``cos^2``, ``sin^2`` of the angle between the boxes."""
    ap, bp = (x[..., 2:4].clamp_min(_MIN_SIDE) / 2).unbind(-1)
    at, bt = (t[..., 2:4].clamp_min(_MIN_SIDE) / 2).unbind(-1)
    dx, dy = (t[..., 0] - x[..., 0]), (t[..., 1] - x[..., 1])
    # The turn in float64, where the difference of two float32 angles is exact: a pair a quarter
    # turn apart (a wide box against the same box described as tall) needs cos^2 of it, about the
    # square of the small remainder, which float32's rounding of ~pi/2 would swamp.
    turn = t[..., 4].double() - x[..., 4].double()
    return ap, bp, at, bt, dx, dy, torch.cos(turn).square().to(x.dtype), torch.sin(turn).square().to(x.dtype)


def _postprocess(distance: Tensor, fun: str, tau: float) -> Tensor:
    if fun == "log1p":
        distance = torch.log1p(distance)
    elif fun == "sqrt":
        distance = safe_sqrt(distance)
    # 1 - 1 / (tau + f) as one fraction: the difference keeps no digits of a small loss at tau = 1
    return (tau - 1 + distance) / (tau + distance) if tau >= 1 else distance


def _check_gaussian_options(fun: str, tau: float, alpha: float) -> tuple[float, float]:
    check_one_of("fun", fun, _FUNS)
    tau = check_number("tau", tau, low=0.0)
    if 0 < tau < 1:
        raise ValueError(f"tau must be 0 (no transform) or at least 1 (1 - 1 / (tau + f(d))), got {tau}; "
                         "mmrotate ignores values in between")
    return tau, check_number("alpha", alpha, low=0.0, low_open=True)


def _bures_squared(ap: Tensor, bp: Tensor, at: Tensor, bt: Tensor, cos2: Tensor, sin2: Tensor) -> Tensor:
    r"""The covariance part of the 2-Wasserstein distance,
    :math:`\operatorname{tr}(\Sigma_p + \Sigma_t - 2(\Sigma_p^{1/2}\Sigma_t\Sigma_p^{1/2})^{1/2})`.

    With semi-axes :math:`a, b` and the angle :math:`\theta` between the boxes the trace of the
    root is :math:`n = \sqrt{c^2 S_1^2 + s^2 S_2^2}`, :math:`S_1 = a_p a_t + b_p b_t`,
    :math:`S_2 = a_p b_t + b_p a_t`, and :math:`S_1^2 - S_2^2 = K = (a_p - b_p)(a_t - b_t)(a_p + b_p)(a_t + b_t)`,
    so the distance is :math:`(a_p - a_t)^2 + (b_p - b_t)^2 + 2 s^2 K / (S_1 + n)` when
    :math:`K \ge 0` and :math:`(a_p - b_t)^2 + (b_p - a_t)^2 - 2 c^2 K / (S_2 + n)` otherwise: both
    sums of non-negative terms, exact for close boxes.
    """
    s1, s2 = ap * at + bp * bt, ap * bt + bp * at
    k = (ap - bp) * (at - bt) * (ap + bp) * (at + bt)
    root = torch.sqrt(cos2 * s1 * s1 + sin2 * s2 * s2)
    same = (ap - at).square() + (bp - bt).square() + 2 * sin2 * k / (s1 + root)
    crossed = (ap - bt).square() + (bp - at).square() - 2 * cos2 * k / (s2 + root)
    return torch.where(k >= 0, same, crossed)


@_docs
def gwd_loss(
    input: Tensor,
    target: Tensor,
    *,
    fun: Literal["log1p", "sqrt", "none"] = "log1p",
    tau: float = 0.0,
    alpha: float = 1.0,
    normalize: bool = True,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Gaussian Wasserstein Distance loss of rotated boxes (GWD).

    Both boxes become Gaussians (see the module docstring); the 2-Wasserstein distance between
    them is smooth in the angle, has no boundary discontinuity at :math:`\pm\pi/2`, and is
    :math:`\pi`-periodic in each angle, so it trains angle regression without the square-like
    box problem. mmrotate normalises it by the boxes' sizes and passes it through
    :math:`\operatorname{log1p}`:

    .. math::

        d^2 = \|\mu_p - \mu_t\|^2 + \alpha^2 \operatorname{tr}\big(\Sigma_p + \Sigma_t
            - 2(\Sigma_p^{1/2}\Sigma_t\Sigma_p^{1/2})^{1/2}\big), \qquad
        d_{norm} = \frac{d}{2 (\det\Sigma_p \det\Sigma_t)^{1/8}}, \qquad \ell = f(d_{norm}).

    Args:
        input: Predicted rotated boxes ``(cx, cy, w, h, angle)``, shape ``(..., 5)``.
        target: Target rotated boxes, same shape.
        fun: The post-processing :math:`f`: ``"log1p"`` (the default), ``"sqrt"`` or ``"none"``.
        tau: 0 (no transform, mmrotate ``GDLoss``'s default) or :math:`\tau \ge 1` for
            :math:`1 - 1/(\tau + f(d))`.
        alpha: Weight :math:`\alpha > 0` of the covariance term.
        normalize: Divide the distance by :math:`2 (\det\Sigma_p\det\Sigma_t)^{1/8}` (mmrotate's default).
{reduction_args}

    Shape:
        ``(..., 5)`` in; ``"none"`` returns ``(...)``.

    Returns:
        The loss, in ``input``'s dtype.

    Raises:
        ValueError: For a bad option, ``reduction`` or shape, or (value checks) a negative width
            or height, NaN/inf coordinates, or a non-finite angle (naming the row).

    Examples:
        >>> import torch, losskit
        >>> pred = torch.tensor([[3.0, 4.0, 2.0, 2.0, 0.0]])
        >>> target = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.3]])  # same square: d = 5, scale 2
        >>> losskit.gwd_loss(pred, target)  # log1p(5 / 2)
        tensor(1.2528)

    References:
        Yang et al., "Rethinking Rotated Object Detection with Gaussian Wasserstein Distance
        Loss", ICML 2021; mmrotate ``GDLoss(loss_type="gwd")`` (normalisation, post-processing).
    """
    tau, alpha = _check_gaussian_options(fun, tau, alpha)
    check_bool("normalize", normalize)
    x, t, _ = _prepare_rotated(input, target, "xywhr", None, reduction, normalizer)

    def per_box(x: Tensor, t: Tensor) -> Tensor:
        ap, bp, at, bt, dx, dy, cos2, sin2 = _pair_frame(x, t)
        squared = dx * dx + dy * dy + alpha * alpha * _bures_squared(ap, bp, at, bt, cos2, sin2)
        distance = safe_sqrt(squared)
        if normalize:  # det(Sigma) = (a b)^2, so (det_p det_t)^(1/8) = (ap bp at bt)^(1/4)
            distance = distance / (2 * (ap * bp * at * bt).sqrt().sqrt())
        return _postprocess(distance, fun, tau)

    return reduce_for(rowwise_loss(per_box, x, t), input, target, reduction, weight=weight, normalizer=normalizer)


# u - log1p(u) = sum_{k>=2} (-u)^k / k: the series for |u| <= 0.1 (16 terms: 1e-17 relative),
# where the difference itself keeps few digits.
_SERIES_TERMS = 16
_SERIES_BOUND = 0.1


def _ratio_minus_log(u: Tensor) -> Tensor:
    r""":math:`x - 1 - \ln x` at :math:`x = 1 + u` (``u > -1``), exact near :math:`x = 1`."""
    small = u.abs() <= _SERIES_BOUND
    v = torch.where(small, u, 0.0)
    series = torch.zeros_like(v)
    for k in range(_SERIES_TERMS + 1, 1, -1):  # Horner: sum_k (-1)^k v^(k-2) / k
        series = series * v + (-1) ** k / k
    direct = torch.where(small, 1.0, u)
    return torch.where(small, v * v * series, direct - torch.log1p(direct))


def _square_ratio_excess(num: Tensor, den: Tensor) -> Tensor:
    """``num^2 / den^2 - 1`` from the difference of the sides."""
    return (num - den) * (num + den) / (den * den)


@_docs
def kld_loss(
    input: Tensor,
    target: Tensor,
    *,
    fun: Literal["log1p", "sqrt", "none"] = "log1p",
    tau: float = 0.0,
    alpha: float = 1.0,
    sqrt: bool = True,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Kullback-Leibler Divergence loss of rotated boxes (KLD).

    The KL divergence of the target's Gaussian from the prediction's. Its centre term is the
    offset measured in the prediction's own axes (a long box is pulled along its short side
    harder), and its shape terms are scale-invariant: the loss adapts to the box's size and
    aspect, which GWD does not.

    .. math::

        D = \frac{1}{2\alpha^2}(\mu_p - \mu_t)^\top \Sigma_p^{-1} (\mu_p - \mu_t)
            + \frac12\Big(\operatorname{tr}(\Sigma_p^{-1}\Sigma_t) + \ln\frac{\det\Sigma_p}{\det\Sigma_t} - 2\Big),
        \qquad \ell = f\big(\sqrt{D}\big) \text{ (or } f(D) \text{ with } \texttt{sqrt=False}).

    In the prediction's frame the shape part is
    :math:`c^2[\varphi(a_t^2/a_p^2) + \varphi(b_t^2/b_p^2)] + s^2[\varphi(a_t^2/b_p^2) + \varphi(b_t^2/a_p^2)]`
    with :math:`\varphi(x) = x - 1 - \ln x \ge 0`, computed so (exact near the target). The square
    root has a zero gradient at :math:`D = 0`.

    Args:
        input: Predicted rotated boxes ``(cx, cy, w, h, angle)``, shape ``(..., 5)``.
        target: Target rotated boxes, same shape.
        fun: The post-processing :math:`f`: ``"log1p"`` (the default), ``"sqrt"`` or ``"none"``.
        tau: 0 (no transform, mmrotate ``GDLoss``'s default) or :math:`\tau \ge 1` (mmrotate's KLD
            configs use 1).
        alpha: Divides the centre term by :math:`\alpha^2` (:math:`\alpha > 0`).
        sqrt: Take :math:`\sqrt{D}` before :math:`f` (mmrotate's default).
{reduction_args}

    Shape:
        ``(..., 5)`` in; ``"none"`` returns ``(...)``.

    Returns:
        The loss, in ``input``'s dtype.

    Raises:
        ValueError: For a bad option, ``reduction`` or shape, or (value checks) a negative width
            or height, NaN/inf coordinates, or a non-finite angle (naming the row).

    Examples:
        >>> import torch, losskit
        >>> pred = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0]])
        >>> target = torch.tensor([[2.0, 0.0, 4.0, 2.0, 0.0]])  # D = 4 / (2 * 4) = 0.5
        >>> losskit.kld_loss(pred, target, sqrt=False, fun="none")
        tensor(0.5000)

    References:
        Yang et al., "Learning High-Precision Bounding Box for Rotated Object Detection via
        Kullback-Leibler Divergence", NeurIPS 2021; mmrotate ``GDLoss(loss_type="kld")``.
    """
    tau, alpha = _check_gaussian_options(fun, tau, alpha)
    check_bool("sqrt", sqrt)
    x, t, _ = _prepare_rotated(input, target, "xywhr", None, reduction, normalizer)

    def per_box(x: Tensor, t: Tensor) -> Tensor:
        ap, bp, at, bt, dx, dy, cos2, sin2 = _pair_frame(x, t)
        cos, sin = torch.cos(x[..., 4]), torch.sin(x[..., 4])
        along, across = dx * cos + dy * sin, dy * cos - dx * sin  # the offset in the prediction's axes
        centre = (along / ap).square() + (across / bp).square()
        phi = _ratio_minus_log
        shape = (cos2 * (phi(_square_ratio_excess(at, ap)) + phi(_square_ratio_excess(bt, bp)))
                 + sin2 * (phi(_square_ratio_excess(at, bp)) + phi(_square_ratio_excess(bt, ap))))
        distance = (centre / (alpha * alpha) + shape) / 2
        return _postprocess(safe_sqrt(distance) if sqrt else distance, fun, tau)

    return reduce_for(rowwise_loss(per_box, x, t), input, target, reduction, weight=weight, normalizer=normalizer)


@_docs
def kfiou_loss(
    input: Tensor,
    target: Tensor,
    *,
    fun: Literal["none", "ln", "exp"] = "none",
    beta: float = 1.0 / 9.0,
    eps: float = 1e-6,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""KFIoU loss of rotated boxes: a smooth-L1 centre term plus one minus the Kalman-filter IoU.

    The overlap of the two Gaussians is taken as their product (a Kalman update): its covariance
    :math:`\Sigma = \Sigma_p - K\Sigma_p`, :math:`K = \Sigma_p(\Sigma_p + \Sigma_t)^{-1}`, and a
    Gaussian's "volume" :math:`V = 4\sqrt{\det\Sigma}` (the box's area for a box's Gaussian) give
    an IoU-like ratio whose trend follows the rotated IoU without polygon clipping:

    .. math::

        \mathrm{KFIoU} = \frac{V}{V_p + V_t - V + \varepsilon}, \qquad
        V = 4\sqrt{\frac{\det\Sigma_p\det\Sigma_t}{\det(\Sigma_p + \Sigma_t)}}, \qquad
        \ell = \sum_{x, y} \operatorname{smooth}_{\ell_1, \beta}(\mu_p - \mu_t) + g(\mathrm{KFIoU}),

    with :math:`g(k) = 1 - k` (``"none"``), :math:`-\ln(k + \varepsilon)` (``"ln"``) or
    :math:`e^{1 - k} - 1` (``"exp"``). KFIoU is at most 1/3 (identical boxes: :math:`V = V_p/2`),
    so the loss of a perfect prediction is :math:`g(1/3)`, 2/3 for ``"none"``, as in mmrotate: only
    its gradient matters. mmrotate applies the centre term to the *encoded* offsets of its box
    coder and the Gaussian term to the decoded boxes; here both use the boxes given, so pass
    centres in the units the smooth-L1 ``beta`` is meant for (or scale ``beta``).

    Args:
        input: Predicted rotated boxes ``(cx, cy, w, h, angle)``, shape ``(..., 5)``.
        target: Target rotated boxes, same shape.
        fun: ``"none"`` (the default, mmrotate ``KFLoss``), ``"ln"`` or ``"exp"``.
        beta: The smooth-L1 threshold :math:`\beta > 0` of the centre term (mmrotate: 1/9).
        eps: :math:`\varepsilon \ge 0` of the ratio and the logarithm (mmrotate: 1e-6).
{reduction_args}

    Shape:
        ``(..., 5)`` in; ``"none"`` returns ``(...)``.

    Returns:
        The loss, in ``input``'s dtype.

    Raises:
        ValueError: For a bad option, ``reduction`` or shape, or (value checks) a negative width
            or height, NaN/inf coordinates, or a non-finite angle (naming the row).

    Examples:
        >>> import torch, losskit
        >>> box = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.3]])
        >>> losskit.kfiou_loss(box, box, eps=0.0)  # KFIoU = 1/3 at the target
        tensor(0.6667)

    References:
        Yang et al., "The KFIoU Loss for Rotated Object Detection", ICLR 2023; mmrotate ``KFLoss``
        (``beta=1/9``, ``eps=1e-6``, the three functions).
    """
    check_one_of("fun", fun, ("none", "ln", "exp"))
    beta = check_number("beta", beta, low=0.0, low_open=True)
    eps = check_number("eps", eps, low=0.0)
    x, t, _ = _prepare_rotated(input, target, "xywhr", None, reduction, normalizer)

    def per_box(x: Tensor, t: Tensor) -> Tensor:
        ap, bp, at, bt, dx, dy, cos2, sin2 = _pair_frame(x, t)
        diff = torch.stack((dx, dy), -1).abs()
        centre = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta).sum(-1)
        # det(Sp + St) in the prediction's frame: det Sp + det St + tr(adj(Sp) St), all terms >= 0
        ap2, bp2, at2, bt2 = ap * ap, bp * bp, at * at, bt * bt
        det_sum = (ap2 * bp2 + at2 * bt2 + cos2 * (bp2 * at2 + ap2 * bt2) + sin2 * (bp2 * bt2 + ap2 * at2))
        overlap = 4 * ap * bp * at * bt / torch.sqrt(det_sum)
        kf = overlap / (4 * ap * bp + 4 * at * bt - overlap + eps)
        if fun == "ln":
            return centre - torch.log(kf + eps)
        return centre + (torch.expm1(1 - kf) if fun == "exp" else 1 - kf)

    return reduce_for(rowwise_loss(per_box, x, t), input, target, reduction, weight=weight, normalizer=normalizer)
