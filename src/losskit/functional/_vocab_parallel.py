r"""Softmax losses over a vocabulary split across ranks (tensor parallelism of the output head).

Rank :math:`r` of a process group holds the contiguous block :math:`[s_r, s_r + V_r)` of the
vocabulary, in rank order (uneven blocks allowed): its rows of the head's weight, or its columns
of the logits. Every rank holds the same tokens and the same targets (global class indices).
A row's log-sum-exp, target logit and smoothing sum are combined over the ranks from a few
numbers per row and rank (one all-gather per chunk of tokens); everything else is local, so:

* the loss, identical on every rank, is the single-process loss on the full vocabulary, under
  every option (label smoothing over the global vocabulary, z-loss on the global log-sum-exp);
* each rank's logits, weight and bias receive their block of the full gradient;
* the gradient of the replicated ``hidden`` is summed over the ranks inside the call, so every
  rank receives the full gradient. Do not sum it again (as a Megatron-style
  ``copy_to_tensor_model_parallel_region`` before the head would).

Every rank must backpropagate the same upstream gradient, as it computes the same loss.

Arguments are checked on every rank and the outcome shared in one all-gather before anything
else (with the shard sizes and a fingerprint of the options and targets), so a bad setup raises
on every rank instead of leaving the others waiting in a collective forever.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from losskit._core.checks import (
    check_class_indices,
    check_class_vector,
    check_distribution,
    check_floating,
    check_has_class_dim,
    check_ignore_index,
    check_in_unit_interval,
    check_number,
    check_tensor,
)
from losskit._core.numerics import compute_dtype
from losskit._core.reduction import Reduction, check_reduction, reduce_loss
from losskit.functional._softmax import cross_entropy_rows
from losskit.functional.classification import cross_entropy

__all__ = ["VocabShard", "agree_on_shards", "gather_full", "is_vocab_parallel", "options_fingerprint",
           "vocab_parallel_cross_entropy"]


def is_vocab_parallel(group: object | None) -> bool:
    """Whether ``group`` splits the vocabulary over more than one rank (a group of one rank is a
    single process)."""
    if group is None:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("process_group was given but torch.distributed is not initialized "
                         "(call torch.distributed.init_process_group first)")
    return dist.get_world_size(group) > 1


def gather_full(x: Tensor | None) -> Tensor | None:
    """A head parameter sharded by FSDP2 (a ``DTensor``, ``Shard(0)`` as ``fully_shard`` makes
    it) gathered whole, differentiably; anything else unchanged.

    The gradient of the gathered tensor goes back reduce-scattered with the average over the
    mesh (``Partial("avg")``), as FSDP2 reduces the gradients of parameters it gathers itself:
    every rank's contribution reaches every shard. (``full_tensor()`` without it keeps only this
    rank's own contribution in its shard.) A head read outside its module's forward, as a fused
    loss reads it, is never gathered by FSDP2, so the loss gathers it here; the whole weight
    stays alive until backward.
    """
    try:
        from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
    except ImportError:  # a torch without DTensor
        return x
    if not isinstance(x, DTensor):
        return x
    for placement in x.placements:
        if not (isinstance(placement, Replicate) or (isinstance(placement, Shard) and placement.dim == 0)):
            raise ValueError(f"a head parameter given as a DTensor must be sharded along its first dimension "
                             f"(Shard(0), as fully_shard makes it) or replicated, got placements {x.placements}")
    return x.full_tensor(grad_placements=[Partial("avg")] * len(x.placements))


def _crc(*parts: object) -> float:
    """A 32-bit checksum of ``parts`` (their repr, or the bytes of tensors), exact in float64."""
    crc = 0
    for part in parts:
        if isinstance(part, Tensor):
            data = part.detach().cpu().contiguous().reshape(-1)
            crc = zlib.crc32(repr((data.dtype, tuple(part.shape))).encode(), crc)
            crc = zlib.crc32(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"", crc)
        else:
            crc = zlib.crc32(repr(part).encode(), crc)
    return float(crc)


@dataclass
class VocabShard:
    """This rank's block of the vocabulary, and the collective that combines row statistics."""

    group: object
    start: int
    classes: int  # the global vocabulary
    sizes: tuple[int, ...]  # every rank's block, in rank order
    weight_sum: Tensor | float = 0.0

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    def combine(self, peak: Tensor, rest: Tensor, x_y: Tensor, smooth: Tensor | None,
                hit: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor]:
        r"""Global row statistics from every rank's local ones (one all-gather of ``(n, 5)``).

        The global peak :math:`m = \max_r m_r` is owned by the first rank that holds it (the
        first column, as ``argmax`` of the full row picks). The rest of the normaliser,
        :math:`\sum_{r \ne o} e^{m_r - m} (1 + \rho_r) + \rho_o`, keeps the owner's exact 1 out
        of the sum, as the single-process kernel does.
        """
        local = [peak, rest, x_y, torch.zeros_like(peak) if smooth is None else smooth, hit.to(peak.dtype)]
        stats = self.all_gather(torch.stack(local, 1))  # (W, n, 5)
        peaks = stats[:, :, 0]
        top = peaks.max(0).values
        owner = (peaks == top).to(torch.uint8).argmax(0)  # the first rank holding the peak
        rescale = torch.exp(peaks - top)
        rescale = torch.where(peaks == -torch.inf, 0.0, rescale)  # a block of -inf logits adds nothing
        shares = rescale * (1 + stats[:, :, 1])
        ranks = torch.arange(len(self.sizes), device=peak.device).unsqueeze(1)
        shares = torch.where(ranks == owner, stats[:, :, 1], shares)
        mine = rescale[self.rank]
        total_rest = shares.sum(0)
        x_y = stats[:, :, 2].sum(0)  # one rank holds the target, the others sent 0
        smooth = None if smooth is None else stats[:, :, 3].sum(0)
        hit = stats.gather(0, owner.view(1, -1, 1).expand(1, -1, 5))[0, :, 4] != 0
        return top, total_rest, mine, x_y, smooth, hit

    def log_sum_exp(self, x: Tensor) -> Tensor:
        """The log-sum-exp over the last dimension of the full rows of which ``x`` holds this
        rank's block (one all-gather of two numbers per row and rank)."""
        top = x.max(-1).values
        top = torch.where(torch.isfinite(top), top, 0.0)  # a block of -inf adds exp(-inf) = 0
        total = torch.exp(x - top.unsqueeze(-1)).sum(-1)
        stats = self.all_gather(torch.stack((top, total), -1))  # (W, ..., 2)
        peak = stats[..., 0].max(0).values
        return peak + torch.log((torch.exp(stats[..., 0] - peak) * stats[..., 1]).sum(0))

    def all_gather(self, x: Tensor) -> Tensor:
        """Every rank's ``x`` stacked along a new first dimension (rank order)."""
        parts = [torch.empty_like(x) for _ in self.sizes]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.stack(parts)

    def all_reduce_(self, x: Tensor) -> Tensor:
        """``x`` summed over the ranks, in place."""
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=self.group)
        return x


def _collective_device(group: object) -> torch.device:
    """Where a collective of a few numbers runs: the current GPU for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree_on_shards(group: object, check: Callable[[], tuple[int, Sequence[object], Sequence[object]]]
                    ) -> VocabShard:
    """Run ``check`` (this rank's argument checks) and share its outcome with every rank in one
    all-gather; raise on every rank when any rank failed its checks, holds an empty block, or was
    called with other options or data.

    ``check`` returns this rank's block size, a fingerprint of the options and shapes (anything
    that decides which collectives run), and the data every rank must hold equal (targets,
    class weights), and raises ``ValueError`` or ``TypeError`` on a bad argument.
    """
    error: Exception | None = None
    rows, fingerprint = 0, 0.0
    try:
        rows, options, data = check()
        fingerprint = _crc(*options, *data)
    except Exception as caught:  # noqa: BLE001  (re-raised below, after the other ranks know)
        error = caught
    mine = torch.tensor([float(error is None), float(rows), fingerprint], dtype=torch.float64,
                        device=_collective_device(group))
    world = dist.get_world_size(group)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    table = torch.stack(parts).cpu()
    if error is not None:
        raise error
    failed = [r for r in range(world) if table[r, 0] == 0]
    if failed:
        raise ValueError(f"process_group: rank(s) {failed} rejected their arguments (their error names it); "
                         f"every rank raises instead of waiting in a collective")
    sizes = tuple(int(n) for n in table[:, 1])
    if min(sizes) < 1:
        raise ValueError(f"weight: every rank must hold a block of at least one class of the vocabulary; "
                         f"the blocks per rank are {list(sizes)}")
    if bool((table[:, 2] != table[0, 2]).any()):
        raise ValueError("process_group: the ranks were called with different options, shapes or targets "
                         "(hidden's shape and dtype, reduction, ignore_index, label_smoothing, z_loss, softcap, "
                         "normalizer, chunk_size, which tensors need a gradient, target, class weights); under "
                         "vocabulary parallelism every rank passes the same, with its own block of the head")
    me = dist.get_rank(group)
    return VocabShard(group, sum(sizes[:me]), sum(sizes), sizes)


def options_fingerprint(*values: object) -> list[object]:
    """``values`` with tensors replaced by what must agree across ranks without their data
    (shape, dtype, whether they need a gradient), so a fingerprint costs no copy."""
    out: list[object] = []
    for value in values:
        if isinstance(value, Tensor):
            out.append((tuple(value.shape), value.dtype, value.requires_grad and torch.is_grad_enabled()))
        else:
            out.append(value)
    return out


# --- cross-entropy on logits already split by vocabulary ----------------------------------------------


class _IndexRows(torch.autograd.Function):
    """Index-target cross-entropy of logit rows ``(n, C_r)`` split by vocabulary, on the shared
    exact kernel; the gradient is computed in forward (it is linear in each row's upstream
    gradient, so backward is one multiply)."""

    @staticmethod
    def forward(ctx, rows: Tensor, index: Tensor, valid: Tensor, target_weight: Tensor | None,
                class_weight: Tensor | None, options: tuple, shard: VocabShard, dtype: torch.dtype) -> Tensor:
        work = rows.detach().to(dtype, copy=True).masked_fill_(~valid.unsqueeze(1), 0.0)  # ignored rows may hold NaN
        eps, zl, cap = options
        loss, _, grad = cross_entropy_rows(work, index, valid, target_weight=target_weight,
                                           class_weight=class_weight, label_smoothing=eps, z_loss=zl,
                                           softcap=cap, with_grad=ctx.needs_input_grad[0], shard=shard)
        ctx.grad, ctx.input_dtype = grad, rows.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("vocab_parallel_cross_entropy: backward ran twice through one graph; "
                               "call the loss again for a second backward")
        return grad.mul_(grad_out.unsqueeze(1).to(grad.dtype)).to(ctx.input_dtype), *(None,) * 7


class _ProbabilityRows(torch.autograd.Function):
    r"""Per-row loss :math:`\sum_k a_k (\mathrm{lse} - \tilde x_k) + z\, u\, \mathrm{lse}^2` of
    probability targets split by vocabulary, :math:`a = w t'`, :math:`u = \sum_k w_k t_k` (1
    without class weights), and its gradient :math:`p_k (A + 2 z u\, \mathrm{lse}) - a_k` with
    :math:`A = \sum_k a_k`, computed in forward. The global log-sum-exp takes a max and a sum over
    the ranks; the loss, :math:`A` and :math:`u`, one more sum. The targets are constants."""

    @staticmethod
    def forward(ctx, x: Tensor, weighted: Tensor, unit_terms: Tensor | None, z_loss: float,
                shard: VocabShard) -> tuple[Tensor, Tensor]:
        top = x.max(1).values
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=shard.group)
        top = torch.where(torch.isfinite(top), top, 0.0)
        p = torch.exp(x - top.unsqueeze(1))
        total = shard.all_reduce_(p.sum(1))
        lse = top + torch.log(total)
        p.div_(total.unsqueeze(1))
        gap = torch.where(weighted == 0, 0.0, lse.unsqueeze(1) - x)  # 0 where nothing is read (-inf logits)
        unit = torch.ones_like(lse) if unit_terms is None else unit_terms.sum(1)
        loss, pull, unit = shard.all_reduce_(torch.stack(((weighted * gap).sum(1), weighted.sum(1), unit), 1)).unbind(1)
        if unit_terms is None:
            unit = torch.ones_like(lse)  # not summed: each rank added 1
        if z_loss:
            loss = loss + z_loss * lse.square() * unit
            pull = pull + 2 * z_loss * lse * unit
        ctx.grad = p.mul_(pull.unsqueeze(1)).sub_(weighted)
        ctx.mark_non_differentiable(unit)
        return loss, unit

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor, _unit: Tensor) -> tuple[Tensor | None, ...]:
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("vocab_parallel_cross_entropy: backward ran twice through one graph; "
                               "call the loss again for a second backward")
        return grad.mul_(grad_out.unsqueeze(1)), None, None, None, None


def vocab_parallel_cross_entropy(
    input: Tensor,
    target: Tensor,
    *,
    process_group: object | None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: Reduction = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""Cross-entropy of logits split by vocabulary over the ranks of ``process_group``.

    :func:`losskit.cross_entropy` of the full logits, computed from this rank's block of classes
    (columns :math:`[s_r, s_r + C_r)`, blocks contiguous in rank order, of any sizes): the value,
    identical on every rank, and each rank's block of the gradient are those of the full
    computation, under every option of :func:`losskit.cross_entropy`, including label smoothing
    over the global vocabulary, z-loss on the global log-sum-exp, softcap and probability targets
    (what ``torch.distributed.tensor.parallel.loss_parallel`` lacks). Use it for a head whose
    logits are already computed (a column-parallel output layer); for a head that has not run
    yet, :func:`losskit.fused_linear_cross_entropy` with ``process_group=`` never forms the
    logits at all.

    Index targets run the shared exact kernel with one all-gather of five numbers per token and
    rank; probability targets take three all-reduces of one or two numbers per token. Every rank
    must backpropagate the same upstream gradient (each holds the same loss).

    .. math::
        \mathrm{lse}_n = \log \sum_{r} \sum_{k \in 	ext{block } r} e^{	ilde x_{n,k}}, \qquad
        \ell_n = (1-\varepsilon)\, w_{y_n} (\mathrm{lse}_n - \tilde x_{n,y_n})
                 + \frac{\varepsilon}{C} \sum_k w_k (\mathrm{lse}_n - \tilde x_{n,k})
                 + z\, w_{y_n} \mathrm{lse}_n^2

    Args:
        input: This rank's block of the logits, class dimension 1.
        target: Global class indices (integer, the same on every rank), or this rank's block of
            the class probabilities (floating, ``input``'s shape; the rows sum to 1 over all ranks).
        process_group: The ranks that share the vocabulary (``None`` or a group of one rank: the
            plain :func:`losskit.cross_entropy`).
        weight: Per-class weights of the whole vocabulary :math:`(C,)`, the same on every rank.
        ignore_index, label_smoothing, z_loss, softcap, reduction, normalizer: As in
            :func:`losskit.cross_entropy`.

    Shape:
        - input: :math:`(N, C_r)` or :math:`(N, C_r, d_1, \dots, d_k)`.
        - target: :math:`(N, d_1, \dots, d_k)` integer, or ``input``'s shape floating.
        - output: scalar, or :math:`(N, d_1, \dots, d_k)` with ``reduction="none"``.

    Returns:
        The loss in ``input``'s dtype, the same on every rank.

    Raises:
        ValueError: On every rank, when any rank's arguments are bad, the ranks pass different
            options, targets or class weights, a rank holds no class, a class index lies outside
            the global vocabulary, or ``weight`` does not have one entry per global class.
        TypeError: A non-floating ``input``, a boolean target.

    Examples:
        >>> import torch, losskit
        >>> from losskit.functional import vocab_parallel_cross_entropy
        >>> logits, target = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])
        >>> # Rank r of a group passes logits[:, lo_r:hi_r]; without a group it is cross_entropy:
        >>> vocab_parallel_cross_entropy(logits, target, process_group=None)  # log(1 + 2 e^-2)
        tensor(0.2395)

    References:
        Shoeybi et al., "Megatron-LM" (vocabulary-parallel cross-entropy), 2019. Torch's
        ``loss_parallel``. Options and defaults follow :func:`losskit.cross_entropy`.
    """
    if not is_vocab_parallel(process_group):
        return cross_entropy(input, target, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                             z_loss=z_loss, softcap=softcap, reduction=reduction, normalizer=normalizer)

    def check() -> tuple[int, list[object], list[object]]:
        check_reduction(reduction, normalizer)
        check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        check_number("z_loss", z_loss, low=0.0)
        if softcap is not None:
            check_number("softcap", softcap, low=0.0, low_open=True)
        check_floating("input", input)
        check_tensor("target", target)
        check_has_class_dim("input", input)
        check_ignore_index(ignore_index, optional=False)
        if weight is not None:
            check_tensor("weight", weight)
        rows_shape = (input.shape[0], *input.shape[2:])
        if target.is_floating_point():
            if target.shape != input.shape:
                raise ValueError(f"target has a floating dtype, so it holds this rank's block of the class "
                                 f"probabilities and must have input's shape {tuple(input.shape)}, got shape "
                                 f"{tuple(target.shape)}; class indices need an integer dtype")
            check_in_unit_interval("target", target)
        elif target.dtype == torch.bool or target.is_complex():
            raise TypeError(f"target must be integer class indices or floating probabilities, got dtype {target.dtype}")
        elif target.shape != rows_shape:
            raise ValueError(f"target holds class indices, so it must have shape {rows_shape} (input's shape "
                             f"without the class dimension 1), got {tuple(target.shape)}")
        options = options_fingerprint(input.dim(), rows_shape, input.dtype,
                                      input.requires_grad and torch.is_grad_enabled(), target.is_floating_point(),
                                      ignore_index, label_smoothing, z_loss, softcap, reduction,
                                      None if isinstance(normalizer, Tensor) else normalizer)
        shared = [None if target.is_floating_point() else target, weight,
                  normalizer if isinstance(normalizer, Tensor) else None]
        return input.shape[1], options, shared

    shard = agree_on_shards(process_group, check)
    classes, block = shard.classes, input.shape[1]
    dtype = compute_dtype(input.dtype)
    eps, zl = float(label_smoothing), float(z_loss)
    cap = None if softcap is None else float(softcap)
    if weight is not None:
        check_class_vector("weight", weight, classes)
        weight = weight.detach().to(device=input.device, dtype=dtype)
    local_weight = None if weight is None else weight[shard.start:shard.start + block]
    rows = input.movedim(1, -1).reshape(-1, block)
    if target.is_floating_point():
        soft = target.movedim(1, -1).reshape(-1, block).to(dtype)
        # The rows of the probabilities sum to 1 over all ranks (checked on the sums).
        totals = shard.all_reduce_(soft.detach().sum(1, dtype=torch.float64))
        check_distribution("target", totals.unsqueeze(1), dim=1)
        x = rows.to(dtype)
        if cap is not None:
            x = cap * torch.tanh(x / cap)
        smoothed = soft * (1 - eps) + eps / classes if eps else soft
        weighted = smoothed if local_weight is None else smoothed * local_weight
        unit_terms = None if local_weight is None else soft * local_weight
        loss, unit = _ProbabilityRows.apply(x, weighted.detach(), None if unit_terms is None else unit_terms.detach(),
                                            zl, shard)
        unit = None if weight is None else unit
        mask = None
    else:
        check_class_indices("target", target, classes, ignore_index)
        labels = target.reshape(-1).to(device=input.device, dtype=torch.long)
        mask = labels != ignore_index
        index = torch.where(mask, labels, torch.zeros_like(labels))
        unit = None if weight is None else weight[index]
        shard.weight_sum = float(classes) if weight is None else weight.sum()
        loss = _IndexRows.apply(rows, index, mask, unit, local_weight, (eps, zl, cap), shard, dtype)
        mask = mask.view(target.shape)
    shape = (input.shape[0], *input.shape[2:])
    return reduce_loss(loss.view(shape), reduction, weight=None if unit is None else unit.view(shape), mask=mask,
                       normalizer=normalizer, weight_applied=True, out_dtype=input.dtype,
                       inputs={"input": input, "target": target})
