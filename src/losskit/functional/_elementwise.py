"""The frame every elementwise regression loss shares: the docstring sections it fills in
(:data:`_docs`) and the checks, upcast and reduction around its formula (:func:`_elementwise`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from losskit._core.checks import (
    check_floating,
    check_same_device,
    check_same_shape,
)
from losskit._core.docs import shared_docs
from losskit._core.numerics import upcast
from losskit._core.reduction import Reduction, check_reduction, reduce_for

_COMMON_ARGS = """weight: Optional weights broadcastable to ``input`` (they may not grow its shape).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``; ``"mean"`` is the weighted mean
            ``sum(w * l) / sum(w)`` (see :func:`losskit.reduce_loss`).
        normalizer: With ``"mean"``, divide the weighted sum by this count instead of ``sum(w)``."""

_ELEMENTWISE_SHAPE = """- input: :math:`(*)`.
        - target: :math:`(*)`, same shape as ``input``.
        - output: scalar, or :math:`(*)` with ``reduction="none"``."""

_ELEMENTWISE_RETURNS = """The loss, in ``input``'s dtype; 0 (with a gradient) for empty input."""

_COMMON_RAISES = """TypeError: If ``input`` or ``target`` is not floating point.
        ValueError: If ``target``'s shape differs from ``input``'s, an option is out of range,
            ``reduction`` is unknown, or (value check) the inputs are not finite."""


# The argument, shape, return and error text every loss here shares.
_docs = shared_docs(
    common_args=_COMMON_ARGS,
    elementwise_shape=_ELEMENTWISE_SHAPE,
    elementwise_returns=_ELEMENTWISE_RETURNS,
    common_raises=_COMMON_RAISES,
)


def _elementwise(
    input: Tensor,
    target: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    weight: Tensor | None,
    reduction: Reduction,
    normalizer: float | Tensor | None,
    *,
    target_shape: torch.Size | None = None,
    others: Mapping[str, object] | None = None,
) -> Tensor:
    """The shared preamble and ending: validate, upcast, ``loss_fn(input, target)``, reduce
    (``others``: tensor options named in the finiteness check)."""
    check_reduction(reduction, normalizer)
    check_floating("input", input)
    check_floating("target", target)
    check_same_device("input", input, "target", target)
    if target_shape is None:
        check_same_shape("input", input, "target", target)
    elif target.shape != target_shape:
        raise ValueError(f"target must have shape {tuple(target_shape)}, got shape {tuple(target.shape)}")
    x = upcast(input)
    loss = loss_fn(x, target.to(x.dtype))
    return reduce_for(loss, input, target, reduction, weight=weight, normalizer=normalizer, others=others)
