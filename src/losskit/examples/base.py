"""How to call each registered loss: the :class:`Spec` of the table of example inputs.

Every registered loss needs one :class:`Spec` (``tests/test_contract.py`` fails for a loss
without one). A spec says how to make a small valid input, which shape ``reduction="none"``
returns (the loss's natural unit), and how weights enter the weighted mean.

The family modules ``losskit.examples.<family>`` define the specs; :mod:`losskit.examples`
gathers them.

A spec also states the loss's accuracy contract (``tests/test_accuracy.py``): the input regimes
where float32 and half precision are compared with float64 (:class:`Regime`, one maker per
family), and the error :class:`Budget` it keeps there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from losskit.examples.probes import Sweep


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


# --- the accuracy contract ---------------------------------------------------------------------

#: Every regime a loss is checked in, and what it means. A spec gives each one a maker or a
#: reason why it does not apply (``Spec.not_applicable``); a new loss without them fails.
REGIMES: dict[str, str] = {
    "typical": "the contract's own inputs (losskit/examples/<family>.py)",
    "saturated": "logits up to |x| = 30 (residuals, log-ratios and scores of the same size elsewhere)",
    "near_converged": "a loss below 1e-3: the values where terms cancel",
    "large": "a reduction over at least 1e6 elements (region losses: at least 65k voxels per class)",
    "imbalance": "one positive in 1e5",
    "tiny_boxes": "sub-pixel boxes on a 640-pixel image",
    "huge_boxes": "boxes of about 1e5 pixels",
}

FLOAT32 = (torch.float32,)
ALL_LOW = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Regime:
    """One input regime of the accuracy contract.

    Attributes:
        make: ``make(generator) -> Case`` in float64; the contract rounds it to each dtype and
            compares the result with float64 on the same rounded inputs.
        reductions: The reductions compared. ``"none"`` compares every unit, so a loss whose
            small units lose precision cannot hide behind a sum.
        dtypes: The dtypes compared (float16 cannot hold coordinates of 1e5 pixels).
        logits: ``logits(case)``: the logits the loss reduces, when they are not the input itself
            (similarities over a temperature, a head's output); the regime claims are checked on them.
    """

    make: Callable[[torch.Generator], Case]
    reductions: tuple[str, ...] = ("none", "sum")
    dtypes: tuple[torch.dtype, ...] = ALL_LOW
    logits: Callable[[Case], Tensor] | None = None


@dataclass(frozen=True)
class Budget:
    """The error a loss may make against float64 on the same inputs, relative.

    ``value`` bounds ``|l - l64| / |l64|`` (per unit with ``reduction="none"``), ``grad`` bounds
    ``||g - g64|| / ||g64||`` for the input gradient. float16 and bfloat16 compute through float32,
    so their budget is the same plus the rounding of the result once to the low dtype (relative
    ``2**-11`` for float16, ``2**-8`` for bfloat16, and half the smallest subnormal), which the
    contract adds itself; ``half`` replaces ``(value, grad)`` where more of the computation runs
    in the low dtype. Anything beyond the defaults needs ``why``.
    """

    value: float = 1e-5
    grad: float = 1e-4
    half: tuple[float, float] | None = None
    why: str = ""


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
        regimes: The accuracy contract's regimes (:data:`REGIMES`) by name, from the family's maker.
        not_applicable: For each regime of :data:`REGIMES` without a maker, the reason.
        budget: The accuracy budget (:class:`Budget`) in every regime ...
        budgets: ... except those named here.
        function: The function to call, for a loss outside the registry.
        probe: The 1-D sweep ``losskit plot`` draws (:mod:`losskit.examples.probes`); ``None``: the
            family's (``probes.FAMILY``).
        counted: ``counted(case)``: which units of ``reduction="none"`` count in ``"mean"`` (the
            others are 0 and left out), for a loss whose unit exists only for some samples (the
            N-pairs loss: one pair per class, at its anchor's row); ``None``: every unit.
    """

    make: Callable[[int, torch.Generator], Case]
    unit_shape: Callable[[Case], tuple[int, ...]]
    weight: Callable[[Case, torch.Generator], tuple[Tensor, Tensor]] | None = None
    grad_kwargs: tuple[str, ...] = ()
    gradgrad: bool = True
    low_precision_tol: tuple[float, float] = (2e-2, 2e-2)
    regimes: Mapping[str, Regime] = field(default_factory=dict)
    not_applicable: Mapping[str, str] = field(default_factory=dict)
    budget: Budget = Budget()
    budgets: Mapping[str, Budget] = field(default_factory=dict)
    function: Callable[..., Tensor] | None = None
    probe: Sweep | None = None
    counted: Callable[[Case], Tensor] | None = None

    def budget_for(self, regime: str) -> Budget:
        return self.budgets.get(regime, self.budget)


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


def uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> Tensor:
    """Float64 values uniform in ``[low, high)``."""
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)


def random_sign(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    return torch.randint(2, shape, generator=gen).to(torch.float64) * 2 - 1


def typical(make: Callable[[int, torch.Generator], Case], n: int = 64, **regime: Any) -> Regime:
    """The contract's own inputs, ``n`` samples: the ``typical`` regime of every loss."""
    return Regime(lambda gen: make(n, gen), **regime)


def large(make: Callable[[torch.Generator], Case]) -> Regime:
    """A large reduction: compared under ``"mean"`` only (one pass per dtype keeps the suite fast)."""
    return Regime(make, reductions=("mean",))


def dense_regimes(num_classes: int, spatial: tuple[int, ...], scale: float,
                  large_spatial: tuple[int, ...] = (580, 580), **options: Any) -> dict[str, Regime]:
    """The regimes of a segmentation loss on ``(n, C, *spatial)`` logits with index labels:
    saturated logits, the labelled class's logit 12 to 16 ahead (the loss near 0), one image of
    ``large_spatial`` (at least 1e6 logits and 65k voxels per class), and 1e5 background voxels
    with one voxel of each other class."""

    def saturated(gen: torch.Generator) -> Case:
        target = torch.randint(num_classes, (2, *spatial), generator=gen)
        return Case(uniform((2, num_classes, *spatial), -30.0, 30.0, gen), target, dict(options))

    def near_converged(gen: torch.Generator) -> Case:
        target = torch.randint(num_classes, (2, *spatial), generator=gen)
        logits = 0.5 * torch.randn((2, num_classes, *spatial), generator=gen, dtype=torch.float64)
        lead = uniform((2, 1, *spatial), 12.0, 16.0, gen)
        return Case(logits.scatter_add(1, target.unsqueeze(1), lead), target, dict(options))

    def imbalance(gen: torch.Generator) -> Case:
        target = torch.zeros((1, 316, 317), dtype=torch.long)
        where = torch.randperm(target.numel(), generator=gen)[: num_classes - 1]
        target.view(-1)[where] = torch.arange(1, num_classes)
        logits = scale * torch.randn((1, num_classes, 316, 317), generator=gen, dtype=torch.float64)
        return Case(logits, target, dict(options))

    make = dense_index_case(num_classes, spatial, scale, **options)
    return {"typical": typical(make, n=4), "saturated": Regime(saturated), "near_converged": Regime(near_converged),
            "large": large(lambda gen: dense_index_case(num_classes, large_spatial, scale, **options)(1, gen)),
            "imbalance": Regime(imbalance, reductions=("none", "sum"))}


NOT_BOXES = {"tiny_boxes": "not a box loss", "huge_boxes": "not a box loss"}


def same_shape(case: Case) -> tuple[int, ...]:
    return tuple(case.input.shape)


def without_class_dim(case: Case) -> tuple[int, ...]:
    return (case.input.shape[0], *case.input.shape[2:])
