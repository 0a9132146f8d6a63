"""Shared preparation of dense (segmentation) inputs: logits ``(N, C, *spatial)`` and targets.

Every segmentation loss starts here, so the rules are the same everywhere:

* ``activation`` ("softmax" over dim 1, "sigmoid", or ``None`` for probabilities given by the
  caller) is applied to the full logits **before** any channel selection or masking.
* A target is either integer class indices ``(N, *spatial)`` (or ``(N, 1, *spatial)``), or a
  floating one-hot / soft target with the input's shape. Index targets are never expanded to a
  one-hot tensor here; losses that truly need one build it themselves.
* ``ignore_index`` (index targets only) gives a boolean ``valid`` mask ``(N, *spatial)``.
* ``include_background=False`` drops channel 0 *after* the activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from losskit._core.checks import (
    check_class_indices,
    check_floating,
    check_ignore_index,
    check_in_unit_interval,
    check_one_of,
    check_same_device,
    check_tensor,
)
from losskit._core.numerics import log_softmax, upcast

ACTIVATIONS = ("softmax", "sigmoid", None)


@dataclass
class DenseTarget:
    """A validated segmentation target: exactly one of ``index`` and ``dense`` is set."""

    index: Tensor | None  # (N, *spatial) int64; ignored positions replaced by 0
    dense: Tensor | None  # (N, C, *spatial) in the compute dtype
    valid: Tensor | None  # (N, *spatial) bool, False where ignored; None when nothing is ignored


def check_activation(input: Tensor, activation: object) -> None:
    """``activation`` is one of :data:`ACTIVATIONS`, and a softmax has more than one channel."""
    check_one_of("activation", activation, ACTIVATIONS)
    if activation == "softmax" and input.dim() > 1 and input.shape[1] == 1:
        raise ValueError(
            "activation='softmax' over a single channel is constant 1; use activation='sigmoid' for "
            "binary segmentation with one channel, or give two channels"
        )


def probabilities(input: Tensor, activation: str | None) -> Tensor:
    """Class probabilities ``(N, C, *spatial)`` in the compute dtype (float32 for half inputs).

    The softmax is the exponential of the exact log-softmax (:func:`losskit._core.numerics.log_softmax`),
    whose gradient keeps its precision where one class is nearly certain (``torch.softmax``'s
    backward forms :math:`1 - p` there and loses it).
    """
    return probabilities_and_misses(input, activation)[0]


def probabilities_and_misses(input: Tensor, activation: str | None) -> tuple[Tensor, Tensor]:
    """Class probabilities ``p`` and their complements ``1 - p``, each to full relative precision:
    ``1 - p`` is ``-expm1(log p)`` for the softmax and ``sigmoid(-x)`` for the sigmoid, where
    ``1 - p`` itself would keep a few digits of a confident prediction's miss."""
    check_activation(input, activation)
    x = upcast(input)
    if activation == "softmax":
        log_p = log_softmax(x, 1)
        return log_p.exp(), -torch.expm1(log_p)
    if activation == "sigmoid":
        return torch.sigmoid(x), torch.sigmoid(-x)
    return x, 1 - x


def miss(probs: Tensor, misses: Tensor, labels: Tensor) -> Tensor:
    """``|labels - probs|``, from ``misses = 1 - probs`` where a label is exactly 1 (no cancellation)."""
    return torch.where(labels == 1, misses, (labels - probs).abs())


def dense_target(input: Tensor, target: Tensor, *, ignore_index: int | None, compute_dtype: torch.dtype) -> DenseTarget:
    """Validate ``target`` against logits ``input`` of shape ``(N, C, *spatial)``."""
    check_ignore_index(ignore_index)
    if not _is_index_target(input, target):
        if target.shape != input.shape:
            raise ValueError(
                f"target has a floating dtype, so it holds one-hot or soft labels and must have input's shape "
                f"{tuple(input.shape)}, got {tuple(target.shape)}; class indices of shape "
                f"{(input.shape[0], *input.shape[2:])} need an integer dtype"
            )
        if ignore_index is not None:
            raise ValueError("ignore_index applies to integer class-index targets; mask one-hot targets "
                             "with weight= instead")
        check_in_unit_interval("target", target)
        return DenseTarget(None, target.to(compute_dtype), None)
    labels = index_labels(input, target, ignore_index=ignore_index).long()
    if ignore_index is None:
        return DenseTarget(labels, None, None)
    valid = labels != ignore_index
    return DenseTarget(torch.where(valid, labels, torch.zeros_like(labels)), None, valid)


def _is_index_target(input: Tensor, target: Tensor) -> bool:
    """Check both tensors; ``True`` for an integer (class-index) target, ``False`` for a floating one."""
    check_floating("input", input)
    check_tensor("target", target)
    check_same_device("input", input, "target", target)
    if input.dim() < 3:
        raise ValueError(f"input must have shape (N, C, *spatial) with at least one spatial dimension, "
                         f"got {tuple(input.shape)}")
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"target must be integer class indices or floating labels, got dtype {target.dtype}")
    return not target.is_floating_point()


def index_labels(input: Tensor, target: Tensor, *, ignore_index: int | None) -> Tensor:
    """Validated class indices ``(N, *spatial)`` as given: their own integer dtype, ignored values kept.

    The zero-copy form of an index target (a ``(N, 1, *spatial)`` target is squeezed, a view), for
    kernels that convert the labels chunk by chunk rather than holding an int64 copy of the map.
    """
    check_ignore_index(ignore_index)
    if not _is_index_target(input, target):
        raise TypeError(f"target must hold integer class indices here, got dtype {target.dtype}")
    spatial = (input.shape[0], *input.shape[2:])
    if target.dim() == input.dim() and target.shape[1] == 1:
        target = target.squeeze(1)  # (N, 1, *spatial), the MONAI layout
    if target.shape != spatial:
        raise ValueError(f"target holds class indices, so it must have shape {spatial} or "
                         f"{(spatial[0], 1, *spatial[1:])}, got {tuple(target.shape)}")
    check_class_indices("target", target, input.shape[1], ignore_index)
    return target


def one_hot(target: DenseTarget, num_classes: int, dtype: torch.dtype) -> Tensor:
    """The target as ``(N, C, *spatial)`` labels, zero at ignored positions (builds a one-hot for indices)."""
    if target.dense is not None:
        return target.dense
    labels = torch.nn.functional.one_hot(target.index, num_classes).movedim(-1, 1).to(dtype)
    return labels if target.valid is None else labels * target.valid.unsqueeze(1)


def drop_background(x: Tensor, include_background: bool) -> Tensor:
    """Channels 1.. of ``(N, C, ...)`` when the background (channel 0) is excluded."""
    if include_background:
        return x
    if x.shape[1] < 2:
        raise ValueError("include_background=False needs at least two channels (channel 0 is the background)")
    return x[:, 1:]
