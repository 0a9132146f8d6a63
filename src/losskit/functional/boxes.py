r"""Box regression losses: the IoU family (IoU, GIoU, DIoU, CIoU, Focal-EIoU, SIoU, Wise-IoU), NWD,
ProbIoU for rotated boxes and GIoU for 3-D boxes.

Every loss takes predicted boxes ``input`` and target boxes ``target`` of the same shape
``(..., 4)`` (``(..., 5)`` rotated, ``(..., 6)`` 3-D), compares box ``i`` with box ``i`` and returns
one value per box (``reduction="none"`` gives ``input.shape[:-1]``); ``weight`` is a per-box weight.
The geometry (formats, pairwise vs aligned, the ``eps`` rule for degenerate boxes, the dtype
policy) is :mod:`losskit.boxes`, shared with :func:`losskit.boxes.box_iou`, so every loss here is
exactly ``1 -`` the matching similarity there (plus its focusing factor where it has one).

Peer conventions and how to reproduce them:

====================================== =========================================================
peer                                   losskit
====================================== =========================================================
mmdetection ``IoULoss`` (log mode)     ``iou_loss(mode="log", eps=1e-6)``
mmdetection ``CIoULoss``               ``ciou_loss(alpha_gate=0.5)`` (mmdet also clamps CIoU to
                                       [-1, 1]; only far-apart boxes of very different shapes
                                       reach below -1)
torchvision / Ultralytics CIoU         ``ciou_loss()`` (alpha without gradient, ungated)
mmdetection ``SIoULoss(neg_gamma=True)`` ``siou_loss()`` (mmdet's default ``neg_gamma=False``
                                       flips the exponent's sign, so its distance cost is <= 0)
Ultralytics rotated box loss           ``probiou_loss()`` (1 - ProbIoU, Hellinger form)
MONAI ``BoxGIoULoss`` (3-D)            ``giou_3d_loss()``
====================================== =========================================================

mmdetection's ``EIoULoss`` is a different, smooth-L1-like "extended IoU"; :func:`eiou_loss` is
the Focal-EIoU of Zhang et al.

**Non-finite boxes.** While value checks are on, a NaN or infinite coordinate in ``input`` or
``target`` raises a ``ValueError`` naming it (in the same device sync as the ``x2 >= x1`` check).
The result alone cannot tell: these losses are bounded (NWD and ProbIoU saturate at 1), so an
infinite box can give a finite loss with a NaN gradient. With checks off a NaN coordinate gives a
NaN loss, never 0.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from losskit._core.checks import (
    check_bool,
    check_floating,
    check_number,
    check_one_of,
    check_positive_values,
    check_same_shape,
    check_tensor,
)
from losskit._core.docs import shared_docs
from losskit._core.iou_grad import IoUSpec, iou_loss_and_grad
from losskit._core.numerics import upcast
from losskit._core.reduction import Reduction, check_reduction, reduce_for
from losskit._core.rowwise import rowwise_loss
from losskit.boxes import (
    _WIDTH,
    AXIS_ALIGNED_FORMATS,
    _check_fmt,
    _resolve_eps,
    _to_xyxy,
    bhattacharyya,
    check_boxes,
    hellinger,
    iou_family_loss,
    pair_geometry,
    ratio,
    safe_sqrt,
)

_REDUCTION_ARGS = """
        weight: Per-box weights broadcastable to ``input.shape[:-1]``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``; empty input gives 0 with a gradient.
        normalizer: With ``"mean"``, divide the weighted sum by this instead of the weight sum.
"""

_docs = shared_docs(
    reduction_args=_REDUCTION_ARGS,
    box_args_shape_returns="""
        fmt: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``.
        eps: Degenerate threshold (see :mod:`losskit.boxes`); ``None`` picks the dtype's default.
""" + _REDUCTION_ARGS.strip("\n") + """

    Shape:
        ``(..., 4)`` in; ``"none"`` returns ``(...)``.

    Returns:
        The loss, in ``input``'s dtype.
""",
)

__all__ = [
    "ciou_loss",
    "diou_loss",
    "eiou_loss",
    "giou_3d_loss",
    "giou_loss",
    "iou_loss",
    "nwd_loss",
    "probiou_loss",
    "siou_loss",
    "wiou_loss",
]


def _prepare(input: Tensor, target: Tensor, fmt: str, eps: float | None, reduction: str,
             normalizer: object, formats: tuple[str, ...] = AXIS_ALIGNED_FORMATS) -> tuple[Tensor, Tensor, float]:
    """Validate a box loss's inputs; return both in corner form (compute dtype) and the resolved eps."""
    check_reduction(reduction, normalizer)
    check_floating("input", input)
    check_tensor("target", target)
    check_same_shape("input", input, "target", target)
    fmt = _check_fmt(fmt, formats)
    width = _WIDTH[fmt]
    if input.dim() == 0 or input.shape[-1] != width:
        raise ValueError(f"input must hold boxes of shape (..., {width}) for fmt={fmt!r}, got shape "
                         f"{tuple(input.shape)}")
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"target must hold real box coordinates, got dtype {target.dtype}")
    check_boxes("input", input, fmt, finite=True)
    check_boxes("target", target, fmt, finite=True)
    x = upcast(input)
    t = target.to(x.dtype)
    if fmt in ("xywh", "cxcywh"):
        # Every loss here is invariant to moving both boxes together: put the target's anchor
        # point at the origin first, so the corners come out of the conversion without the
        # rounding of large coordinates (their differences, which decide a close pair's loss, lost
        # 1e-2 of a near-converged DIoU in float32 at 600 pixels).
        anchor = t[..., :2].detach()
        x = torch.cat([x[..., :2] - anchor, x[..., 2:]], -1)
        t = torch.cat([t[..., :2] - anchor, t[..., 2:]], -1)
    if fmt in AXIS_ALIGNED_FORMATS:
        x, t = _to_xyxy(x, fmt), _to_xyxy(t, fmt)
    return x, t, _resolve_eps(eps, input.dtype)


def _closed_form(kind: str, eps: float, **options):
    """The loss and gradient of ``kind`` in closed form (see :mod:`losskit._core.iou_grad`)."""
    spec = IoUSpec(kind, eps, **options)
    return lambda x, t: iou_loss_and_grad(x, t, spec)


@_docs
def iou_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: Literal["linear", "square", "log"] = "linear",
    fmt: str = "xyxy",
    eps: float | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""IoU loss of aligned box pairs: :math:`1 - \mathrm{IoU}`, :math:`1 - \mathrm{IoU}^2` or :math:`-\ln\mathrm{IoU}`.

    The overlap itself as the objective: scale-invariant, unlike an L1 loss on coordinates, but
    flat (zero gradient) for boxes that do not overlap; GIoU, DIoU and CIoU fix that.

    .. math::

        \mathrm{IoU} = \frac{|B \cap B^{gt}|}{|B \cup B^{gt}|}, \qquad
        \ell = 1 - \mathrm{IoU} \;|\; 1 - \mathrm{IoU}^2 \;|\; -\ln \max(\mathrm{IoU}, \varepsilon).

    Args:
        input: Predicted boxes, shape ``(..., 4)``.
        target: Target boxes, same shape.
        mode: ``"linear"`` (the default: the papers' :math:`1 - \mathrm{IoU}`), ``"square"`` or
            ``"log"`` (UnitBox, mmdetection's default).
        fmt: ``"xyxy"``, ``"xywh"`` (x1, y1, w, h as COCO) or ``"cxcywh"``.
        eps: Degenerate threshold, and the floor of the IoU in log mode (loss at most
            :math:`-\ln \varepsilon`); ``None`` picks :func:`losskit.boxes.default_eps` (1e-7 for
            float32 and float64, 1e-6 for float16 and bfloat16).
{reduction_args}

    Shape:
        ``input`` and ``target`` ``(..., 4)``; ``"none"`` returns ``(...)``, one loss per box.

    Returns:
        The loss, in ``input``'s dtype.

    Raises:
        ValueError: For a bad ``mode``, ``fmt``, ``reduction`` or shape, or (value checks) boxes
            with ``x2 < x1`` or ``y2 < y1``, NaN/inf coordinates and non-finite results.

    Examples:
        >>> import torch, losskit
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> target = torch.tensor([[0.0, 0.0, 1.0, 1.0]])  # a quarter of pred: IoU 0.25
        >>> losskit.iou_loss(pred, target), losskit.iou_loss(pred, target, mode="log")  # 0.75, ln 4
        (tensor(0.7500), tensor(1.3863))

    References:
        Yu et al., "UnitBox: An Advanced Object Detection Network", ACM MM 2016 (log form);
        mmdetection ``IoULoss`` (the three modes; eps 1e-6 there).
    """
    check_one_of("mode", mode, ("linear", "square", "log"))
    x, t, eps = _prepare(input, target, fmt, eps, reduction, normalizer)

    def per_box(x: Tensor, t: Tensor) -> Tensor:
        g = pair_geometry(x, t, eps, kind="iou", exact_miss=True)
        if mode == "linear":
            return g.miss
        if mode == "square":  # 1 - IoU^2 = (1 - IoU)(1 + IoU)
            return g.miss * (1 + g.iou)
        # -log IoU = -log1p(-(1 - IoU)), exact for IoU near 1
        return torch.where(g.miss < 0.5, -torch.log1p(-g.miss.clamp_max(0.5)),
                           -torch.log(g.iou.clamp_min(max(eps, torch.finfo(g.iou.dtype).tiny))))

    loss = rowwise_loss(per_box, x, t, _closed_form("iou", eps, mode=mode))
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


@_docs
def giou_loss(
    input: Tensor,
    target: Tensor,
    *,
    fmt: str = "xyxy",
    eps: float | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Generalized IoU loss: :math:`1 - \mathrm{GIoU}`, in [0, 2).

    Adds to :math:`1 - \mathrm{IoU}` the part of the smallest enclosing box :math:`C` not covered
    by the union, so boxes that do not overlap still get a gradient pulling them together.

    .. math::

        \ell = 1 - \mathrm{IoU} + \frac{|C| - |B \cup B^{gt}|}{|C|}.

    Args:
        input: Predicted boxes, shape ``(..., 4)``.
        target: Target boxes, same shape.
{box_args_shape_returns}

    Raises:
        ValueError: For a bad ``fmt``, ``reduction`` or shape, or (value check) inverted boxes or
            NaN/inf coordinates.

    Examples:
        >>> import torch, losskit
        >>> pred = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> target = torch.tensor([[1.0, 1.0, 2.0, 2.0]])  # diagonal neighbours: GIoU = 0 - (4 - 2) / 4
        >>> losskit.giou_loss(pred, target)
        tensor(1.5000)

    References:
        Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019; torchvision
        ``generalized_box_iou_loss`` (equal up to its ``eps`` added to denominators).
    """
    x, t, eps = _prepare(input, target, fmt, eps, reduction, normalizer)
    loss = rowwise_loss(lambda x, t: iou_family_loss(pair_geometry(x, t, eps, kind="giou", exact_miss=True), "giou",
                                                     eps), x, t, _closed_form("giou", eps))
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


@_docs
def diou_loss(
    input: Tensor,
    target: Tensor,
    *,
    fmt: str = "xyxy",
    eps: float | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Distance-IoU loss: :math:`1 - \mathrm{IoU} + \rho^2 / c^2`, in [0, 2).

    Penalises the distance between the centres, normalised by the enclosing box's diagonal, which
    moves non-overlapping boxes directly towards the target (GIoU first grows them).

    .. math::

        \ell = 1 - \mathrm{IoU} + \frac{\rho^2(b, b^{gt})}{c^2}.

    Args:
        input: Predicted boxes, shape ``(..., 4)``.
        target: Target boxes, same shape.
{box_args_shape_returns}

    Raises:
        ValueError: For a bad ``fmt``, ``reduction`` or shape, or (value check) inverted boxes or
            NaN/inf coordinates.

    Examples:
        >>> import torch, losskit
        >>> pred = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> target = torch.tensor([[1.0, 1.0, 2.0, 2.0]])  # 1 - 0 + rho^2 / c^2 = 1 + 2 / 8
        >>> losskit.diou_loss(pred, target)
        tensor(1.2500)

    References:
        Zheng et al., "Distance-IoU Loss: Faster and Better Learning for Bounding Box Regression",
        AAAI 2020; torchvision ``distance_box_iou_loss``.
    """
    x, t, eps = _prepare(input, target, fmt, eps, reduction, normalizer)
    loss = rowwise_loss(lambda x, t: iou_family_loss(pair_geometry(x, t, eps, exact_miss=True), "diou", eps), x, t,
                        _closed_form("diou", eps))
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


@_docs
def ciou_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha_gate: float | None = None,
    alpha_no_grad: bool = True,
    fmt: str = "xyxy",
    eps: float | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Complete-IoU loss: DIoU loss plus an aspect-ratio term; the box loss of YOLOv8 to YOLO26.

    DIoU matches overlap and centres; CIoU also matches the shape, through the difference of the
    boxes' angles :math:`\arctan(w/h)`, weighted by :math:`\alpha`, which grows as the overlap does
    (shape matters once the boxes overlap).

    .. math::

        \ell = 1 - \mathrm{IoU} + \frac{\rho^2}{c^2} + \alpha v, \qquad
        v = \frac{4}{\pi^2}\Big(\arctan\frac{w^{gt}}{h^{gt}} - \arctan\frac{w}{h}\Big)^2, \qquad
        \alpha = \frac{v}{1 - \mathrm{IoU} + v}.

    **Gradient policy.** With ``alpha_no_grad=True`` (the default) :math:`\alpha` is a constant
    under autograd, as in torchvision, Ultralytics, mmdetection and the authors' code; the
    gradient of :math:`v` is the true one, as in torchvision, Ultralytics and mmdetection. (The
    paper also drops the factor :math:`1/(w^2 + h^2)` from :math:`\partial v` "for stable
    convergence", which the authors' repository implements with a surrogate term; that is not
    reproduced.)
    ``alpha_no_grad=False`` differentiates :math:`\alpha` too. ``alpha_gate=0.5`` reproduces
    mmdetection (and the official CIoU repository): :math:`\alpha = [\mathrm{IoU} > 0.5]\, v /
    (1 - \mathrm{IoU} + v)`, no shape term while the boxes barely overlap. torchvision's
    ``complete_box_iou_loss`` does not pass its ``eps`` on to the DIoU part (only to
    :math:`\alpha`); that quirk is not reproduced. Identical boxes give :math:`\alpha = 0`, not the
    ``0 / 0`` of yolov5 #2376, and a zero height gives :math:`\arctan(w/0) = \pi/2`, not NaN.

    Args:
        input: Predicted boxes, shape ``(..., 4)``.
        target: Target boxes, same shape.
        alpha_gate: ``None`` (no gate) or an IoU in [0, 1]: :math:`\alpha = 0` where
            IoU <= ``alpha_gate`` (mmdetection: 0.5).
        alpha_no_grad: Treat :math:`\alpha` as a constant under autograd.
{box_args_shape_returns}

    Raises:
        ValueError: For a bad option, ``fmt``, ``reduction`` or shape, or (value check) inverted boxes or
            NaN/inf coordinates.

    Examples:
        >>> import torch, losskit
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
        >>> target = torch.tensor([[0.0, 0.0, 1.0, 2.0]])  # IoU 1/3, rho^2/c^2 = 0.5/8, v = 0.1678
        >>> losskit.ciou_loss(pred, target, reduction="none")  # 2/3 + 1/16 + v^2 / (2/3 + v)
        tensor([0.7629])
        >>> losskit.ciou_loss(pred, target, alpha_gate=0.5, reduction="none")  # IoU <= 0.5: no shape term
        tensor([0.7292])

    References:
        Zheng et al., "Distance-IoU Loss", AAAI 2020, and "Enhancing Geometric Factors in Model
        Learning and Inference for Object Detection and Instance Segmentation", IEEE TCYB 2021;
        torchvision ``complete_box_iou_loss``; mmdetection ``CIoULoss`` (gate, mmdet PR #5835).
    """
    if alpha_gate is not None:
        alpha_gate = check_number("alpha_gate", alpha_gate, low=0.0, high=1.0)
    check_bool("alpha_no_grad", alpha_no_grad)
    x, t, eps = _prepare(input, target, fmt, eps, reduction, normalizer)

    def per_box(x: Tensor, t: Tensor) -> Tensor:
        g = pair_geometry(x, t, eps, exact_miss=True)
        return iou_family_loss(g, "ciou", eps, alpha_gate=alpha_gate, alpha_no_grad=alpha_no_grad)

    loss = rowwise_loss(per_box, x, t, _closed_form("ciou", eps, alpha_gate=alpha_gate, alpha_no_grad=alpha_no_grad))
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


@_docs
def eiou_loss(
    input: Tensor,
    target: Tensor,
    *,
    gamma: float | None = None,
    fmt: str = "xyxy",
    eps: float | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Efficient-IoU loss, and with ``gamma`` the Focal-EIoU loss of Zhang et al.

    Like CIoU, but the shape term compares width and height separately, each normalised by the
    enclosing box's side, so it keeps pulling when the aspect ratios already agree. The focal form
    multiplies by :math:`\mathrm{IoU}^\gamma`, which favours the well-overlapping (high-quality)
    boxes over the many poor ones.

    .. math::

        \ell_{EIoU} = 1 - \mathrm{IoU} + \frac{\rho^2}{c^2} + \frac{(w - w^{gt})^2}{c_w^2}
            + \frac{(h - h^{gt})^2}{c_h^2}, \qquad
        \ell_{Focal\text{-}EIoU} = \mathrm{IoU}^\gamma\, \ell_{EIoU}.

    **Focal factor gradient.** :math:`\mathrm{IoU}^\gamma` is used as a per-box weight and is
    computed without gradient: the paper introduces it as a reweighting of each box's EIoU loss,
    and differentiating it would give an infinite gradient at IoU = 0 for :math:`\gamma < 1`
    (the paper's 0.5). This is not mmdetection's ``EIoULoss``, a smooth-L1-like "extended IoU".

    Args:
        input: Predicted boxes, shape ``(..., 4)``.
        target: Target boxes, same shape.
        gamma: ``None`` for plain EIoU, or :math:`\gamma \ge 0` for Focal-EIoU (paper: 0.5).
{box_args_shape_returns}

    Raises:
        ValueError: For a bad ``gamma``, ``fmt``, ``reduction`` or shape, or (value check)
            inverted boxes or NaN/inf coordinates.

    Examples:
        >>> import torch, losskit
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> target = torch.tensor([[0.0, 0.0, 1.0, 1.0]])  # 1 - 1/4 + 0.5/8 + 1/4 + 1/4
        >>> losskit.eiou_loss(pred, target)
        tensor(1.3125)
        >>> losskit.eiou_loss(pred, target, gamma=0.5)  # times sqrt(1/4)
        tensor(0.6562)

    References:
        Zhang et al., "Focal and Efficient IOU Loss for Accurate Bounding Box Regression",
        Neurocomputing 506 (2022), arXiv:2101.08158.
    """
    if gamma is not None:
        gamma = check_number("gamma", gamma, low=0.0)
    x, t, eps = _prepare(input, target, fmt, eps, reduction, normalizer)

    def per_box(x: Tensor, t: Tensor) -> Tensor:
        g = pair_geometry(x, t, eps, exact_miss=True)
        loss = iou_family_loss(g, "eiou", eps)
        return loss if gamma is None else loss * g.iou.detach().pow(gamma)

    loss = rowwise_loss(per_box, x, t, _closed_form("eiou", eps, gamma=gamma))
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


@_docs
def siou_loss(
    input: Tensor,
    target: Tensor,
    *,
    theta: float = 4.0,
    fmt: str = "xyxy",
    eps: float | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""SCYLLA-IoU loss: IoU plus distance, angle and shape costs (Gevorgyan 2022).

    The distance cost pulls the centres together along x and y, sharpened by the angle cost
    :math:`\Lambda` (largest when the centre line is diagonal, so the box first moves onto the
    nearer axis); the shape cost compares widths and heights relative to the larger one.

    .. math::

        \ell = 1 - \mathrm{IoU} + \frac{\Delta + \Omega}{2}, \qquad
        \Delta = \sum_{t=x,y} \big(1 - e^{-(2 - \Lambda)\rho_t}\big), \quad
        \rho_x = \Big(\frac{d_x}{c_w}\Big)^2, \quad
        \Lambda = 1 - 2\sin^2\Big(\arcsin\frac{|d_y|}{\sigma} - \frac{\pi}{4}\Big) = \frac{2|d_x d_y|}{\sigma^2},

        \Omega = \sum_{t=w,h} \big(1 - e^{-\omega_t}\big)^\theta, \qquad
        \omega_w = \frac{|w - w^{gt}|}{\max(w, w^{gt})},

    with :math:`d_x, d_y` the centre offsets, :math:`\sigma` their distance and :math:`c_w, c_h`
    the enclosing box's sides. The exponent has the paper's sign (:math:`\gamma = 2 - \Lambda`, the
    distance cost in [0, 2)); mmdetection reaches it with ``neg_gamma=True``. Coincident centres
    (:math:`\sigma = 0`, NaN in some implementations, YOLOv6 #417) give :math:`\Lambda = 0` and a
    finite gradient.

    Args:
        input: Predicted boxes, shape ``(..., 4)``.
        target: Target boxes, same shape.
        theta: Shape-cost exponent :math:`\theta \ge 1` (paper: 4, range 2 to 6).
{box_args_shape_returns}

    Raises:
        ValueError: For a bad ``theta``, ``fmt``, ``reduction`` or shape, or (value check)
            inverted boxes or NaN/inf coordinates.

    Examples:
        >>> import torch, losskit
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> target = torch.tensor([[1.0, 0.0, 3.0, 2.0]])  # shifted along x: Lambda 0, IoU 1/3
        >>> losskit.siou_loss(pred, target)  # 1 - 1/3 + (1 - exp(-2/9)) / 2
        tensor(0.7663)

    References:
        Gevorgyan, "SIoU Loss: More Powerful Learning for Bounding Box Regression",
        arXiv:2205.12740 (2022); mmdetection ``SIoULoss``.
    """
    theta = check_number("theta", theta, low=1.0)
    x, t, eps = _prepare(input, target, fmt, eps, reduction, normalizer)
    loss = rowwise_loss(lambda x, t: iou_family_loss(pair_geometry(x, t, eps, exact_miss=True), "siou", eps,
                                                     theta=theta), x, t)
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)


@_docs
def wiou_loss(
    input: Tensor,
    target: Tensor,
    *,
    version: Literal[1, 2, 3] = 3,
    alpha: float = 1.9,
    delta: float = 3.0,
    gamma: float = 0.5,
    iou_mean: float | Tensor | None = None,
    fmt: str = "xyxy",
    eps: float | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Wise-IoU loss (v1, v2, v3): IoU loss scaled by a centre-distance attention and a dynamic focus.

    v1 scales :math:`\mathcal{L}_{IoU} = 1 - \mathrm{IoU}` by :math:`R \in [1, e)`, which grows with
    the centre distance relative to the enclosing box (whose size is detached, so :math:`R` does
    not push the boxes apart to shrink it). v3 adds a non-monotonic focus on the "outlier degree"
    :math:`\beta`, the box's IoU loss relative to the running mean over training: boxes near the
    mean get the largest gradient gain, the easy ones (small :math:`\beta`) and the outliers (large
    :math:`\beta`, often bad labels) less. v2 is the monotonic variant :math:`\beta^\gamma`.

    .. math::

        R = \exp\Big(\frac{\rho^2}{(W_g^2 + H_g^2)^{*}}\Big), \qquad
        \mathcal{L}_{v1} = R\, \mathcal{L}_{IoU}, \qquad
        \beta = \frac{\mathcal{L}_{IoU}^{*}}{\overline{\mathcal{L}_{IoU}}}, \qquad
        \mathcal{L}_{v2} = \beta^\gamma \mathcal{L}_{v1}, \qquad
        \mathcal{L}_{v3} = \frac{\beta}{\delta \alpha^{\beta - \delta}} \mathcal{L}_{v1},

    where :math:`^{*}` means detached and :math:`\overline{\mathcal{L}_{IoU}}` is the running mean
    of the IoU loss, ``iou_mean``.

    **State.** The running mean is explicit: pass it as ``iou_mean`` (versions 2 and 3 need it;
    version 1 ignores it). :class:`losskit.WIoULoss` keeps it as the buffer ``iou_mean`` and moves it
    only in ``update()``, with the paper's momentum :math:`m = 1 - 0.05^{1/(nt)}` for :math:`n`
    batches per epoch and :math:`t` epochs (``total_steps=n*t``) or a given ``momentum``; its
    ``forward`` never changes it. Note that ``iou_mean`` is the mean of :math:`1 - \mathrm{IoU}`,
    not of the IoU.

    Args:
        input: Predicted boxes, shape ``(..., 4)``.
        target: Target boxes, same shape.
        version: 1, 2 or 3 (the default, the paper's best).
        alpha: v3's :math:`\alpha > 0` (paper: 1.9).
        delta: v3's :math:`\delta > 0`, the :math:`\beta` of gain 1 (paper: 3).
        gamma: v2's exponent :math:`\gamma > 0` (paper: 0.5).
        iou_mean: The running mean of the IoU loss (a positive number or one-element tensor);
            required for versions 2 and 3.
{box_args_shape_returns}

    Raises:
        ValueError: For a bad option, a missing ``iou_mean`` (versions 2 and 3), a bad ``fmt``,
            ``reduction`` or shape, or (value check) inverted boxes or
            NaN/inf coordinates.

    Examples:
        >>> import torch, losskit
        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> target = torch.tensor([[1.0, 0.0, 3.0, 2.0]])  # IoU 1/3, rho^2 / (W^2 + H^2) = 1 / 13
        >>> losskit.wiou_loss(pred, target, version=1)  # exp(1/13) * 2/3
        tensor(0.7200)
        >>> losskit.wiou_loss(pred, target, iou_mean=2 / 9)  # beta = 3 = delta: gain 1
        tensor(0.7200)

    References:
        Tong et al., "Wise-IoU: Bounding Box Regression Loss with Dynamic Focusing Mechanism",
        arXiv:2301.10051 (2023).
    """
    check_one_of("version", version, (1, 2, 3))
    alpha = check_number("alpha", alpha, low=0.0, low_open=True)
    delta = check_number("delta", delta, low=0.0, low_open=True)
    gamma = check_number("gamma", gamma, low=0.0, low_open=True)
    if version > 1:
        if iou_mean is None:
            raise ValueError(f"wiou_loss version {version} needs iou_mean=, the running mean of the IoU loss "
                             "1 - IoU; losskit.WIoULoss keeps it for you (see its update())")
        if isinstance(iou_mean, Tensor):
            if iou_mean.numel() != 1:
                raise ValueError(f"iou_mean must be a number or a one-element tensor, got shape "
                                 f"{tuple(iou_mean.shape)}")
            check_positive_values("iou_mean", iou_mean)
        else:
            check_number("iou_mean", iou_mean, low=0.0, low_open=True)
    x, t, eps = _prepare(input, target, fmt, eps, reduction, normalizer)
    mean = None if version == 1 else torch.as_tensor(iou_mean, device=x.device).to(x.dtype).reshape(())

    def per_box(x: Tensor, t: Tensor) -> Tensor:
        g = pair_geometry(x, t, eps, exact_miss=True)
        iou_loss_ = g.miss
        attention = torch.exp(ratio(g.offset.square().sum(-1), g.enclose.square().sum(-1).detach(), eps))
        loss = attention * iou_loss_
        if mean is None:
            return loss
        beta = iou_loss_.detach() / mean
        return loss * (beta.pow(gamma) if version == 2 else beta / (delta * alpha ** (beta - delta)))

    return reduce_for(rowwise_loss(per_box, x, t), input, target, reduction, weight=weight, normalizer=normalizer)


@_docs
def nwd_loss(
    input: Tensor,
    target: Tensor,
    *,
    constant: float = 12.8,
    fmt: str = "xyxy",
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Normalized Gaussian Wasserstein Distance loss, for tiny objects: :math:`1 - \mathrm{NWD}`.

    Each box becomes the Gaussian :math:`\mathcal{N}((c_x, c_y), \operatorname{diag}(w^2/4, h^2/4))`;
    the 2-Wasserstein distance between two such Gaussians is a plain Euclidean distance, and it
    changes smoothly even when tiny boxes do not overlap, where every IoU is 0 or jumps.

    .. math::

        W_2^2 = \Big\|\Big(c_x, c_y, \frac{w}{2}, \frac{h}{2}\Big) - \Big(c_x^{gt}, c_y^{gt},
            \frac{w^{gt}}{2}, \frac{h^{gt}}{2}\Big)\Big\|_2^2, \qquad
        \ell = 1 - \exp\Big(-\frac{\sqrt{W_2^2}}{C}\Big).

    :math:`C` has the unit of the coordinates and depends on the data set: the paper sets it to
    about the average absolute object size, 12.8 pixels for AI-TOD; set it for your data (and
    scale it with the image). Unlike the IoU losses, NWD is therefore **not** scale-invariant. Its
    square root has a zero gradient (not NaN) for identical boxes. There is no ``eps``: nothing
    here divides by a box size.

    Args:
        input: Predicted boxes, shape ``(..., 4)``.
        target: Target boxes, same shape.
        constant: :math:`C > 0`, in coordinate units (paper: 12.8 on AI-TOD).
        fmt: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``.
{reduction_args}

    Shape:
        ``(..., 4)`` in; ``"none"`` returns ``(...)``.

    Returns:
        The loss, in ``input``'s dtype.

    Raises:
        ValueError: For a bad ``constant``, ``fmt``, ``reduction`` or shape, or (value check)
            inverted boxes or NaN/inf coordinates.

    Examples:
        >>> import torch, losskit
        >>> pred = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
        >>> target = torch.tensor([[3.0, 4.0, 7.0, 8.0]])  # same size, centres 5 apart: W2 = 5
        >>> losskit.nwd_loss(pred, target, constant=5.0)  # 1 - exp(-1)
        tensor(0.6321)

    References:
        Wang et al., "A Normalized Gaussian Wasserstein Distance for Tiny Object Detection",
        arXiv:2110.13389 (2021).
    """
    constant = check_number("constant", constant, low=0.0, low_open=True)
    x, t, _ = _prepare(input, target, fmt, None, reduction, normalizer)

    def per_box(x: Tensor, t: Tensor) -> Tensor:
        # From the differences of close coordinates, which are exact, and 1 - e^-x as -expm1(-x).
        low, high = t[..., :2] - x[..., :2], t[..., 2:] - x[..., 2:]
        centres, half_sizes = (low + high) / 2, (high - low) / 2
        distance = safe_sqrt(centres.square().sum(-1) + half_sizes.square().sum(-1))
        return -torch.expm1(-distance / constant)

    return reduce_for(rowwise_loss(per_box, x, t), input, target, reduction, weight=weight, normalizer=normalizer)


@_docs
def probiou_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: Literal["hellinger", "bhattacharyya"] = "hellinger",
    eps: float | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""ProbIoU loss of rotated boxes: the Hellinger (or Bhattacharyya) distance of their Gaussians.

    Each ``xywhr`` box is the Gaussian of the uniform density on it (see
    :func:`losskit.boxes.probiou`). The Hellinger form :math:`1 - \mathrm{ProbIoU}` is bounded in
    [0, 1] like an IoU loss; the Bhattacharyya form :math:`B_D = -\ln(1 - H^2)` keeps a strong
    gradient near the target (the paper's :math:`\mathcal{L}_2`, for late training).

    .. math::

        B_D = \tfrac18 (\mu_1 - \mu_2)^\top \Sigma^{-1} (\mu_1 - \mu_2)
            + \tfrac12 \ln\frac{\det \Sigma}{\sqrt{\det\Sigma_1 \det\Sigma_2}}, \qquad
        \ell_{hellinger} = \sqrt{1 - e^{-B_D}}, \qquad \ell_{bhattacharyya} = B_D,

    with :math:`\Sigma = (\Sigma_1 + \Sigma_2)/2` and :math:`B_D` clamped to [0, 100] (Ultralytics'
    bound; beyond it both forms have a zero gradient). Boxes are always ``xywhr`` (centre, size,
    angle in radians): there is no ``fmt`` option. Identical boxes give exactly 0 (Ultralytics'
    ``eps`` inside the square root leaves about 3e-4 there); a box of area at most ``eps`` gives the
    maximum with a zero gradient.

    Args:
        input: Predicted rotated boxes ``(cx, cy, w, h, angle)``, shape ``(..., 5)``.
        target: Target rotated boxes, same shape.
        mode: ``"hellinger"`` (the default, as Ultralytics' rotated box loss) or ``"bhattacharyya"``.
        eps: Area at or below which a box counts as degenerate; ``None`` picks the dtype's default.
{reduction_args}

    Shape:
        ``(..., 5)`` in; ``"none"`` returns ``(...)``.

    Returns:
        The loss, in ``input``'s dtype.

    Raises:
        ValueError: For a bad ``mode``, ``reduction`` or shape, or (value check) a negative
            width or height, or NaN/inf coordinates.

    Examples:
        >>> import torch, losskit
        >>> pred = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0]])
        >>> target = torch.tensor([[4.0, 0.0, 4.0, 2.0, 0.0]])  # B_D = (1/8) 16 / (16/12) = 1.5
        >>> losskit.probiou_loss(pred, target), losskit.probiou_loss(pred, target, mode="bhattacharyya")
        (tensor(0.8814), tensor(1.5000))

    References:
        Llerena et al., "Gaussian Bounding Boxes and Probabilistic Intersection-over-Union for
        Object Detection", arXiv:2106.06072 (2021); Ultralytics ``RotatedBboxLoss`` (Hellinger form).
    """
    check_one_of("mode", mode, ("hellinger", "bhattacharyya"))
    x, t, eps = _prepare(input, target, "xywhr", eps, reduction, normalizer, formats=("xywhr",))

    def per_box(x: Tensor, t: Tensor) -> Tensor:
        distance = bhattacharyya(x, t, eps)
        return hellinger(distance) if mode == "hellinger" else distance

    return reduce_for(rowwise_loss(per_box, x, t), input, target, reduction, weight=weight, normalizer=normalizer)


@_docs
def giou_3d_loss(
    input: Tensor,
    target: Tensor,
    *,
    eps: float | None = None,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""GIoU loss of 3-D axis-aligned boxes ``(x1, y1, z1, x2, y2, z2)``: :math:`1 - \mathrm{GIoU}`.

    :func:`giou_loss` with volumes for areas (medical images, point clouds).

    .. math::

        \ell = 1 - \frac{|B \cap B^{gt}|}{|B \cup B^{gt}|} + \frac{|C| - |B \cup B^{gt}|}{|C|}.

    Args:
        input: Predicted boxes, shape ``(..., 6)``; always ``xyzxyz`` (no ``fmt`` option).
        target: Target boxes, same shape.
        eps: Degenerate threshold (see :mod:`losskit.boxes`); ``None`` picks the dtype's default.
{reduction_args}

    Shape:
        ``(..., 6)`` in; ``"none"`` returns ``(...)``.

    Returns:
        The loss, in ``input``'s dtype.

    Raises:
        ValueError: For a bad ``reduction`` or shape, or (value check) inverted boxes or
            NaN/inf coordinates.

    Examples:
        >>> import torch, losskit
        >>> pred = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]])
        >>> target = torch.tensor([[1.0, 1.0, 1.0, 2.0, 2.0, 2.0]])  # corner neighbours: 0 - (8 - 2) / 8
        >>> losskit.giou_3d_loss(pred, target)
        tensor(1.7500)

    References:
        Rezatofighi et al., CVPR 2019; MONAI ``BoxGIoULoss`` (2-D and 3-D boxes).
    """
    x, t, eps = _prepare(input, target, "xyzxyz", eps, reduction, normalizer, formats=("xyzxyz",))
    loss = rowwise_loss(lambda x, t: iou_family_loss(pair_geometry(x, t, eps, kind="giou", exact_miss=True), "giou",
                                                     eps), x, t, _closed_form("giou", eps))
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer)



# --- bounded IoU --------------------------------------------------------------------------------


def _smooth_l1_at(cost: Tensor, beta: float) -> Tensor:
    """Smooth L1 of a non-negative ``cost``: quadratic below ``beta`` (plain L1 with ``beta=0``)."""
    if beta == 0:
        return cost
    return torch.where(cost < beta, 0.5 * cost * cost / beta, cost - 0.5 * beta)


@_docs
def bounded_iou_loss(
    input: Tensor,
    target: Tensor,
    *,
    beta: float = 0.2,
    eps: float = 1e-3,
    fmt: str = "xyxy",
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Bounded IoU loss (Tychsen-Smith & Petersson 2018): an IoU upper bound per coordinate, smooth-L1'd.

    Each of the four box parameters is scored by the best IoU it allows with the others at the
    target's values, so every coordinate gets an IoU-shaped cost of its own:

    .. math::
        c_x = 1 - \max\Big(\frac{w_t - 2|\Delta x|}{w_t + 2|\Delta x| + \epsilon}, 0\Big), \qquad
        c_w = 1 - \min\Big(\frac{w_t}{w_p + \epsilon}, \frac{w_p}{w_t + \epsilon}\Big)

    (:math:`c_y, c_h` alike, :math:`\Delta x` the centres' offset), and
    :math:`\ell = \frac14 \sum_{k} \operatorname{smoothL1}_\beta(c_k)` with
    :math:`\operatorname{smoothL1}_\beta(c) = c^2 / (2\beta)` below :math:`\beta`, :math:`c - \beta/2`
    above. The target's sizes and centres carry no gradient (as mmdetection). Each cost is
    computed as its complement over its denominator (:math:`c_x = (4|\Delta x| + \epsilon) /
    (w_t + 2|\Delta x| + \epsilon)` where positive), from differences of close coordinates, so a
    near-converged pair keeps its digits. The unit is the mean over the four costs, so
    ``reduction="mean"`` is mmdetection's ``BoundedIoULoss`` mean over its ``(N, 4)`` elements
    (its ``"sum"`` is four times losskit's).

    Args:
        input: Predicted boxes, shape ``(..., 4)``.
        target: Target boxes, same shape.
        beta: Smooth-L1 transition :math:`\beta \ge 0` (0: plain L1).
        eps: :math:`\epsilon > 0`, added to the denominators, in coordinate units.
        fmt: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"``.
{reduction_args}

    Shape:
        ``(..., 4)`` in; ``"none"`` returns ``(...)``.

    Returns:
        The loss, in ``input``'s dtype.

    Raises:
        ValueError: For a bad ``beta``, ``eps``, ``fmt``, ``reduction`` or shape, or (value check)
            inverted boxes or NaN/inf coordinates.

    Examples:
        >>> import torch, losskit
        >>> target = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
        >>> pred = torch.tensor([[1.0, 0.0, 11.0, 10.0]])  # moved 1 in x: c_x = 4.001 / 12.001
        >>> losskit.bounded_iou_loss(pred, target)  # (0.3334 - 0.1) / 4
        tensor(0.0583)

    References:
        Tychsen-Smith and Petersson, "Improving Object Localization with Fitness NMS and Bounded
        IoU Loss", CVPR 2018. Defaults (``beta=0.2``, ``eps=1e-3``) follow mmdetection
        ``BoundedIoULoss``.
    """
    check_number("beta", beta, low=0.0)
    eps = check_number("eps", eps, low=0.0, low_open=True)
    x, t, _ = _prepare(input, target, fmt, None, reduction, normalizer)

    def per_box(x: Tensor, t: Tensor) -> Tensor:
        t = t.detach()
        low, high = t[..., :2] - x[..., :2], t[..., 2:] - x[..., 2:]  # exact for close coordinates
        offset = ((low + high) / 2).abs()  # |target centre - predicted centre|
        target_size = t[..., 2:] - t[..., :2]
        size_gap = low - high  # predicted size - target size, exact
        predicted_size = target_size + size_gap
        span = target_size + 2 * offset + eps
        centre_cost = torch.where(target_size > 2 * offset, (4 * offset + eps) / span, 1.0)
        size_cost = torch.maximum((size_gap + eps) / (predicted_size + eps), (eps - size_gap) / (target_size + eps))
        costs = torch.cat([centre_cost, size_cost], -1)
        return _smooth_l1_at(costs, beta).mean(-1)

    return reduce_for(rowwise_loss(per_box, x, t), input, target, reduction, weight=weight, normalizer=normalizer)


__all__ += ["bounded_iou_loss"]  # noqa: PLE0605
