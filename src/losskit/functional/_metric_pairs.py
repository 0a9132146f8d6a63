r"""Pair losses on a labelled batch: contrastive pairs, lifted structure, tuplet margin, FastAP, N-pairs.

Every other sample with the anchor's label is a positive, every sample with another label a
negative; with ``distributed=True`` the candidates come from every rank (as in
:mod:`losskit.functional.contrastive`, whose gathering and reduction these share). The
embeddings are used at unit length.

**Distances.** The Euclidean distance :math:`d` of two unit embeddings is taken from their
difference (``torch.cdist`` without the Gram matrix), not from :math:`\sqrt{2 - 2\cos\theta}`: for
a close positive pair (the pairs of a trained model) the latter's relative error is about
:math:`\varepsilon / d^2` (up to 13% in float32 at :math:`d = 10^{-3}`), the difference's about
:math:`\varepsilon / d` (the rounding of the unit vectors themselves). Its gradient is 0 at
distance 0, as pytorch-metric-learning's; these losses are differentiable once.

**Cross-batch memory.** Inside :func:`scored_against` (used by
:class:`losskit.metric.CrossBatchMemory`), :func:`pairs` takes the candidates from a memory of
earlier embeddings instead of the batch: each anchor of the batch against every filled row of
the memory but its own. The losses that read only the pair masks and similarities (contrastive
pairs, multi-similarity, circle, tuplet margin) score a memory as they score a batch.

Public through :mod:`losskit.functional.metric`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as TF
from torch import Tensor

from losskit._core.checks import check_bool, check_number, check_tensor
from losskit._core.numerics import upcast
from losskit._core.reduction import Reduction, check_reduction
from losskit.functional.contrastive import (
    _check_embeddings,
    _check_labels,
    _gather,
    _masked_fill_min,
    _reduce,
    _unless_nothing_to_score,
)

__all__ = ["contrastive_pair_loss", "fast_ap_loss", "lifted_structure_loss", "npairs_loss", "tuplet_margin_loss"]


class Pairs(NamedTuple):
    """This rank's unit anchors ``z`` ``(n, D)``, the candidates ``z_all`` ``(M, D)`` (every rank's
    samples, or a memory's) and their labels, where this rank's rows start among them, each
    anchor's own column ``own`` ``(n,)``, the cosines ``(n, M)``, the positive and negative masks,
    and, for a memory, which candidates hold an entry (``None`` when every one does)."""

    z: Tensor
    z_all: Tensor
    labels_all: Tensor
    offset: int
    own: Tensor
    sim: Tensor
    positive: Tensor
    negative: Tensor
    filled: Tensor | None = None


class Memory(NamedTuple):
    """Candidates kept from earlier batches: raw ``embeddings`` ``(M, D)`` (no gradient), their
    ``labels`` ``(M,)``, which rows are ``filled`` ``(M,)``, and each anchor's own row ``own`` ``(n,)``
    (the batch is written to the memory before it is scored)."""

    embeddings: Tensor
    labels: Tensor
    filled: Tensor
    own: Tensor


# Per thread (nn.DataParallel runs replicas in threads); a thread-local, unlike a ContextVar, is
# read by torch.compile(fullgraph=True) without a graph break.
_SCORING = threading.local()


@contextmanager
def scored_against(memory: Memory) -> Iterator[None]:
    """Within the block, :func:`pairs` pairs each anchor with the rows of ``memory``."""
    outer = getattr(_SCORING, "memory", None)
    _SCORING.memory = memory
    try:
        yield
    finally:
        _SCORING.memory = outer


def _memory_pairs(x: Tensor, target: Tensor, memory: Memory) -> Pairs:
    z = TF.normalize(x, dim=-1)
    z_all = TF.normalize(memory.embeddings.detach().to(z.dtype), dim=-1)
    labels = memory.labels.to(target.device)
    filled = memory.filled[None, :]
    not_self = torch.arange(z_all.shape[0], device=z.device)[None, :] != memory.own[:, None]
    same = target[:, None] == labels[None, :]
    return Pairs(z, z_all, labels, 0, memory.own, z @ z_all.T, same & not_self & filled, ~same & filled,
                 memory.filled)


def pairs(input: Tensor, target: Tensor, reduction: str, normalizer: object, distributed: object, *,
          needs_both: bool = False) -> Pairs:
    """Checks the call and pairs every anchor with every candidate. ``needs_both``: an anchor scores
    only with a positive and a negative, so a batch where none has both is all ignored (no gradient,
    NaN embeddings included)."""
    check_reduction(reduction, normalizer)
    check_bool("distributed", distributed)
    _check_embeddings("input", input)
    _check_labels(target, input)
    x = upcast(input)
    memory = getattr(_SCORING, "memory", None)
    if memory is not None:
        if distributed:
            raise ValueError("distributed must be False with a cross-batch memory: the memory holds "
                             "this process's embeddings only")
        return _memory_pairs(x, target, memory)
    if needs_both:
        x = _unless_nothing_to_score(x, target, distributed)
    z = TF.normalize(x, dim=-1)
    z_all, labels_all, offset = _gather(z, target, distributed)
    n, total = z.shape[0], z_all.shape[0]
    own = torch.arange(n, device=z.device) + offset
    not_self = torch.arange(total, device=z.device)[None, :] != own[:, None]
    same = target[:, None] == labels_all[None, :]
    return Pairs(z, z_all, labels_all, offset, own, z @ z_all.T, same & not_self, ~same)


def log1p_exp(x: Tensor) -> Tensor:
    r""":math:`\log(1 + e^x)`, exact for every :math:`x`: ``F.softplus`` returns :math:`x` itself past
    20, :math:`e^{-20} = 2 \cdot 10^{-9}` off, which float64 sees."""
    return torch.logaddexp(x, x.new_zeros(()))


def log1p_sum_exp(logits: Tensor, keep: Tensor) -> Tensor:
    r""":math:`\log(1 + \sum_{j \in keep} e^{x_j})` per row, exact when the sum is small (a converged
    loss: :func:`log1p_exp` of the log-sum) and when it is large; 0 with a zero gradient for an
    empty row."""
    return log1p_exp(torch.logsumexp(_masked_fill_min(logits, keep), 1))


def _distance(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances ``(n, m)`` from the rows' differences (see the module docstring)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _without_self(values: Tensor, own: Tensor) -> Tensor:
    """``(n, M)`` -> ``(n, M - 1)``: row ``i`` without column ``own[i]`` (the anchor itself)."""
    total = values.shape[1]
    k = torch.arange(max(total - 1, 0), device=values.device)[None, :]
    return values.gather(1, k + (k >= own[:, None]).long())


def _mean_over_positives(values: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """Each anchor's mean of ``values`` over its positives, and whether it has one."""
    count = positive.sum(1)
    total = torch.where(positive, values, values.new_zeros(())).sum(1)
    return total / count.clamp_min(1).to(total.dtype), count > 0


def _per_anchor_weight(weight: Tensor | None, n: int) -> Tensor | None:
    if weight is None:
        return None
    check_tensor("weight", weight)
    if weight.shape not in ((n,), (n, 1)):
        raise ValueError(f"weight must have shape ({n},), one weight per anchor (each of its pairs takes "
                         f"it), got shape {tuple(weight.shape)}")
    return weight.reshape(n, 1)


def contrastive_pair_loss(
    input: Tensor,
    target: Tensor,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    distributed: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""The contrastive (pair margin) loss: positive pairs pulled within one margin, negatives pushed past another.

    With :math:`d_{ij} = \lVert \hat x_i - \hat x_j\rVert` the distance of the unit embeddings, each
    ordered pair :math:`(i, j)`, :math:`j \ne i`, scores

    .. math::
        \ell_{ij} = \begin{cases} {[d_{ij} - m_+]}_+ & y_j = y_i \\ {[m_- - d_{ij}]}_+ & y_j \ne y_i, \end{cases}

    and ``"mean"`` averages every pair (Hadsell et al.'s loss with the distance itself, as
    pytorch-metric-learning, rather than its square). pytorch-metric-learning's default reducer
    averages the non-zero positive-pair values and the non-zero negative-pair values apart and adds
    the two; ``reduction="none"`` gives every pair to reproduce it (see the metric docs page).

    Args:
        input: Embeddings ``(N, D)`` (normalized here).
        target: Integer labels ``(N,)``.
        pos_margin: :math:`m_+`, the distance a positive pair may keep for free (0).
        neg_margin: :math:`m_-`, the distance past which a negative pair costs nothing (1).
        distributed: Use the embeddings of every rank as candidates (see
            :mod:`losskit.functional.contrastive`).
        weight: Per-anchor weights ``(N,)``, taken by each of the anchor's pairs.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, D)`; target: :math:`(N,)` integer.
        - output: scalar, or :math:`(N, M - 1)` with ``reduction="none"``: row :math:`i` holds the
          pairs :math:`(i, j)` for every candidate :math:`j \ne i` in order (:math:`M = N` in one
          process, the global batch when distributed).

    Returns:
        The loss in the input's dtype. An empty batch gives 0 with a gradient.

    Raises:
        ValueError: Wrong shapes, a bad option or reduction.
        TypeError: Non-floating embeddings or non-integer labels.

    Examples:
        >>> import torch, losskit
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
        >>> # pairs (0, 1), (0, 2): negatives at distance sqrt(2) > 1: 0. Pair (1, 2): positive at 0.
        >>> losskit.contrastive_pair_loss(z, torch.tensor([0, 1, 1]), neg_margin=2.0, reduction="none")
        tensor([[0.5858, 0.5858],
                [0.5858, 0.0000],
                [0.5858, 0.0000]], dtype=torch.float64)

    References:
        Hadsell, Chopra and LeCun, "Dimensionality Reduction by Learning an Invariant Mapping",
        CVPR 2006. Margins and distance follow pytorch-metric-learning ``ContrastiveLoss`` (tested).
    """
    pos_margin = check_number("pos_margin", pos_margin)
    neg_margin = check_number("neg_margin", neg_margin)
    p = pairs(input, target, reduction, normalizer, distributed)
    d = _distance(p.z, p.z_all)
    loss = torch.where(p.positive, (d - pos_margin).clamp_min(0), (neg_margin - d).clamp_min(0))
    # With a memory, its empty rows are neither positive nor negative: 0 and left out.
    counted = None if p.filled is None else _without_self(p.positive | p.negative, p.own)
    return _reduce(_without_self(loss, p.own), input=input, target=target,
                   weight=_per_anchor_weight(weight, input.shape[0]), mask=counted, reduction=reduction,
                   normalizer=normalizer, distributed=distributed)


def lifted_structure_loss(
    input: Tensor,
    target: Tensor,
    *,
    neg_margin: float = 1.0,
    pos_margin: float = 0.0,
    distributed: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Lifted structured loss: each positive pair against every negative of either of its two samples.

    With :math:`d` the distances of the unit embeddings, :math:`N_i` the samples of other classes
    than :math:`i`'s, and for each positive pair :math:`(i, j)`

    .. math::
        J_{ij} = \log\Big(\sum_{k \in N_i} e^{m_- - d_{ik}} + \sum_{l \in N_j} e^{m_- - d_{jl}}\Big)
            + d_{ij} - m_+,
        \qquad
        \ell_i = \frac{1}{|P_i|} \sum_{j \in P_i} \tfrac12 [J_{ij}]_+^2,

    the paper's eq. 4 (:math:`m_+ = 0`) with the mean over the anchor's positives :math:`P_i`. An
    anchor without a positive gives 0 and is left out of ``"mean"``. When every anchor has as many
    positives (a batch of :math:`k` samples per class) the mean over anchors is the paper's mean over
    pairs; otherwise ``weight=`` the number of positives per anchor gives it (as
    pytorch-metric-learning, tested).

    Args:
        input: Embeddings ``(N, D)`` (normalized here).
        target: Integer labels ``(N,)``.
        neg_margin: :math:`m_-`, the paper's :math:`\alpha` (1).
        pos_margin: :math:`m_+` (0).
        distributed: Use the embeddings of every rank as candidates (see
            :mod:`losskit.functional.contrastive`).
        weight: Per-anchor weights ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, D)`; target: :math:`(N,)` integer.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (one value per anchor).

    Returns:
        The loss in the input's dtype. An empty batch, or one without a positive pair, gives 0 with
        a gradient.

    Raises:
        ValueError: Wrong shapes, a bad option or reduction.
        TypeError: Non-floating embeddings or non-integer labels.

    Examples:
        >>> import math, torch, losskit
        >>> z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
        >>> # each positive pair at distance 0, its two samples each with 2 negatives at sqrt(2):
        >>> # J = log(4 e^{1 - sqrt 2}) and the loss J^2 / 2
        >>> loss = losskit.lifted_structure_loss(z, torch.tensor([0, 0, 1, 1]))
        >>> bool(torch.isclose(loss, torch.tensor((math.log(4) + 1 - math.sqrt(2)) ** 2 / 2, dtype=torch.float64)))
        True

    References:
        Oh Song et al., "Deep Metric Learning via Lifted Structured Feature Embedding", CVPR 2016
        (eq. 4). Defaults follow pytorch-metric-learning ``LiftedStructureLoss`` (tested).
    """
    neg_margin = check_number("neg_margin", neg_margin)
    pos_margin = check_number("pos_margin", pos_margin)
    p = pairs(input, target, reduction, normalizer, distributed)
    # Every candidate's log-sum over its negatives: the positive j may sit on another rank.
    d_all = _distance(p.z_all, p.z_all)
    negative_all = p.labels_all[:, None] != p.labels_all[None, :]
    lse_all = torch.logsumexp(_masked_fill_min(neg_margin - d_all, negative_all), 1)  # (M,)
    n = p.z.shape[0]
    own = lse_all[p.offset:p.offset + n]
    d = d_all[p.offset:p.offset + n]
    j = torch.logaddexp(own[:, None], lse_all[None, :]) + d - pos_margin
    loss, valid = _mean_over_positives(j.clamp_min(0).square() / 2, p.positive)
    return _reduce(loss, input=input, target=target, weight=weight, mask=valid, reduction=reduction,
                   normalizer=normalizer, distributed=distributed)


def tuplet_margin_loss(
    input: Tensor,
    target: Tensor,
    *,
    margin: float = 0.1,
    scale: float = 64.0,
    distributed: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Tuplet margin loss: each positive pair, its angle eased by a margin, against every negative of its anchor.

    With :math:`\theta_{ij}` the angle of embeddings :math:`i` and :math:`j` and :math:`\cos\theta`
    their cosine, for each positive pair :math:`(i, j)`:

    .. math::
        \ell_{ij} = \log\Big(1 + \sum_{k \in N_i} e^{s(\cos\theta_{ik} - \cos(\theta_{ij} - \beta))}\Big),
        \qquad \ell_i = \frac{1}{|P_i|} \sum_{j \in P_i} \ell_{ij}.

    :math:`\cos(\theta - \beta) = \cos\theta\cos\beta + \sin\theta\sin\beta` with :math:`\theta`
    from the distance of the unit embeddings (no arccosine: exact for a close positive). An anchor
    without a positive gives 0 and is left out of ``"mean"``; with positives but no negative, 0. As
    for :func:`lifted_structure_loss`, ``weight=`` the number of positives per anchor gives the mean
    over pairs (pytorch-metric-learning's).

    Args:
        input: Embeddings ``(N, D)`` (normalized here).
        target: Integer labels ``(N,)``.
        margin: :math:`\beta` in **radians** (0.1; pytorch-metric-learning's ``margin=5.73`` is in
            degrees).
        scale: :math:`s > 0` (64).
        distributed: Use the embeddings of every rank as candidates (see
            :mod:`losskit.functional.contrastive`).
        weight: Per-anchor weights ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, D)`; target: :math:`(N,)` integer.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (one value per anchor).

    Returns:
        The loss in the input's dtype. An empty batch, or one without a positive pair, gives 0 with
        a gradient.

    Raises:
        ValueError: Wrong shapes, a bad option or reduction.
        TypeError: Non-floating embeddings or non-integer labels.

    Examples:
        >>> import math, torch, losskit
        >>> z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> # anchor 0: positive at theta = 0, one negative at cosine 0; beta = 0.5, s = 2:
        >>> # log(1 + e^{2 (0 - cos 0.5)})
        >>> loss = losskit.tuplet_margin_loss(z, torch.tensor([0, 0, 1]), margin=0.5, scale=2.0, reduction="none")
        >>> bool(torch.isclose(loss[0], torch.tensor(math.log1p(math.exp(-2 * math.cos(0.5))), dtype=torch.float64)))
        True

    References:
        Yu and Tao, "Deep Metric Learning with Tuplet Margin Loss", ICCV 2019 (eq. 5, without the
        slack term). pytorch-metric-learning ``TupletMarginLoss`` is reproduced with
        ``margin=math.radians(5.73)`` (tested).
    """
    margin = check_number("margin", margin, low=0.0, high=math.pi)
    scale = check_number("scale", scale, low=0.0, low_open=True)
    p = pairs(input, target, reduction, normalizer, distributed)
    d = _distance(p.z, p.z_all)
    # theta from the distance: sin(theta / 2) = d / 2
    cos = 1 - d.square() / 2
    sin = d * (1 - d.square() / 4).clamp_min(0).sqrt()
    shifted = cos * math.cos(margin) + sin * math.sin(margin)  # cos(theta - beta)
    negatives = torch.logsumexp(_masked_fill_min(scale * p.sim, p.negative), 1)  # (n,)
    per_pair = log1p_exp(negatives[:, None] - scale * shifted)
    loss, valid = _mean_over_positives(per_pair, p.positive)
    return _reduce(loss, input=input, target=target, weight=weight, mask=valid, reduction=reduction,
                   normalizer=normalizer, distributed=distributed)


def _check_bins(num_bins: object) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
    return num_bins


def fast_ap_loss(
    input: Tensor,
    target: Tensor,
    *,
    num_bins: int = 10,
    distributed: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""FastAP: one minus a differentiable average precision of each anchor's ranking of the batch.

    The squared distances :math:`d^2 \in [0, 4]` of the unit embeddings are spread over
    :math:`L + 1` bin centres :math:`z_l = 4l/L` by the triangular kernel
    :math:`\delta(d^2, z_l) = [1 - |d^2 - z_l| / \Delta]_+`, :math:`\Delta = 4 / L`. With
    :math:`h^+_l` and :math:`h_l` the anchor's positive and total counts in bin :math:`l` and
    :math:`H^+_l, H_l` their cumulative sums over the bins up to :math:`l`:

    .. math::
        \ell_i = 1 - \frac{1}{N^+_i} \sum_l \frac{h^+_l H^+_l}{H_l}

    (terms with :math:`h^+_l H^+_l = 0` count 0). An anchor without a positive gives 0 and is left
    out of ``"mean"``. Each positive's kernel sums to 1 over the bins, so
    :math:`\ell_i = \frac{1}{N^+_i} \sum_l h^+_l (H_l - H^+_l) / H_l`: computed so, without the
    cancelling :math:`1 - \dots`, the loss is exact in float32 near :math:`AP = 1`.

    Args:
        input: Embeddings ``(N, D)`` (normalized here).
        target: Integer labels ``(N,)``.
        num_bins: :math:`L`, the number of bins (10).
        distributed: Rank every rank's embeddings (see :mod:`losskit.functional.contrastive`).
        weight: Per-anchor weights ``(N,)``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, D)`; target: :math:`(N,)` integer.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (one value per anchor).

    Returns:
        The loss in the input's dtype. An empty batch, or one without a positive pair, gives 0 with
        a gradient.

    Raises:
        ValueError: Wrong shapes, a bad option or reduction.
        TypeError: Non-floating embeddings or non-integer labels.

    Examples:
        >>> import torch, losskit
        >>> z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
        >>> # anchor 0: its positive in bin 0, its negative (d^2 = 4) in the last bin: AP = 1
        >>> losskit.fast_ap_loss(z, torch.tensor([0, 0, 1]), reduction="none")
        tensor([0., 0., 0.], dtype=torch.float64)

    References:
        Cakir et al., "Deep Metric Learning to Rank", CVPR 2019 (eq. 9). Defaults follow
        pytorch-metric-learning ``FastAPLoss`` (tested).
    """
    num_bins = _check_bins(num_bins)
    p = pairs(input, target, reduction, normalizer, distributed)
    d2 = _distance(p.z, p.z_all).square()  # (n, M)
    delta = 4.0 / num_bins
    centres = torch.linspace(0.0, 4.0, num_bins + 1, device=d2.device, dtype=d2.dtype)
    pulse = (1 - (d2[..., None] - centres).abs() / delta).clamp_min(0)  # (n, M, L + 1)
    h_pos = (pulse * p.positive[..., None]).sum(1)  # (n, L + 1)
    below_neg = (pulse * p.negative[..., None]).sum(1).cumsum(1)  # H_l - H+_l
    total = h_pos.cumsum(1) + below_neg
    # 1 - AP = sum_l h+_l (H_l - H+_l) / H_l / N+: each positive's kernel sums to 1 over the bins, so
    # this is the formula without its cancelling 1 - ..., exact near AP = 1.
    missed = h_pos * below_neg / torch.where(total > 0, total, total.new_ones(()))
    count = p.positive.sum(1)
    valid = count > 0
    loss = torch.where(valid, missed.sum(1) / count.clamp_min(1).to(missed.dtype), missed.new_zeros(()))
    return _reduce(loss, input=input, target=target, weight=weight, mask=valid, reduction=reduction,
                   normalizer=normalizer, distributed=distributed)


def _first_pairs(labels: Tensor) -> tuple[Tensor, Tensor]:
    """For each sample, whether it is the first of its label with another after it (an N-pairs
    anchor), and whether it is the second of its label (that anchor's positive); ``(M,)`` each,
    without a host sync."""
    same = labels[:, None] == labels[None, :]
    before = same.tril(-1).sum(1)  # samples of the same label earlier in the batch
    return (before == 0) & (same.sum(1) > 1), before == 1


def npairs_loss(
    input: Tensor,
    target: Tensor,
    *,
    distributed: bool = False,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Multi-class N-pair loss: each class's anchor must pick its own positive among every class's positive.

    From a labelled batch, each class with two samples or more gives one pair: its first sample
    :math:`a_c` (the anchor) and its second :math:`p_c` (the positive), in batch order. With
    :math:`S` the cosine similarities of the unit embeddings and :math:`P` the classes with a pair,
    the anchor of class :math:`c` scores a cross-entropy over the positives of every class in
    :math:`P`:

    .. math::
        \ell_{a_c} = -\log \frac{e^{S_{a_c p_c}}}{\sum_{k \in P} e^{S_{a_c p_k}}}
            = \log\Big(1 + \sum_{k \in P, k \ne c} e^{S_{a_c p_k} - S_{a_c p_c}}\Big),

    computed in the second form (exact for a converged loss, where the first cancels). The
    natural unit is the pair, held at its anchor's row: ``reduction="none"`` gives one value per
    sample, 0 for every sample that is not an anchor, and ``"mean"`` averages over the pairs (other
    samples are left out), which is pytorch-metric-learning's ``NPairsLoss`` exactly (its
    ``MeanReducer`` over the pairs it forms the same way; tested). The paper's regularizer on the
    embeddings' norms has no use at unit length and is left out, as in pytorch-metric-learning.

    Args:
        input: Embeddings ``(N, D)`` (normalized here).
        target: Integer labels ``(N,)``.
        distributed: Form the pairs over every rank's batch, in rank order (see
            :mod:`losskit.functional.contrastive`): each rank scores the anchors it holds.
        weight: Per-sample weights ``(N,)``; a pair takes its anchor's.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead.

    Shape:
        - input: :math:`(N, D)`; target: :math:`(N,)` integer.
        - output: scalar, or :math:`(N,)` with ``reduction="none"`` (each pair's value at its
          anchor; 0 elsewhere).

    Returns:
        The loss in the input's dtype. An empty batch, or one without a class seen twice, gives 0
        with a gradient.

    Raises:
        ValueError: Wrong shapes, a bad reduction.
        TypeError: Non-floating embeddings or non-integer labels.

    Examples:
        >>> import math, torch, losskit
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> # pairs (0, 2) and (1, 3): each anchor at cosine 1 to its positive, 0 to the other's:
        >>> # log(1 + e^{0 - 1})
        >>> loss = losskit.npairs_loss(z, torch.tensor([5, 7, 5, 7]), reduction="none")
        >>> bool(torch.allclose(loss, torch.tensor([1.0, 1, 0, 0], dtype=torch.float64) * math.log1p(math.exp(-1))))
        True

    References:
        Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 2016
        (eq. 3, the N-pair-mc loss). Pairs and defaults follow pytorch-metric-learning
        ``NPairsLoss`` (tested).
    """
    p = pairs(input, target, reduction, normalizer, distributed)
    anchor_all, second_all = _first_pairs(p.labels_all)
    n = p.z.shape[0]
    anchor = anchor_all[p.offset:p.offset + n]
    own_positive = p.positive & second_all[None, :]  # exactly one column for an anchor
    target_sim = torch.where(own_positive, p.sim, p.sim.new_zeros(())).sum(1, keepdim=True)
    others = second_all[None, :] & ~own_positive
    loss = torch.where(anchor, log1p_sum_exp(p.sim - target_sim, others), p.sim.new_zeros(()))
    return _reduce(loss, input=input, target=target, weight=weight, mask=anchor, reduction=reduction,
                   normalizer=normalizer, distributed=distributed)
