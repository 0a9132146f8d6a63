"""How the contract suite calls each registered loss.

Every registered loss needs one :class:`Spec` here (``tests/test_contract.py`` fails for a
loss without one). A spec says how to make a small valid input, which shape ``reduction="none"``
returns (the loss's natural unit), and how weights enter the weighted mean.

The family files ``spec_<family>.py`` define the specs; this module gathers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Case:
    """One call: ``fn(input, target, **kwargs)``."""

    input: Tensor
    target: Tensor
    kwargs: dict[str, Any] = field(default_factory=dict)

    def cast(self, dtype: torch.dtype) -> Case:
        """The same case with every floating tensor (input, float targets, tensor kwargs) in ``dtype``."""

        def conv(x: Any) -> Any:
            return x.to(dtype) if isinstance(x, Tensor) and x.is_floating_point() else x

        return Case(conv(self.input), conv(self.target), {k: conv(v) for k, v in self.kwargs.items()})


@dataclass
class Spec:
    """How the contract suite exercises one loss.

    Attributes:
        make: ``make(n, generator) -> Case`` with ``n`` leading samples (``n`` may be 0), in float64.
            Inputs must keep away from kinks (``|e| = delta`` for Huber) so gradcheck is meaningful.
        unit_shape: The shape of ``reduction="none"`` for a case.
        weight: ``weight(case, generator) -> (weight, effective)``: a ``weight=`` value and the
            per-unit weight it amounts to (the denominator of the weighted mean). ``None`` when
            the loss takes no ``weight=``.
        grad_kwargs: Names of tensor kwargs that gradcheck also differentiates (e.g. ``var``).
        gradgrad: Whether the loss is twice differentiable at the spec's inputs.
        low_precision_tol: ``(rtol, atol)`` against float64 for float16/bfloat16 inputs.
    """

    make: Callable[[int, torch.Generator], Case]
    unit_shape: Callable[[Case], tuple[int, ...]]
    weight: Callable[[Case, torch.Generator], tuple[Tensor, Tensor]] | None = None
    grad_kwargs: tuple[str, ...] = ()
    gradgrad: bool = True
    low_precision_tol: tuple[float, float] = (2e-2, 2e-2)


def elementwise_weight(case: Case, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """A positive weight with the unit's shape; it is also the effective weight."""
    w = torch.rand(case.input.shape, generator=gen, dtype=torch.float64) + 0.5
    return w, w


def class_weight(num_classes: int) -> Callable[[Case, torch.Generator], tuple[Tensor, Tensor]]:
    """A per-class weight for index targets at dim 1: the effective weight is ``w[target]``."""

    def make(case: Case, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        w = torch.rand(num_classes, generator=gen, dtype=torch.float64) + 0.5
        return w, w[case.target]

    return make


def dense_index_case(num_classes: int, spatial: tuple[int, ...], scale: float, **kwargs: Any):
    """``make`` for segmentation losses: logits ``(n, C, *spatial)`` times ``scale``, index targets."""

    def make(n: int, gen: torch.Generator) -> Case:
        logits = torch.randn((n, num_classes, *spatial), generator=gen, dtype=torch.float64) * scale
        target = torch.randint(num_classes, (n, *spatial), generator=gen)
        return Case(logits, target, dict(kwargs))

    return make


def same_shape(case: Case) -> tuple[int, ...]:
    return tuple(case.input.shape)


def without_class_dim(case: Case) -> tuple[int, ...]:
    return (case.input.shape[0], *case.input.shape[2:])


def registry() -> dict[str, Spec]:
    """Every spec, by registered name."""
    from tests import (
        spec_boundary,
        spec_boxes,
        spec_classification,
        spec_contrastive,
        spec_detection,
        spec_divergence,
        spec_large_vocab,
        spec_lovasz,
        spec_regression,
        spec_rl,
        spec_segmentation,
    )

    specs: dict[str, Spec] = {}
    modules = (spec_regression, spec_classification, spec_divergence, spec_boxes, spec_detection,
               spec_segmentation, spec_lovasz, spec_boundary, spec_large_vocab, spec_rl, spec_contrastive)
    for module in modules:
        overlap = specs.keys() & module.SPECS.keys()
        assert not overlap, f"specs defined twice: {overlap}"
        specs.update(module.SPECS)
    return specs
