r"""Metric-learning losses with learned class proxies: the margin softmax family.

Each loss compares the embeddings ``input`` ``(N, D)`` with one learned vector per class, its
*proxy* (the rows of a classifier's weight, ``proxies`` ``(C, D)``; ``(C, K, D)`` with :math:`K`
sub-centres), through the cosine :math:`\cos\theta_{ij}` of embedding :math:`i` and proxy
:math:`j`, and takes a cross-entropy over classes in which the labelled class's logit is made
harder to win by a margin:

=============================  ===========================================================
loss                           logit of the labelled class :math:`y` (others: no margin)
=============================  ===========================================================
:func:`normalized_softmax_loss`  :math:`\cos\theta_y / \tau`
:func:`cosface_loss`           :math:`s(\cos\theta_y - m)`
:func:`arcface_loss`           :math:`s\cos(\theta_y + m)`
:func:`sub_center_arcface_loss`  the same, :math:`\cos\theta_j` the best of class :math:`j`'s sub-centres
:func:`sphereface_loss`        :math:`s\lVert x\rVert\,\psi_m(\theta_y)` (unit proxies)
:func:`large_margin_softmax_loss`  :math:`s\lVert x\rVert\lVert w_y\rVert\,\psi_m(\theta_y)`
=============================  ===========================================================

Three more proxy losses, :func:`proxy_nca_loss`, :func:`soft_triple_loss` (:math:`K` centres per
class) and :func:`proxy_anchor_loss` (one value per class), are defined in ``_metric_proxies.py``;
the losses on the pairs of a labelled batch (:func:`multi_similarity_loss` and :func:`circle_loss`
below, :func:`contrastive_pair_loss`, :func:`lifted_structure_loss`, :func:`tuplet_margin_loss`,
:func:`fast_ap_loss` and :func:`npairs_loss` in ``_metric_pairs.py``) take no proxies. All are
public from here.

The natural unit of ``reduction="none"`` is one value per sample, so ``"mean"`` is
pytorch-metric-learning's ``MeanReducer``. The module forms (:mod:`losskit.metric`) hold the
proxies as a learned ``nn.Parameter``.

**Memory.** The cosine matrix is :math:`\hat x W^\top` divided column by column by the proxies'
norms: the normalized copy of the ``(C, D)`` proxies that ``F.normalize(W)`` would make (and
keep for the backward pass) is never formed; at 65k classes of 512 dimensions it is the
size of the proxies themselves.

**To reproduce pytorch-metric-learning 2.9** (every row tested live in ``tests/test_metric.py``):

=====================================  =====================================================
pytorch-metric-learning                losskit
=====================================  =====================================================
``loss.W`` ``(D, C)``                  ``proxies=loss.W.T`` ``(C, D)`` (the layout of ``nn.Linear``)
``SubCenterArcFaceLoss.W`` ``(D, CK)``  ``proxies=loss.W.T.reshape(C, K, D)``
``ArcFaceLoss(margin=28.6)`` (degrees)  ``margin=math.radians(28.6)``: losskit's margin is in radians (the paper's 0.5)
``CosFaceLoss``, ``NormalizedSoftmaxLoss``,  the defaults (margin 0.35, scale 64; temperature 0.05; margin 4, scale 1)
``SphereFaceLoss``, ``LargeMarginSoftmaxLoss``
=====================================  =====================================================
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as TF
from torch import Tensor

from losskit._core.checks import check_bool, check_number
from losskit._core.reduction import Reduction
from losskit.functional._margin_softmax import MarginLogits, margin_cross_entropy
from losskit.functional._metric_pairs import (
    contrastive_pair_loss,
    fast_ap_loss,
    lifted_structure_loss,
    log1p_exp,
    log1p_sum_exp,
    npairs_loss,
    pairs,
    tuplet_margin_loss,
)
from losskit.functional._metric_proxies import proxy_anchor_loss, proxy_nca_loss, soft_triple_loss
from losskit.functional._proxy_common import _check_inputs, _finish, _prepare
from losskit.functional.contrastive import _masked_fill_min, _reduce

__all__ = [
    "arcface_loss",
    "circle_loss",
    "contrastive_pair_loss",
    "cosface_loss",
    "fast_ap_loss",
    "large_margin_softmax_loss",
    "lifted_structure_loss",
    "multi_similarity_loss",
    "normalized_softmax_loss",
    "npairs_loss",
    "proxy_anchor_loss",
    "proxy_nca_loss",
    "soft_triple_loss",
    "sphereface_loss",
    "sub_center_arcface_loss",
    "tuplet_margin_loss",
]


# --- shared pieces ------------------------------------------------------------------------------


def _cosine(x: Tensor, w: Tensor) -> Tensor:
    """Cosine of each embedding ``(N, D)`` and its row of ``w`` ``(N, D)``, as the logits' product
    computes it (the proxy's norm floored: a zero proxy has cosine 0)."""
    norms = w.norm(dim=-1).clamp_min(torch.finfo(w.dtype).tiny)
    return (TF.normalize(x, dim=-1) * w).sum(-1) / norms


def _closest_sub_centre(x: Tensor, w: Tensor) -> Tensor:
    """The labelled proxies ``(N, D)``: ``w`` itself, or of sub-centres ``(N, K, D)`` the closest."""
    if w.dim() == 2:
        return w
    best = _cosine(x.unsqueeze(1).expand_as(w), w).argmax(1)
    return w[torch.arange(w.shape[0], device=w.device), best]


def _target_sin(x: Tensor, w: Tensor) -> Tensor:
    r""":math:`\sin\theta` of each sample and its labelled proxy ``w`` ``(N, D)``:
    :math:`\sqrt{u(2 - u)}` with :math:`u = 1 - \cos\theta = \lVert\hat x - \hat w\rVert^2 / 2` taken
    from the difference of the unit vectors, exact for a small angle (the loss of a trained model),
    where :math:`1 - \cos\theta` from the cosine would cancel (1e-3 relative error in float32 at
    :math:`\theta = 0.01`). Floored so that its gradient stays finite at :math:`\theta = 0`."""
    u = (TF.normalize(x, dim=-1) - TF.normalize(w, dim=-1)).square().sum(-1) / 2
    return (u * (2 - u)).clamp_min(torch.finfo(u.dtype).tiny).sqrt()


def _unit_rows(scale: float):
    """``row`` of the losses on cosines: the unit embeddings times the scale."""
    return lambda x: TF.normalize(x, dim=-1) * scale


def _psi(cos: Tensor, margin: int) -> Tensor:
    r"""L-Softmax's :math:`\psi_m(\theta) = (-1)^k \cos(m\theta) - 2k` for :math:`\theta \in
    [k\pi/m, (k+1)\pi/m]`: monotonic in :math:`\theta`, and :math:`\cos(m\theta)` is the Chebyshev
    polynomial :math:`T_m(\cos\theta)` (no arccosine, so the gradient is finite at
    :math:`\theta = 0`)."""
    previous, current = torch.ones_like(cos), cos
    for _ in range(margin - 1):
        previous, current = current, 2 * cos * current - previous
    # k = the number of j in 1..m-1 with theta >= j pi / m, i.e. cos <= cos(j pi / m)
    k = torch.zeros_like(cos)
    for j in range(1, margin):
        k = k + (cos <= math.cos(j * math.pi / margin)).to(cos.dtype)
    sign = 1 - 2 * torch.remainder(k, 2)
    return sign * current - 2 * k


def _integer_margin(margin: object) -> int:
    value = check_number("margin", margin, low=1.0)
    if value != int(value):
        raise ValueError(f"margin must be a whole number (the angle multiplier m), got {value:g}")
    return int(value)


# --- the losses ---------------------------------------------------------------------------------


def normalized_softmax_loss(
    input: Tensor,
    target: Tensor,
    *,
    proxies: Tensor,
    temperature: float = 0.05,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""NormFace / normalized softmax: a cross-entropy over cosines to unit proxies, at a temperature.

    .. math::
        \ell_i = -\log \frac{e^{\cos\theta_{i y_i}/\tau}}{\sum_j e^{\cos\theta_{ij}/\tau}},
        \qquad \cos\theta_{ij} = \frac{\langle x_i, w_j\rangle}{\lVert x_i\rVert\,\lVert w_j\rVert}.

    Args:
        input: Embeddings ``(N, D)``.
        target: Integer class labels ``(N,)`` in ``[0, C)``.
        proxies: One vector per class ``(C, D)`` (learned; see :class:`losskit.nn.NormalizedSoftmaxLoss`).
        temperature: :math:`\tau > 0` (0.05, as pytorch-metric-learning).
        weight: Per-sample weights ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, D)`; target: :math:`(N,)` integer; proxies: :math:`(C, D)`.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (one value per sample).

    Returns:
        The loss in the input's dtype. An empty batch gives 0 with a gradient.

    Raises:
        ValueError: Wrong shapes, labels outside ``[0, C)``, a bad option or reduction.
        TypeError: Non-floating embeddings or proxies, non-integer labels.

    Examples:
        >>> import torch, losskit
        >>> x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        >>> w = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)  # cosines 1 and 0
        >>> # -log(e^(1/0.5) / (e^(1/0.5) + e^0)) = log(1 + e^-2)
        >>> losskit.normalized_softmax_loss(x, torch.tensor([0]), proxies=w, temperature=0.5)
        tensor(0.1269, dtype=torch.float64)

    References:
        Wang et al., "NormFace: L2 Hypersphere Embedding for Face Verification", ACM MM 2017;
        Zhai and Wu, "Classification is a Strong Baseline for Deep Metric Learning", BMVC 2019.
        Defaults follow pytorch-metric-learning ``NormalizedSoftmaxLoss``.
    """
    _check_inputs(input, target, proxies, reduction, normalizer)
    temperature = check_number("temperature", temperature, low=0.0, low_open=True)
    x, w = _prepare(input, proxies)
    loss = margin_cross_entropy(x, w, target, MarginLogits(
        _unit_rows(1 / temperature), True, lambda x, w_y: _cosine(x, w_y) / temperature))
    return _finish(loss, input=input, target=target, proxies=proxies, weight=weight, reduction=reduction,
                   normalizer=normalizer)


def cosface_loss(
    input: Tensor,
    target: Tensor,
    *,
    proxies: Tensor,
    margin: float = 0.35,
    scale: float = 64.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""CosFace (large margin cosine loss, AM-Softmax): an additive margin on the labelled cosine.

    .. math::
        \ell_i = -\log \frac{e^{s(\cos\theta_{i y_i} - m)}}
            {e^{s(\cos\theta_{i y_i} - m)} + \sum_{j \ne y_i} e^{s\cos\theta_{ij}}}.

    Args:
        input: Embeddings ``(N, D)``.
        target: Integer class labels ``(N,)`` in ``[0, C)``.
        proxies: One vector per class ``(C, D)`` (learned; see :class:`losskit.nn.CosFaceLoss`).
        margin: :math:`m \ge 0` (0.35, the paper's and pytorch-metric-learning's).
        scale: :math:`s > 0` (64).
        weight: Per-sample weights ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, D)`; target: :math:`(N,)` integer; proxies: :math:`(C, D)`.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (one value per sample).

    Returns:
        The loss in the input's dtype. An empty batch gives 0 with a gradient.

    Raises:
        ValueError: Wrong shapes, labels outside ``[0, C)``, a bad option or reduction.
        TypeError: Non-floating embeddings or proxies, non-integer labels.

    Examples:
        >>> import torch, losskit
        >>> x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # cosines 1 and 0
        >>> # s = 4, m = 0.5: -log(e^(4 * 0.5) / (e^2 + e^0)) = log(1 + e^-2)
        >>> losskit.cosface_loss(x, torch.tensor([0]), proxies=w, margin=0.5, scale=4.0)
        tensor(0.1269, dtype=torch.float64)

    References:
        Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018;
        Wang et al., "Additive Margin Softmax for Face Verification", 2018. Defaults follow the
        paper and pytorch-metric-learning ``CosFaceLoss``.
    """
    _check_inputs(input, target, proxies, reduction, normalizer)
    margin = check_number("margin", margin, low=0.0)
    scale = check_number("scale", scale, low=0.0, low_open=True)
    x, w = _prepare(input, proxies)
    loss = margin_cross_entropy(x, w, target, MarginLogits(
        _unit_rows(scale), True, lambda x, w_y: (_cosine(x, w_y) - margin) * scale))
    return _finish(loss, input=input, target=target, proxies=proxies, weight=weight, reduction=reduction,
                   normalizer=normalizer)


def _arcface(input: Tensor, target: Tensor, proxies: Tensor, margin: float, scale: float) -> Tensor:
    def target_logit(x: Tensor, w_y: Tensor) -> Tensor:
        w_y = _closest_sub_centre(x, w_y)
        c = _cosine(x, w_y)
        shifted = c * math.cos(margin) - _target_sin(x, w_y) * math.sin(margin)  # cos(theta + m)
        # Past theta = pi - m, cos(theta + m) would rise again: the linear penalty keeps the logit falling.
        return torch.where(c >= -math.cos(margin), shifted, c - margin * math.sin(margin)) * scale

    x, w = _prepare(input, proxies)
    return margin_cross_entropy(x, w, target, MarginLogits(_unit_rows(scale), True, target_logit))


def _arcface_options(margin: object, scale: object) -> tuple[float, float]:
    return (check_number("margin", margin, low=0.0, high=math.pi),
            check_number("scale", scale, low=0.0, low_open=True))


def arcface_loss(
    input: Tensor,
    target: Tensor,
    *,
    proxies: Tensor,
    margin: float = 0.5,
    scale: float = 64.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""ArcFace (additive angular margin): the labelled class must win by an angle :math:`m`.

    .. math::
        \ell_i = -\log \frac{e^{s\cos(\theta_{i y_i} + m)}}
            {e^{s\cos(\theta_{i y_i} + m)} + \sum_{j \ne y_i} e^{s\cos\theta_{ij}}},

    with :math:`\cos(\theta + m) = \cos\theta\cos m - \sin\theta\sin m` computed from the cosine
    (no arccosine: the gradient stays finite where :math:`\theta = 0`). Where
    :math:`\theta > \pi - m`, :math:`\cos(\theta + m)` would grow again with :math:`\theta`; there
    the labelled logit is :math:`s(\cos\theta - m\sin m)` instead, as in the authors' code
    (insightface) and pytorch-metric-learning.

    Args:
        input: Embeddings ``(N, D)``.
        target: Integer class labels ``(N,)`` in ``[0, C)``.
        proxies: One vector per class ``(C, D)`` (learned; see :class:`losskit.nn.ArcFaceLoss`).
        margin: :math:`m \in [0, \pi]` in **radians** (0.5, the paper's; pytorch-metric-learning's
            ``margin=28.6`` is in degrees).
        scale: :math:`s > 0` (64).
        weight: Per-sample weights ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, D)`; target: :math:`(N,)` integer; proxies: :math:`(C, D)`.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (one value per sample).

    Returns:
        The loss in the input's dtype. An empty batch gives 0 with a gradient.

    Raises:
        ValueError: Wrong shapes, labels outside ``[0, C)``, a bad option or reduction.
        TypeError: Non-floating embeddings or proxies, non-integer labels.

    Examples:
        >>> import math, torch, losskit
        >>> x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # both at 45 degrees
        >>> # m = 45 degrees: the labelled logit is s cos(90 degrees) = 0, the other s cos(45 degrees)
        >>> loss = losskit.arcface_loss(x, torch.tensor([0]), proxies=w, margin=math.pi / 4, scale=2.0)
        >>> bool(torch.isclose(loss, torch.log1p(torch.tensor(2 ** 0.5, dtype=torch.float64).exp())))
        True

    References:
        Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019
        (eq. 3; s = 64, m = 0.5). pytorch-metric-learning ``ArcFaceLoss`` is reproduced with
        ``margin=math.radians(28.6)`` (tested).
    """
    _check_inputs(input, target, proxies, reduction, normalizer)
    margin, scale = _arcface_options(margin, scale)
    loss = _arcface(input, target, proxies, margin, scale)
    return _finish(loss, input=input, target=target, proxies=proxies, weight=weight, reduction=reduction,
                   normalizer=normalizer)


def sub_center_arcface_loss(
    input: Tensor,
    target: Tensor,
    *,
    proxies: Tensor,
    margin: float = 0.5,
    scale: float = 64.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Sub-center ArcFace: ArcFace where each class has :math:`K` proxies and the closest one counts.

    .. math::
        \cos\theta_{ij} = \max_{k} \frac{\langle x_i, w_{jk}\rangle}{\lVert x_i\rVert\,\lVert w_{jk}\rVert},
        \qquad
        \ell_i = -\log \frac{e^{s\cos(\theta_{i y_i} + m)}}
            {e^{s\cos(\theta_{i y_i} + m)} + \sum_{j \ne y_i} e^{s\cos\theta_{ij}}}.

    Noisy samples gather around a non-dominant sub-centre instead of pulling the class's main one.

    Args:
        input: Embeddings ``(N, D)``.
        target: Integer class labels ``(N,)`` in ``[0, C)``.
        proxies: :math:`K` sub-centres per class ``(C, K, D)`` (learned; see
            :class:`losskit.nn.SubCenterArcFaceLoss`, 3 sub-centres by default).
        margin: :math:`m \in [0, \pi]` in radians (0.5).
        scale: :math:`s > 0` (64).
        weight: Per-sample weights ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, D)`; target: :math:`(N,)` integer; proxies: :math:`(C, K, D)`.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (one value per sample).

    Returns:
        The loss in the input's dtype. An empty batch gives 0 with a gradient.

    Raises:
        ValueError: Wrong shapes, labels outside ``[0, C)``, a bad option or reduction.
        TypeError: Non-floating embeddings or proxies, non-integer labels.

    Examples:
        >>> import torch, losskit
        >>> x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        >>> w = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, -1.0]]], dtype=torch.float64)
        >>> # class 0's second sub-centre is x itself (cosine 1), class 1's best cosine is 0: the same
        >>> # as ArcFace with proxies [[1, 0], [0, 1]]
        >>> one = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> y = torch.tensor([0])
        >>> bool(losskit.sub_center_arcface_loss(x, y, proxies=w) == losskit.arcface_loss(x, y, proxies=one))
        True

    References:
        Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-Scale Noisy Web
        Faces", ECCV 2020. pytorch-metric-learning ``SubCenterArcFaceLoss`` (3 sub-centres) is
        reproduced with ``proxies=loss.W.T.reshape(C, 3, D)`` and ``margin=math.radians(28.6)`` (tested).
    """
    _check_inputs(input, target, proxies, reduction, normalizer, sub_centers=True)
    margin, scale = _arcface_options(margin, scale)
    loss = _arcface(input, target, proxies, margin, scale)
    return _finish(loss, input=input, target=target, proxies=proxies, weight=weight, reduction=reduction,
                   normalizer=normalizer)


def _large_margin(input: Tensor, target: Tensor, proxies: Tensor, margin: int, scale: float,
                  unit_proxies: bool) -> Tensor:
    # The logits s |x| |w_j| cos (|w_j| = 1 for unit proxies) are the products <s x, w_j> (over |w_j|).
    def target_logit(x: Tensor, w_y: Tensor) -> Tensor:
        magnitude = x.norm(dim=-1) * scale
        if not unit_proxies:
            magnitude = magnitude * w_y.norm(dim=-1)
        return _psi(_cosine(x, w_y), margin) * magnitude

    x, w = _prepare(input, proxies)
    return margin_cross_entropy(x, w, target, MarginLogits(lambda x: x * scale, unit_proxies, target_logit))


def large_margin_softmax_loss(
    input: Tensor,
    target: Tensor,
    *,
    proxies: Tensor,
    margin: int = 4,
    scale: float = 1.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""L-Softmax (large-margin softmax): the labelled class's angle is multiplied by :math:`m`.

    The logits are the plain inner products :math:`s\lVert x_i\rVert\lVert w_j\rVert\cos\theta_{ij}`,
    except the labelled class's, whose :math:`\cos\theta` becomes

    .. math::
        \psi_m(\theta) = (-1)^k \cos(m\theta) - 2k, \qquad
        \theta \in \Big[\frac{k\pi}{m}, \frac{(k+1)\pi}{m}\Big],

    a monotonic extension of :math:`\cos(m\theta)` to :math:`[0, \pi]` (:math:`\cos(m\theta)` is
    the Chebyshev polynomial :math:`T_m(\cos\theta)`, eq. 7 of the paper), and the loss is the
    cross-entropy over these logits.

    Args:
        input: Embeddings ``(N, D)``.
        target: Integer class labels ``(N,)`` in ``[0, C)``.
        proxies: One vector per class ``(C, D)``, not normalized (learned; see
            :class:`losskit.nn.LargeMarginSoftmaxLoss`).
        margin: The angle multiplier :math:`m`, a whole number :math:`\ge 1` (4; 1 is the softmax).
        scale: :math:`s > 0`, a factor on every logit (1, as pytorch-metric-learning).
        weight: Per-sample weights ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, D)`; target: :math:`(N,)` integer; proxies: :math:`(C, D)`.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (one value per sample).

    Returns:
        The loss in the input's dtype. An empty batch gives 0 with a gradient.

    Raises:
        ValueError: Wrong shapes, labels outside ``[0, C)``, a margin that is not a whole number
            :math:`\ge 1`, a bad option or reduction.
        TypeError: Non-floating embeddings or proxies, non-integer labels.

    Examples:
        >>> import torch, losskit
        >>> x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> # theta = 45 degrees, m = 2: psi = cos(90 degrees) = 0; the other logit |x| |w| cos 45 = 1
        >>> losskit.large_margin_softmax_loss(x, torch.tensor([0]), proxies=w, margin=2)
        tensor(1.3133, dtype=torch.float64)

    References:
        Liu et al., "Large-Margin Softmax Loss for Convolutional Neural Networks", ICML 2016.
        Defaults follow pytorch-metric-learning ``LargeMarginSoftmaxLoss`` (tested).
    """
    _check_inputs(input, target, proxies, reduction, normalizer)
    margin = _integer_margin(margin)
    scale = check_number("scale", scale, low=0.0, low_open=True)
    loss = _large_margin(input, target, proxies, margin, scale, unit_proxies=False)
    return _finish(loss, input=input, target=target, proxies=proxies, weight=weight, reduction=reduction,
                   normalizer=normalizer)


def sphereface_loss(
    input: Tensor,
    target: Tensor,
    *,
    proxies: Tensor,
    margin: int = 4,
    scale: float = 1.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""SphereFace (A-Softmax): L-Softmax with unit-length proxies, a multiplicative angular margin.

    .. math::
        \ell_i = -\log \frac{e^{s\lVert x_i\rVert\psi_m(\theta_{i y_i})}}
            {e^{s\lVert x_i\rVert\psi_m(\theta_{i y_i})} + \sum_{j \ne y_i} e^{s\lVert x_i\rVert\cos\theta_{ij}}},

    with :math:`\psi_m` as in :func:`large_margin_softmax_loss`. The paper's annealing of the
    margin (a mix with the plain softmax early in training) is left to the caller, as in
    pytorch-metric-learning.

    Args:
        input: Embeddings ``(N, D)``.
        target: Integer class labels ``(N,)`` in ``[0, C)``.
        proxies: One vector per class ``(C, D)``, used at unit length (learned; see
            :class:`losskit.nn.SphereFaceLoss`).
        margin: The angle multiplier :math:`m`, a whole number :math:`\ge 1` (4, the paper's).
        scale: :math:`s > 0`, a factor on every logit (1).
        weight: Per-sample weights ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, D)`; target: :math:`(N,)` integer; proxies: :math:`(C, D)`.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (one value per sample).

    Returns:
        The loss in the input's dtype. An empty batch gives 0 with a gradient.

    Raises:
        ValueError: Wrong shapes, labels outside ``[0, C)``, a margin that is not a whole number
            :math:`\ge 1`, a bad option or reduction.
        TypeError: Non-floating embeddings or proxies, non-integer labels.

    Examples:
        >>> import torch, losskit
        >>> x = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
        >>> # theta = 0: psi = 1, logits |x| psi = 2 and |x| cos 90 degrees = 0: log(1 + e^-2)
        >>> losskit.sphereface_loss(x, torch.tensor([0]), proxies=w)
        tensor(0.1269, dtype=torch.float64)

    References:
        Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", CVPR 2017.
        Defaults follow pytorch-metric-learning ``SphereFaceLoss`` (tested).
    """
    _check_inputs(input, target, proxies, reduction, normalizer)
    margin = _integer_margin(margin)
    scale = check_number("scale", scale, low=0.0, low_open=True)
    loss = _large_margin(input, target, proxies, margin, scale, unit_proxies=True)
    return _finish(loss, input=input, target=target, proxies=proxies, weight=weight, reduction=reduction,
                   normalizer=normalizer)


# --- pair losses on a labelled batch ------------------------------------------------------------
# Every other sample with the anchor's label is a positive, every sample with another label a
# negative; with ``distributed=True`` the candidates come from every rank (as in
# :mod:`losskit.functional.contrastive`, whose gathering and reduction these share).


def _pair_setup(input: Tensor, target: Tensor, reduction: str, normalizer: object,
                distributed: object, *, needs_both: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Cosine similarities ``(n, M)`` of this rank's anchors with every candidate, and the positive
    and negative masks (see :func:`losskit.functional._metric_pairs.pairs`)."""
    p = pairs(input, target, reduction, normalizer, distributed, needs_both=needs_both)
    return p.sim, p.positive, p.negative


def multi_similarity_loss(
    input: Tensor,
    target: Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    distributed: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Multi-similarity loss: soft weighting of every positive and negative pair of a labelled batch.

    With cosine similarities :math:`S_{ij}` of the unit embeddings, :math:`P_i` the other samples
    of anchor :math:`i`'s class and :math:`N_i` the samples of other classes:

    .. math::
        \ell_i = \frac{1}{\alpha} \log\Big(1 + \sum_{p \in P_i} e^{-\alpha (S_{ip} - \lambda)}\Big)
            + \frac{1}{\beta} \log\Big(1 + \sum_{n \in N_i} e^{\beta (S_{in} - \lambda)}\Big).

    An anchor without positives or negatives contributes the other term alone (0 for none), and
    every anchor counts in ``"mean"``, as in pytorch-metric-learning (``MeanReducer``). The
    paper's pair mining is a separate step (pytorch-metric-learning's ``MultiSimilarityMiner``).

    Args:
        input: Embeddings ``(N, D)`` (normalized here).
        target: Integer labels ``(N,)``.
        alpha: :math:`\alpha > 0`, the positive pairs' scale (2).
        beta: :math:`\beta > 0`, the negative pairs' scale (50).
        base: :math:`\lambda`, the similarity margin (0.5).
        distributed: Use the embeddings of every rank as candidates (see
            :mod:`losskit.functional.contrastive`).
        weight: Per-anchor weights ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, D)`; target: :math:`(N,)` integer.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (one value per anchor).

    Returns:
        The loss in the input's dtype. An empty batch gives 0 with a gradient.

    Raises:
        ValueError: Wrong shapes, a bad option or reduction.
        TypeError: Non-floating embeddings or non-integer labels.

    Examples:
        >>> import math, torch, losskit
        >>> z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> # anchor 0: one positive at S = 1, one negative at S = 0:
        >>> # log(1 + e^{-2 * 0.5}) / 2 + log(1 + e^{50 * -0.5}) / 50
        >>> loss = losskit.multi_similarity_loss(z, torch.tensor([0, 0, 1]), reduction="none")
        >>> bool(torch.isclose(loss[0], torch.tensor(math.log1p(math.exp(-1)) / 2 + math.log1p(math.exp(-25)) / 50,
        ...                                          dtype=torch.float64)))
        True

    References:
        Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep Metric
        Learning", CVPR 2019 (eq. 9 without mining). Defaults follow pytorch-metric-learning
        ``MultiSimilarityLoss`` (tested).
    """
    alpha = check_number("alpha", alpha, low=0.0, low_open=True)
    beta = check_number("beta", beta, low=0.0, low_open=True)
    base = check_number("base", base)
    sim, positive, negative = _pair_setup(input, target, reduction, normalizer, distributed)
    loss = (log1p_sum_exp(-alpha * (sim - base), positive) / alpha
            + log1p_sum_exp(beta * (sim - base), negative) / beta)
    return _reduce(loss, input=input, target=target, weight=weight, mask=None, reduction=reduction,
                   normalizer=normalizer, distributed=distributed)


def circle_loss(
    input: Tensor,
    target: Tensor,
    *,
    margin: float = 0.4,
    gamma: float = 80.0,
    detach_weights: bool = True,
    distributed: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Circle loss: every similarity re-weighted by its distance from its optimum.

    With cosine similarities :math:`s` of the unit embeddings, positives :math:`s_p` and negatives
    :math:`s_n` of anchor :math:`i` (as in :func:`multi_similarity_loss`), and the margin :math:`m`:

    .. math::
        \ell_i = \log\Big(1 + \sum_{n} e^{\gamma \alpha_n (s_n - m)}
            \sum_{p} e^{-\gamma \alpha_p (s_p - 1 + m)}\Big),
        \qquad \alpha_p = [1 + m - s_p]_+, \quad \alpha_n = [s_n + m]_+,

    the weights :math:`\alpha` held constant in the gradient (``detach_weights=True``), as in the
    authors' code and pytorch-metric-learning; ``False`` differentiates them too. Anchors without a
    positive or a negative give 0 and are left out of ``"mean"``.

    Args:
        input: Embeddings ``(N, D)`` (normalized here).
        target: Integer labels ``(N,)``.
        margin: The relaxation :math:`m` (0.4; the paper uses 0.25 for faces).
        gamma: The scale :math:`\gamma > 0` (80; the paper uses 256 for faces).
        detach_weights: Hold :math:`\alpha_p, \alpha_n` constant in the gradient.
        distributed: Use the embeddings of every rank as candidates (see
            :mod:`losskit.functional.contrastive`).
        weight: Per-anchor weights ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, D)`; target: :math:`(N,)` integer.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (one value per anchor).

    Returns:
        The loss in the input's dtype. An empty batch, or one without an anchor that has both a
        positive and a negative, gives 0 with a gradient.

    Raises:
        ValueError: Wrong shapes, a bad option or reduction.
        TypeError: Non-floating embeddings or non-integer labels.

    Examples:
        >>> import math, torch, losskit
        >>> z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> # anchor 0: s_p = 1 (alpha_p = m), s_n = 0 (alpha_n = m); with m = 0.5, gamma = 4:
        >>> # log(1 + e^{4 * 0.5 * -0.5} e^{-4 * 0.5 * 0.5}) = log(1 + e^-2)
        >>> loss = losskit.circle_loss(z, torch.tensor([0, 0, 1]), margin=0.5, gamma=4.0, reduction="none")
        >>> bool(torch.isclose(loss[0], torch.tensor(math.log1p(math.exp(-2)), dtype=torch.float64)))
        True

    References:
        Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization", CVPR
        2020 (eq. 6). Defaults follow pytorch-metric-learning ``CircleLoss`` (m = 0.4, gamma =
        80; tested), whose ``AvgNonZeroReducer`` is ``"mean"`` here (a valid anchor's loss is > 0).
    """
    margin = check_number("margin", margin)
    gamma = check_number("gamma", gamma, low=0.0, low_open=True)
    check_bool("detach_weights", detach_weights)
    sim, positive, negative = _pair_setup(input, target, reduction, normalizer, distributed, needs_both=True)
    fixed = sim.detach() if detach_weights else sim
    logit_p = -gamma * (1 + margin - fixed).clamp_min(0) * (sim - (1 - margin))
    logit_n = gamma * (fixed + margin).clamp_min(0) * (sim - margin)
    both = (torch.logsumexp(_masked_fill_min(logit_p, positive), 1)
            + torch.logsumexp(_masked_fill_min(logit_n, negative), 1))
    valid = positive.any(1) & negative.any(1)
    loss = torch.where(valid, log1p_exp(torch.where(valid, both, both.new_zeros(()))), both.new_zeros(()))
    return _reduce(loss, input=input, target=target, weight=weight, mask=valid, reduction=reduction,
                   normalizer=normalizer, distributed=distributed)
