r"""Proxy losses: ProxyNCA and SoftTriple, cross-entropies over an embedding's similarity to learned
class proxies (SoftTriple: :math:`K` centres per class), and ProxyAnchor, which takes each proxy as
an anchor against the batch.

Public through :mod:`losskit.functional.metric`; the module forms hold the proxies as a parameter.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losskit._core.checks import check_bool, check_number, check_tensor
from losskit._core.numerics import log_softmax
from losskit._core.reduction import Reduction
from losskit.functional._metric_pairs import log1p_sum_exp
from losskit.functional._proxy_common import _check_inputs, _cosines, _finish, _prepare
from losskit.functional.contrastive import _gather

__all__ = ["proxy_anchor_loss", "proxy_nca_loss", "soft_triple_loss"]


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


def _per_class_weight(weight: Tensor | None, classes: int) -> Tensor | None:
    if weight is None:
        return None
    check_tensor("weight", weight)
    if weight.shape != (classes,):
        raise ValueError(f"weight must have shape ({classes},), one weight per class (the unit of this loss), "
                         f"got shape {tuple(weight.shape)}")
    return weight


def proxy_anchor_loss(
    input: Tensor,
    target: Tensor,
    *,
    proxies: Tensor,
    margin: float = 0.1,
    alpha: float = 32.0,
    distributed: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Proxy-Anchor: each class's proxy pulls the batch's samples of its class and pushes every other sample.

    With :math:`s(x, p)` the cosine of an embedding and a proxy, :math:`X_p^+` the samples labelled
    with proxy :math:`p`'s class, :math:`X_p^-` the others, :math:`P^+` the classes present in the
    batch and :math:`P` all :math:`C` classes, the paper's loss (eq. 4) is

    .. math::
        L = \frac{1}{|P^+|} \sum_{p \in P^+} \log\Big(1 + \sum_{x \in X_p^+} e^{-\alpha (s(x, p) - \delta)}\Big)
          + \frac{1}{|P|} \sum_{p \in P} \log\Big(1 + \sum_{x \in X_p^-} e^{\alpha (s(x, p) + \delta)}\Big).

    The two terms average over different sets of classes, so the natural unit is the class,
    each class's share of :math:`L`:

    .. math::
        \ell_p = \frac{C}{|P^+|} \log\Big(1 + \sum_{x \in X_p^+} \dots\Big)
            + \log\Big(1 + \sum_{x \in X_p^-} \dots\Big),
        \qquad L = \frac{1}{C} \sum_p \ell_p,

    so ``"mean"`` (over the :math:`C` classes) is the paper's loss and pytorch-metric-learning's
    ``ProxyAnchorLoss`` with its default ``DivisorReducer`` exactly (tested), ``"sum"`` is
    :math:`C L`, and a class without a sample in the batch keeps its negative term. Each term is
    :math:`\log(1 + \sum e^{\dots})`, kept exact when the sum is small (a converged loss).

    Args:
        input: Embeddings ``(N, D)``.
        target: Integer class labels ``(N,)`` in ``[0, C)``.
        proxies: One vector per class ``(C, D)`` (learned; see :class:`losskit.nn.ProxyAnchorLoss`).
        margin: :math:`\delta` (0.1).
        alpha: :math:`\alpha > 0`, the scale (32).
        distributed: Take every rank's embeddings into each proxy's sums (with gradient, see
            :func:`losskit.distributed.all_gather_with_grad`): every rank computes the loss of the
            global batch, so DDP's average of the gradients is the single-process gradient.
        weight: Per-class weights ``(C,)`` (the unit is the class).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, D)`; target: :math:`(N,)` integer; proxies: :math:`(C, D)`.
        - output: scalar, or :math:`(C,)` with ``reduction="none"`` (one value per class).

    Returns:
        The loss in the input's dtype. An empty batch gives 0 with a gradient.

    Raises:
        ValueError: Wrong shapes, labels outside ``[0, C)``, a bad option or reduction.
        TypeError: Non-floating embeddings or proxies, non-integer labels.

    Examples:
        >>> import math, torch, losskit
        >>> x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        >>> w = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # cosines 1 and 0
        >>> # class 0: log(1 + e^{-alpha (1 - delta)}); class 1 (no sample): log(1 + e^{alpha delta}) / 2
        >>> loss = losskit.proxy_anchor_loss(x, torch.tensor([0]), proxies=w, alpha=2.0, margin=0.5)
        >>> bool(torch.isclose(loss, torch.tensor(math.log1p(math.exp(-1)) + math.log1p(math.exp(1)) / 2,
        ...                                       dtype=torch.float64)))
        True

    References:
        Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020 (eq. 4). Defaults follow
        the paper and pytorch-metric-learning ``ProxyAnchorLoss`` (tested).
    """
    _check_inputs(input, target, proxies, reduction, normalizer)
    margin = check_number("margin", margin)
    alpha = check_number("alpha", alpha, low=0.0, low_open=True)
    check_bool("distributed", distributed)
    classes = proxies.shape[0]
    weight = _per_class_weight(weight, classes)
    x, w = _prepare(input, proxies)
    x, labels, _ = _gather(x, target, distributed)
    cos, _ = _cosines(x, w)  # (N, C), N the global batch when distributed
    labelled = (labels[:, None] == torch.arange(classes, device=labels.device)).T  # (C, N)
    pulled = log1p_sum_exp(-alpha * (cos.T - margin), labelled)
    pushed = log1p_sum_exp(alpha * (cos.T + margin), ~labelled)
    present = labelled.any(1).sum().clamp_min(1).to(cos.dtype)
    loss = pulled * (classes / present) + pushed
    return _finish(loss, input=input, target=target, proxies=proxies, weight=weight, reduction=reduction,
                   normalizer=normalizer)
