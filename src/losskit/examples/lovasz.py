"""Contract-suite specs for the Lovász losses.

Natural units: ``lovasz_softmax`` gives one value per (image, class) with ``per_image=True`` (used
here, so the batch dimension is exercised) and one per class otherwise; ``lovasz_hinge`` one per
(image, channel). Every class is made present in every image (pixels 0..C-1 hold classes 0..C-1,
never ignored), so no unit is masked and ``"mean"`` is the plain mean of ``"none"``. Random logits
give errors without ties and away from the hinge's kink, so float64 gradcheck is meaningful; the
loss is piecewise (sorting), so there is no gradgradcheck.
"""

from __future__ import annotations

import math

import torch

from losskit.examples import probes
from losskit.examples.base import NOT_BOXES, Case, Regime, Spec, large, typical, uniform

C = 3
SPATIAL = (3, 4)
IGNORE = 255


def _logits(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64) * 2


def _ignored(n: int, gen: torch.Generator, spatial: tuple[int, ...] = SPATIAL, fraction: float = 0.2) -> torch.Tensor:
    """About ``fraction`` of the pixels, never the first C of an image."""
    ignored = torch.rand((n, *spatial), generator=gen) < fraction
    ignored.view(n, math.prod(spatial))[:, :C] = False
    return ignored


def _labels(n: int, gen: torch.Generator, spatial: tuple[int, ...], rare: bool) -> torch.Tensor:
    """Class indices with every class present in every image (pixels 0..C-1 hold classes 0..C-1);
    with ``rare``, every other pixel is class 0."""
    target = torch.zeros((n, *spatial), dtype=torch.long) if rare else torch.randint(C, (n, *spatial), generator=gen)
    target.view(n, math.prod(spatial))[:, :C] = torch.arange(C)
    return target


# Logits for a target: ``logits(shape, agree, gen)`` with ``agree`` +1 where the logit's side or
# class is the labelled one and -1 elsewhere.
def _random(shape, agree, gen):
    return _logits(shape, gen)


def _saturated(shape, agree, gen):
    return uniform(shape, -30.0, 30.0, gen)


def _confident(shape, agree, gen):
    return 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64) + 7.0 * agree


def _inside_margin(shape, agree, gen):
    """Every logit on its label's side, 1e-4 to 1e-3 short of the hinge's margin of 1."""
    return agree * (1 - uniform(shape, 1e-4, 1e-3, gen))


def _softmax_case(n: int, gen: torch.Generator, spatial: tuple[int, ...] = SPATIAL, logits=_random,
                  rare: bool = False) -> Case:
    target = _labels(n, gen, spatial, rare)
    target = torch.where(_ignored(n, gen, spatial, 0.0 if rare else 0.2), IGNORE, target)
    agree = torch.nn.functional.one_hot(target.clamp_max(C - 1), C).movedim(-1, 1).double() * 2 - 1
    return Case(logits((n, C, *spatial), agree, gen), target, {"per_image": True, "ignore_index": IGNORE})


def _softmax_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.rand((case.input.shape[0], C), generator=gen, dtype=torch.float64) + 0.5
    return w, w


def _hinge_case(n: int, gen: torch.Generator, spatial: tuple[int, ...] = SPATIAL, logits=_random,
                rare: bool = False) -> Case:
    if rare:
        target = torch.zeros((n, 2, *spatial), dtype=torch.long)
        target.view(n, 2, math.prod(spatial))[:, :, 0] = 1
    else:
        target = (torch.rand((n, 2, *spatial), generator=gen) < 0.4).long()
    target = torch.where(_ignored(n, gen, spatial, 0.0 if rare else 0.2).unsqueeze(1), IGNORE, target)
    agree = torch.where(target == 1, 1.0, -1.0).double()
    return Case(logits((n, 2, *spatial), agree, gen), target, {"ignore_index": IGNORE})


def _hinge_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.rand(case.input.shape[:2], generator=gen, dtype=torch.float64) + 0.5
    return w, w


def _regimes(make, confident, large_side: int) -> dict[str, Regime]:
    """Saturated logits; logits on the labelled side or class (the loss near 0); one image of 1e6
    logits; 1e5 pixels of one class with one pixel of each other."""
    return {"typical": typical(make, n=8),
            "saturated": Regime(lambda gen: make(4, gen, logits=_saturated)),
            "near_converged": Regime(lambda gen: make(4, gen, logits=confident)),
            "large": large(lambda gen: make(1, gen, (large_side, large_side))),
            "imbalance": Regime(lambda gen: make(1, gen, (316, 317), rare=True), reductions=("none", "sum"))}


SPECS: dict[str, Spec] = {
    "lovasz_softmax": Spec(make=_softmax_case, unit_shape=lambda case: (case.input.shape[0], C),
                           probe=probes.TWO_CLASS_MASK_PER_IMAGE,  # it pools the batch's pixels
                           weight=_softmax_weight, gradgrad=False, regimes=_regimes(_softmax_case, _confident, 580),
                           not_applicable=NOT_BOXES),
    "lovasz_hinge": Spec(make=_hinge_case, unit_shape=lambda case: tuple(case.input.shape[:2]),
                         probe=probes.ONE_LOGIT_MASK,
                         weight=_hinge_weight, gradgrad=False, regimes=_regimes(_hinge_case, _inside_margin, 710),
                         not_applicable=NOT_BOXES),
}
