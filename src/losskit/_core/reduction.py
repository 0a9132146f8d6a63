"""The one place where ``reduction`` and ``normalizer`` are interpreted.

Every loss computes its *natural unit* (one value per element, per sample, per box, or per
(sample, class)) and hands it here. The rules, identical in every loss:

* ``"none"``: the natural unit, with weights applied and ignored units set to 0.
* ``"sum"``: the sum of ``"none"``.
* ``"mean"``: the weighted mean ``sum(w * l) / sum(w)``; the plain mean without weights;
  ignored units count in neither sum.
* ``normalizer=n`` (with ``"mean"``): ``sum(w * l) / n`` instead. Use it to divide by a count
  fixed outside the batch: tokens over all gradient-accumulation steps, positives over all
  ranks, detection's "average factor".
* Empty input, or every unit ignored or weighted 0, gives ``0`` (with a gradient), never NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

from losskit._core.checks import (
    check_broadcastable,
    check_loss_finite,
    check_normalizer_value,
    check_number,
    check_one_of,
    check_same_device,
)

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[str, ...] = ("none", "mean", "sum")


def check_reduction(reduction: object, normalizer: object = None) -> None:
    """Validate ``reduction`` and ``normalizer`` before any work is done."""
    check_one_of("reduction", reduction, REDUCTIONS)
    if normalizer is None:
        return
    if reduction != "mean":
        raise ValueError(f"normalizer= divides the weighted sum, so it needs reduction='mean'; "
                         f"got reduction={reduction!r}")
    if isinstance(normalizer, Tensor):
        if normalizer.numel() != 1:
            raise ValueError(f"normalizer must be a number or a one-element tensor, got shape "
                             f"{tuple(normalizer.shape)}")
    else:
        check_number("normalizer", normalizer, low=0.0, low_open=True)


def reduce_loss(
    loss: Tensor,
    reduction: Reduction = "mean",
    *,
    weight: Tensor | None = None,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    weight_applied: bool = False,
    out_dtype: torch.dtype | None = None,
    inputs: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Apply weights and an ignore mask to a natural-unit loss, then reduce it.

    Args:
        loss: The loss in its natural unit.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        weight: Weights broadcastable to ``loss`` (a weight may not grow the loss's shape).
        mask: Boolean, ``True`` where the unit counts; ``False`` units contribute exactly 0
            even if their loss is NaN or infinite (ignored pixels may hold anything).
        normalizer: With ``"mean"``, divide the weighted sum by this instead of ``sum(w)``. A
            tensor must be > 0 (a value check; numbers are always checked).
        weight_applied: ``loss`` already includes ``weight`` (losses whose weight enters the
            formula in more than one place, such as cross-entropy with label smoothing);
            ``weight`` is then used only as the denominator of ``"mean"``.
        out_dtype: Cast the result to this dtype (the input dtype of the loss).
        inputs: The tensors the loss came from, by argument name. When value checks are on,
            a result that is NaN or infinite raises a ``ValueError`` naming the one to blame
            (``weight`` and ``normalizer`` are suspects too), or saying that the result
            overflows ``out_dtype``.

    Returns:
        The reduced loss; a scalar unless ``reduction="none"``.

    Examples:
        >>> loss = torch.tensor([1.0, 2.0, 3.0])
        >>> reduce_loss(loss, "mean", weight=torch.tensor([1.0, 1.0, 2.0]))  # (1 + 2 + 6) / 4
        tensor(2.2500)
        >>> reduce_loss(loss[:0], "mean")  # empty: 0, not NaN
        tensor(0.)
    """
    check_reduction(reduction, normalizer)
    check_normalizer_value(normalizer)
    if weight is not None:
        # The loss lives on the input's device, so the message can name the argument users passed.
        check_same_device("input", loss, "weight", weight)
        check_broadcastable("weight", weight, loss.shape, "the loss's natural unit, shape")
    options = {"weight": weight, "normalizer": normalizer}
    if mask is not None:
        loss = torch.where(mask, loss, loss.new_zeros(()))
        weight = mask.to(loss.dtype) if weight is None else torch.where(mask, weight, weight.new_zeros(()))
    if weight is not None and not weight_applied:
        loss = loss * weight
    if reduction == "none":
        return _finish(loss, out_dtype, inputs, options)
    total = loss.sum()
    if reduction == "mean":
        if normalizer is not None:
            total = total / normalizer
        else:
            denominator = weight.expand_as(loss).sum() if weight is not None else loss.numel()
            # Empty or fully-ignored input: 0 / 1 = 0 (the sum of nothing), with a gradient.
            if isinstance(denominator, Tensor):
                denominator = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
            else:
                denominator = max(denominator, 1)
            total = total / denominator
    return _finish(total, out_dtype, inputs, options)


def _finish(result: Tensor, out_dtype: torch.dtype | None, inputs: Mapping[str, Tensor] | None,
            options: Mapping[str, object]) -> Tensor:
    """The result in ``out_dtype``, checked for finiteness there (a float16 result can overflow)."""
    out = result if out_dtype is None else result.to(out_dtype)
    if inputs is not None:
        check_loss_finite(out, inputs, computed=result, options=options)
    return out


def reduce_for(
    loss: Tensor,
    input: Tensor,
    target: Tensor,
    reduction: Reduction,
    *,
    weight: Tensor | None = None,
    normalizer: float | Tensor | None = None,
    others: Mapping[str, object] | None = None,
    **options,
) -> Tensor:
    """:func:`reduce_loss` for a loss computed from ``input`` and ``target``: the result in the
    input's dtype, and both tensors named for the finiteness value check, with the tensor options
    in ``others`` (by name) that the result depends on too. ``options`` go to :func:`reduce_loss`
    (``mask``, ``weight_applied``)."""
    return reduce_loss(loss, reduction, weight=weight, normalizer=normalizer, out_dtype=input.dtype,
                       inputs={"input": input, "target": target, **(others or {})}, **options)
