"""The targets of the softmax losses: index or probability targets checked and prepared once
(:func:`_prepare_softmax`), and the per-sample loss reduced with their class weights (:func:`_finish`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from losskit._core.checks import (
    check_class_indices,
    check_class_vector,
    check_distribution,
    check_floating,
    check_has_class_dim,
    check_ignore_index,
    check_in_unit_interval,
    check_number,
    check_same_device,
    check_tensor,
)
from losskit._core.numerics import (
    compute_dtype,
    ignored_without_gradient,
    upcast,
)
from losskit._core.reduction import Reduction, reduce_loss


@dataclass
class _ClassTargets:
    """A validated softmax target: either indices (with an ignore mask) or probabilities."""

    index: Tensor | None  # (N, *d) int64, ignored positions replaced by 0 so gathers stay in range
    mask: Tensor | None  # (N, *d) bool, False where target == ignore_index
    soft: Tensor | None  # (N, C, *d) probabilities in the compute dtype
    labels: Tensor | None = None  # (N, *d) int64 as given, ignore_index included
    ignore_index: int = -100

    def unit_weight(self, weight: Tensor | None) -> Tensor | None:
        """Each sample's weight in the weighted mean: ``w[y]``, or ``sum_c w_c t_c`` for probabilities."""
        if weight is None:
            return None
        if self.index is not None:
            return weight[self.index]
        return (self.soft * _along_class_dim(weight, self.soft)).sum(1)


def _along_class_dim(vector: Tensor, like: Tensor) -> Tensor:
    """View a per-class vector so it broadcasts along dim 1 of ``like``."""
    return vector.view(1, -1, *([1] * (like.dim() - 2)))


def _prepare_softmax(
    input: Tensor,
    target: Tensor,
    *,
    ignore_index: int,
    weight: Tensor | None,
    allow_soft: bool = True,
) -> tuple[Tensor, _ClassTargets, Tensor | None, bool]:
    """Validate a softmax loss's inputs; return (logits, targets, class weight, unbatched).

    The logits are in the compute dtype for probability targets and as given for index targets
    (:func:`upcast` them before computing anything but the cross-entropy kernel).
    """
    check_floating("input", input)
    check_tensor("target", target)
    check_same_device("input", input, "target", target)
    check_has_class_dim("input", input)
    check_ignore_index(ignore_index, optional=False)
    unbatched = input.dim() == 1
    if unbatched:
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    num_classes = input.shape[1]
    dtype = compute_dtype(input.dtype)
    if weight is not None:
        check_class_vector("weight", weight, num_classes, input=input)
        weight = weight.to(dtype)

    if target.is_floating_point():
        if not allow_soft:
            raise TypeError(f"target must hold integer class indices for this loss, got dtype {target.dtype}")
        if target.shape != input.shape:
            index_shape = (input.shape[0], *input.shape[2:])
            raise ValueError(
                f"target has a floating dtype, so it holds class probabilities and must have input's "
                f"shape {tuple(input.shape)}, got shape {tuple(target.shape)}; class indices of shape "
                f"{index_shape} need an integer dtype"
            )
        check_in_unit_interval("target", target)
        check_distribution("target", target)
        return upcast(input), _ClassTargets(None, None, upcast(target).to(dtype)), weight, unbatched

    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"target must be integer class indices or floating probabilities, got dtype {target.dtype}")
    index_shape = (input.shape[0], *input.shape[2:])
    if target.shape != index_shape:
        raise ValueError(
            f"target holds class indices, so it must have shape {index_shape} (input's shape without "
            f"the class dimension 1), got {tuple(target.shape)}"
        )
    check_class_indices("target", target, num_classes, ignore_index)
    labels = target.long()
    mask = labels != ignore_index
    index = torch.where(mask, labels, torch.zeros_like(labels))
    # Index targets: the logits as given; the cross-entropy kernel reads them in the compute dtype
    # without a full upcast copy, and the other losses call upcast() themselves. An ignored row may
    # hold NaN: its gradient is 0.
    logits = ignored_without_gradient(input, mask.unsqueeze(1))
    return logits, _ClassTargets(index, mask, None, labels, ignore_index), weight, unbatched


def _gather_class(values: Tensor, index: Tensor) -> Tensor:
    """``values[n, index[n, *d], *d]``: one entry per sample along the class dim."""
    return values.gather(1, index.unsqueeze(1)).squeeze(1)


def _check_smoothing(label_smoothing: float) -> float:
    return check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)


def _smoothed(soft: Tensor, label_smoothing: float) -> Tensor:
    """Probability targets with smoothing: :math:`(1 - \\varepsilon)\\, t + \\varepsilon / C`."""
    return soft * (1 - label_smoothing) + label_smoothing / soft.shape[1] if label_smoothing else soft


def _finish(
    loss: Tensor,
    targets: _ClassTargets,
    weight: Tensor | None,
    input: Tensor,
    target: Tensor,
    unbatched: bool,
    reduction: Reduction,
    normalizer: float | Tensor | None,
) -> Tensor:
    """Reduce a per-sample loss whose class weights are already applied."""
    if unbatched and reduction == "none":
        loss = loss.squeeze(0)
        mask = None if targets.mask is None else targets.mask.squeeze(0)
    else:
        mask = targets.mask
    unit_weight = targets.unit_weight(weight)
    if unit_weight is not None and unbatched and reduction == "none":
        unit_weight = unit_weight.squeeze(0)
    return reduce_loss(
        loss,
        reduction,
        weight=unit_weight,
        mask=mask,
        normalizer=normalizer,
        weight_applied=True,
        out_dtype=input.dtype,
        inputs={"input": input, "target": target},
    )
