r"""Distributed-correct losses: global normalizers, all-reduce and all-gather with gradient.

**The convention.** Under ``DistributedDataParallel`` (DDP) every rank computes a loss on its
own shard and DDP *averages* the parameter gradients over the :math:`W` ranks. Everything in
this module, and every loss option built on it (``distributed=True``, ``sync_stats=True``,
``YOLOLoss(distributed=True)``), returns on rank :math:`r` a loss :math:`L_r` such that

.. math::
    \frac{1}{W} \sum_{r=1}^{W} L_r = L,

the loss one process would compute on the concatenated batch, and whose gradients (collectives
sum the gradients that flow back across ranks) make DDP's averaged gradient equal the
single-process gradient :math:`\nabla L`. For a loss normalized by a count this means

.. math::
    L_r = \frac{\sum_{i \in \text{rank } r} \ell_i}{n / W},
    \qquad n = \sum_r n_r \ \text{(the global count)},

which is what :func:`global_normalizer` gives: the global count divided by the world size (the
"mean count per rank", as DETR and mmdetection's ``reduce_mean(num_pos)`` compute it). Dividing
by the *local* count instead weighs a sample on a rank with few positives more than one on a
busy rank; dividing by the global count *without* the factor :math:`W` makes every gradient
:math:`W` times too small once DDP averages.

Every collective here runs on every rank whatever the local data (an empty shard, a rank without
positives), and before any early return, so no rank waits forever for another. Without an
initialized process group, or with one rank, every function is the single-process computation.

Examples:
    >>> import torch, losskit
    >>> from losskit.distributed import global_normalizer
    >>> logits, target = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
    >>> positives = target.sum()                        # local count; summed over ranks when distributed
    >>> loss = losskit.sigmoid_focal_loss(logits, target, normalizer=global_normalizer(positives))
    >>> bool(loss == losskit.sigmoid_focal_loss(logits, target, reduction="sum") / 1.0)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_gather_with_grad",
    "all_gather_no_grad",
    "all_reduce_with_grad",
    "global_normalizer",
    "is_distributed",
    "rank",
    "shard_offset",
    "token_normalizer",
    "world_size",
]


def is_distributed(group: object | None = None) -> bool:
    """Whether ``torch.distributed`` is initialized with more than one rank (in ``group``)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def world_size(group: object | None = None) -> int:
    """The number of ranks (1 when ``torch.distributed`` is not initialized)."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def rank(group: object | None = None) -> int:
    """This process's rank (0 when ``torch.distributed`` is not initialized)."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def _device(group: object | None) -> torch.device:
    """Where a collective of Python numbers runs: the current GPU for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def global_normalizer(count: float | Tensor, *, min_count: float = 1.0, group: object | None = None) -> Tensor:
    r"""The normalizer that makes a count-normalized loss exact under DDP: :math:`\max(n, m) / W`.

    Sums ``count`` (positives, tokens, a target-score sum, a weight sum) over the ranks,
    clamps the global count :math:`n` to at least ``min_count``, and divides by the world size
    :math:`W`. Pass it as ``normalizer=`` to any loss::

        loss = LF.sigmoid_focal_loss(logits, target, reduction="mean",
                                     normalizer=global_normalizer(num_pos))

    Rank :math:`r`'s loss is then :math:`W \sum_{i \in r} \ell_i / \max(n, m)`: its mean over
    the ranks is the single-process loss, and DDP's averaged gradient is the single-process
    gradient (see the module docstring). The clamp acts on the *global* count, so when no
    rank has a positive the result is ``min_count / W``, on purpose: do not clamp it again
    (``max(normalizer, 1)`` would scale all-background steps down by :math:`W`). A global
    count of 0 with ``min_count=0`` is replaced by 1, so the loss is the sum of nothing, 0.

    The count is treated as a constant (detached), as every detection and language-model
    trainer does. Without ``torch.distributed`` (or with one rank) no communication happens
    and the result is :math:`\max(n, m)`.

    Args:
        count: The local count, a number or a one-element tensor.
        min_count: Floor of the global count (1, as DETR, FCOS and Ultralytics clamp).
        group: The process group (the default group when ``None``).

    Returns:
        A 0-dim floating tensor (the count's dtype if floating, else the default dtype).

    Raises:
        ValueError: A tensor count with more than one element, or a negative ``min_count``.

    Examples:
        >>> global_normalizer(torch.tensor(0.0))            # one process: max(0, 1)
        tensor(1.)
        >>> global_normalizer(7)
        tensor(7.)
    """
    if isinstance(count, Tensor):
        if count.numel() != 1:
            raise ValueError(f"count must be a number or a one-element tensor, got shape {tuple(count.shape)}")
        dtype = count.dtype if count.is_floating_point() else torch.get_default_dtype()
        total = count.detach().reshape(()).to(dtype)
    else:
        total = torch.tensor(float(count), dtype=torch.get_default_dtype())
    if min_count < 0:
        raise ValueError(f"min_count must be >= 0, got {min_count}")
    size = 1
    if is_distributed(group):
        device = total.device if isinstance(count, Tensor) else _device(group)
        total = total.to(device).clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        size = dist.get_world_size(group)
    total = total.clamp_min(min_count)
    total = torch.where(total == 0, torch.ones_like(total), total)
    return total / size


def token_normalizer(labels: Tensor | Sequence[Tensor], *, ignore_index: int = -100, shift: bool = False,
                     group: object | None = None) -> Tensor:
    r"""The normalizer of a token-level loss over all data-parallel ranks and accumulation micro-steps.

    Counts the tokens whose label is not ``ignore_index`` in every micro-batch of one optimizer
    step (pass them all: ``labels`` is one tensor or a sequence of them), sums the count over
    the ranks of ``group`` and returns :func:`global_normalizer` of it. Each micro-step then
    computes ``loss(..., reduction="mean", normalizer=token_normalizer(all_labels))`` (or the
    sum divided by it) and backpropagates as usual: the gradients accumulated over the
    micro-steps, averaged over the ranks by DDP, are the gradient of one large batch's mean over
    its valid tokens. Dividing each micro-batch by its own count (the per-micro-batch mean)
    weighs a token of a short micro-batch more than one of a long one, and summing the per-step
    means over ``M`` micro-steps makes the gradient ``M`` times too large.

    Sequence and context parallelism split a sequence's tokens over ranks; include those ranks
    in ``group`` (with the data-parallel ones) and give each rank its own slice of the labels.

    Args:
        labels: One optimizer step's labels on this rank: a tensor, or one per micro-step.
        ignore_index: The label of tokens that count nowhere (padding, prompts).
        shift: Count ``labels[..., 1:]``, the labels a causal language model predicts when it
            shifts them inside the loss (as Hugging Face models do).
        group: The process group over which the batch is split (the default group when None).

    Returns:
        A 0-dim float tensor: :math:`\max(n, 1) / W` with :math:`n` the global count.

    Examples:
        >>> steps = [torch.tensor([[5, 7, -100]]), torch.tensor([[1, -100, -100]])]
        >>> token_normalizer(steps)               # one process: 3 valid tokens in two micro-steps
        tensor(3.)
        >>> token_normalizer(steps, shift=True)   # labels[..., 1:]: 7 only
        tensor(1.)
    """
    parts = [labels] if isinstance(labels, Tensor) else list(labels)
    count = torch.zeros((), dtype=torch.int64)
    for part in parts:
        if not isinstance(part, Tensor) or part.is_floating_point():
            raise TypeError(f"labels must be integer tensors (or a sequence of them), got "
                            f"{type(part).__name__ if not isinstance(part, Tensor) else part.dtype}")
        counted = part[..., 1:] if shift else part
        count = count + (counted != ignore_index).sum().cpu()
    device = parts[0].device if parts else torch.device("cpu")
    return global_normalizer(count.to(device).to(torch.get_default_dtype()), group=group)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, group: object | None) -> Tensor:  # noqa: ANN205
        ctx.group = group
        out = tensor.detach().clone().contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN205
        grad = grad.detach().clone().contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce_with_grad(tensor: Tensor, *, group: object | None = None) -> Tensor:
    r"""The sum of ``tensor`` over the ranks, differentiable.

    The backward pass sums the incoming gradients over the ranks, so rank :math:`r`'s input
    receives :math:`\partial (\sum_s L_s) / \partial x_r`: with every rank computing the same
    loss from the summed tensor (batch-pooled Dice statistics), that is :math:`W\,\partial L /
    \partial x_r`, and DDP's average turns it into the single-process gradient. Every rank must
    call it with the same shape. Without ``torch.distributed`` it returns ``tensor`` unchanged.

    Examples:
        >>> all_reduce_with_grad(torch.tensor([1.0, 2.0]))   # one process: unchanged
        tensor([1., 2.])
    """
    if not is_distributed(group):
        return tensor
    return _AllReduceSum.apply(tensor, group)


def _gather_sizes(n: int, device: torch.device, group: object | None) -> list[int]:
    size = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, size, group=group)
    return [int(s.item()) for s in sizes]


def _gather_padded(tensor: Tensor, sizes: list[int], group: object | None) -> Tensor:
    """All ranks' ``tensor`` concatenated along dim 0; shards of unequal length are padded for the
    collective and trimmed after it."""
    longest = max(sizes)
    padded = tensor.detach().contiguous()
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat((padded, pad))
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, group: object | None) -> Tensor:  # noqa: ANN205
        sizes = _gather_sizes(tensor.shape[0], tensor.device, group)
        me = dist.get_rank(group)
        ctx.group, ctx.start, ctx.stop = group, sum(sizes[:me]), sum(sizes[: me + 1])
        return _gather_padded(tensor, sizes, group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN205
        # Every rank holds a gradient for every shard: sum them, keep this rank's slice.
        grad = grad.detach().clone().contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start:ctx.stop], None


def all_gather_with_grad(tensor: Tensor, *, group: object | None = None) -> Tensor:
    r"""Every rank's ``tensor`` concatenated along dim 0 (in rank order), with gradient.

    The gradient of the result flows back to each rank's own slice, summed over the ranks that
    used it: rank :math:`r`'s input receives :math:`\partial (\sum_s L_s) / \partial x_r`, so a
    loss written as in the module docstring (its mean over ranks is the single-process loss)
    gets the single-process gradient after DDP's average. Shards may differ in length along
    dim 0 (a last, smaller batch; an empty shard); the other dimensions must match. Two
    collectives run (the lengths, then the data), whatever the local shard holds.

    Torch's ``torch.distributed.all_gather`` returns tensors without a gradient: a contrastive
    loss built on it trains only on its local positives, silently.

    Args:
        tensor: The local shard ``(n_r, *)``.
        group: The process group (the default group when ``None``).

    Returns:
        ``(sum_r n_r, *)``; ``tensor`` itself without ``torch.distributed`` or with one rank.

    Examples:
        >>> x = torch.ones(2, 3)
        >>> all_gather_with_grad(x) is x                        # one process
        True
    """
    if not is_distributed(group):
        return tensor
    return _AllGather.apply(tensor, group)


def all_gather_no_grad(tensor: Tensor, *, group: object | None = None) -> Tensor:
    """:func:`all_gather_with_grad` without a gradient (labels, masks); shards may differ in length."""
    if not is_distributed(group):
        return tensor
    sizes = _gather_sizes(tensor.shape[0], tensor.device, group)
    return _gather_padded(tensor, sizes, group)


def shard_offset(n: int, *, group: object | None = None) -> int:
    """The index of this rank's first row in the gathered tensor (ranks before it hold the others).

    One collective; 0 without ``torch.distributed``."""
    if not is_distributed(group):
        return 0
    sizes = _gather_sizes(n, _device(group), group)
    return sum(sizes[: dist.get_rank(group)])
