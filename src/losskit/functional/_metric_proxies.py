r"""Proxy losses: ProxyNCA and SoftTriple, cross-entropies over an embedding's similarity to learned
class proxies (SoftTriple: :math:`K` centres per class).

Public through :mod:`losskit.functional.metric`; the module forms hold the proxies as a parameter.
"""

from __future__ import annotations

from torch import Tensor

from losskit._core.checks import check_number
from losskit._core.numerics import log_softmax
from losskit._core.reduction import Reduction
from losskit.functional._proxy_common import _check_inputs, _cosines, _finish, _prepare

__all__ = ["proxy_nca_loss", "soft_triple_loss"]


def proxy_nca_loss(
    input: Tensor,
    target: Tensor,
    *,
    proxies: Tensor,
    scale: float = 1.0,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""ProxyNCA: a softmax over the negative squared distances of the unit embedding to unit proxies.

    .. math::
        \ell_i = -\log \frac{e^{-s \lVert \hat x_i - \hat w_{y_i}\rVert^2}}
            {\sum_j e^{-s \lVert \hat x_i - \hat w_j\rVert^2}}.

    As :math:`\lVert \hat x - \hat w\rVert^2 = 2 - 2\cos\theta` and the softmax ignores a constant,
    this is computed as the cross-entropy over :math:`2s\cos\theta_{ij}` (no cancelling
    :math:`2 - 2\cos\theta`). The denominator includes the labelled proxy, as in
    pytorch-metric-learning and later work (ProxyNCA++); the paper's leaves it out.

    Args:
        input: Embeddings ``(N, D)``.
        target: Integer class labels ``(N,)`` in ``[0, C)``.
        proxies: One vector per class ``(C, D)`` (learned; see :class:`losskit.nn.ProxyNCALoss`).
        scale: :math:`s > 0`, pytorch-metric-learning's ``softmax_scale`` (1).
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
        >>> x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        >>> w = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # squared distances 0 and 2
        >>> # -log(e^0 / (e^0 + e^-2)) = log(1 + e^-2)
        >>> losskit.proxy_nca_loss(x, torch.tensor([0]), proxies=w)
        tensor(0.1269, dtype=torch.float64)

    References:
        Movshovitz-Attias et al., "No Fuss Distance Metric Learning using Proxies", ICCV 2017;
        Teh et al., "ProxyNCA++", ECCV 2020. Defaults follow pytorch-metric-learning
        ``ProxyNCALoss`` (tested).
    """
    _check_inputs(input, target, proxies, reduction, normalizer)
    scale = check_number("scale", scale, low=0.0, low_open=True)
    x, w = _prepare(input, proxies)
    cos, _ = _cosines(x, w)
    loss = -log_softmax(cos * (2 * scale), 1).gather(1, target.unsqueeze(1)).squeeze(1)
    return _finish(loss, input=input, target=target, proxies=proxies, weight=weight, reduction=reduction,
                   normalizer=normalizer)


def soft_triple_loss(
    input: Tensor,
    target: Tensor,
    *,
    proxies: Tensor,
    scale: float = 20.0,
    gamma: float = 0.1,
    margin: float = 0.01,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""SoftTriple: a margin softmax over each class's soft-maximum similarity among its :math:`K` centres.

    With :math:`\cos\theta_{ick}` the cosine of embedding :math:`i` and centre :math:`k` of class
    :math:`c`:

    .. math::
        S_{ic} = \sum_k \frac{e^{\cos\theta_{ick}/\gamma}}{\sum_{k'} e^{\cos\theta_{ick'}/\gamma}}
            \cos\theta_{ick},
        \qquad
        \ell_i = -\log \frac{e^{\lambda (S_{i y_i} - \delta)}}
            {e^{\lambda (S_{i y_i} - \delta)} + \sum_{c \ne y_i} e^{\lambda S_{ic}}}.

    The paper's regularizer that merges similar centres is left to the caller (a penalty on the
    module's ``proxies``), as in pytorch-metric-learning.

    Args:
        input: Embeddings ``(N, D)``.
        target: Integer class labels ``(N,)`` in ``[0, C)``.
        proxies: :math:`K` centres per class ``(C, K, D)`` (learned; see
            :class:`losskit.nn.SoftTripleLoss`, 10 centres by default).
        scale: :math:`\lambda > 0` (20; pytorch-metric-learning's ``la``).
        gamma: :math:`\gamma > 0`, the temperature of the soft maximum over centres (0.1).
        margin: :math:`\delta` (0.01).
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
        >>> w = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
        >>> # S = (1, 0); lambda = 2, delta = 0: log(1 + e^{-2})
        >>> losskit.soft_triple_loss(x, torch.tensor([0]), proxies=w, scale=2.0, margin=0.0)
        tensor(0.1269, dtype=torch.float64)

    References:
        Qian et al., "SoftTriple Loss: Deep Metric Learning Without Triplet Sampling", ICCV 2019
        (eq. 9 without the centre regularizer). Defaults follow pytorch-metric-learning
        ``SoftTripleLoss`` (tested).
    """
    _check_inputs(input, target, proxies, reduction, normalizer, sub_centers=True)
    scale = check_number("scale", scale, low=0.0, low_open=True)
    gamma = check_number("gamma", gamma, low=0.0, low_open=True)
    margin = check_number("margin", margin)
    x, w = _prepare(input, proxies)
    cos, _ = _cosines(x, w, best_sub_center=False)  # (N, C, K)
    similarity = ((cos / gamma).softmax(-1) * cos).sum(-1)  # (N, C)
    index = target.unsqueeze(1)
    logits = similarity.scatter_add(1, index, similarity.new_full(index.shape, -margin)) * scale
    loss = -log_softmax(logits, 1).gather(1, index).squeeze(1)
    return _finish(loss, input=input, target=target, proxies=proxies, weight=weight, reduction=reduction,
                   normalizer=normalizer)
