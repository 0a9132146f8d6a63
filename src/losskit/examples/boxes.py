"""Contract-suite specs for the box losses.

Every case holds ``n`` aligned pairs of valid boxes (positive sizes) that overlap partly: the
prediction is the target with each coordinate moved by at most 0.6 while sides are at least 2, so
no pair touches, nests exactly or coincides, and min/max ties (the kinks of the geometry) are
avoided, which keeps float64 gradcheck meaningful.

The accuracy regimes draw the same kind of pairs at other scales (:class:`Scale`): predictions
within 0.005 of 20-60 pixel targets (a loss below 1e-3), sub-pixel boxes anywhere on a 640-pixel
image, boxes of 5e4 to 1e5 pixels, and 250k typical pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from losskit.examples import probes
from losskit.examples.base import FLOAT32, Budget, Case, Spec, large, typical


@dataclass(frozen=True)
class Scale:
    """Where boxes lie (corners in ``[0, extent)``), their sides, and how far a prediction's
    coordinates move from its target's (the angle of a rotated box moves by ``turn``)."""

    extent: float = 10.0
    sides: tuple[float, float] = (2.0, 6.0)
    move: float = 0.6
    turn: float = 0.3


TYPICAL = Scale()
CLOSE = Scale(extent=600.0, sides=(20.0, 60.0), move=0.005, turn=1e-4)
TINY = Scale(extent=640.0, sides=(0.2, 0.9), move=0.05, turn=0.05)
HUGE = Scale(extent=1e5, sides=(5e4, 1e5), move=3e3, turn=0.1)


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)


def _corner_pairs(n: int, gen: torch.Generator, dims: int = 2,
                  scale: Scale = TYPICAL) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) corner boxes (``xyxy`` or ``xyzxyz``), overlapping partly."""
    lo = _uniform((n, dims), 0.0, scale.extent, gen)
    target = torch.cat([lo, lo + _uniform((n, dims), *scale.sides, gen)], -1)
    pred = target + _uniform((n, 2 * dims), -scale.move, scale.move, gen)
    return pred, target


def boxes_case(scale: Scale = TYPICAL, **kwargs):
    def make(n: int, gen: torch.Generator) -> Case:
        pred, target = _corner_pairs(n, gen, scale=scale)
        return Case(pred, target, dict(kwargs))

    return make


def _nested_case(scale: Scale = TYPICAL):
    """Predictions strictly inside their targets (by 1/60 to 1/10 of the smallest side, or
    ``scale.move``, on every side): the enclosing box is the target, a constant, so detaching it
    (WIoU) leaves the gradient exact."""

    def make(n: int, gen: torch.Generator) -> Case:
        _, target = _corner_pairs(n, gen, scale=scale)
        deepest = min(scale.move, scale.sides[0] / 10)
        inset = _uniform((n, 4), deepest / 6, deepest, gen) * torch.tensor([1.0, 1.0, -1.0, -1.0],
                                                                          dtype=torch.float64)
        return Case(target + inset, target, {"version": 1})

    return make


def _boxes_3d_case(scale: Scale = TYPICAL):
    def make(n: int, gen: torch.Generator) -> Case:
        pred, target = _corner_pairs(n, gen, dims=3, scale=scale)
        return Case(pred, target)

    return make


def _rotated_case(scale: Scale = TYPICAL):
    """``xywhr`` pairs: the prediction is the target moved, resized and turned a little."""

    def make(n: int, gen: torch.Generator) -> Case:
        target = torch.cat([_uniform((n, 2), 0.0, scale.extent, gen), _uniform((n, 2), *scale.sides, gen),
                            _uniform((n, 1), -math.pi / 2, math.pi / 2, gen)], -1)
        pred = target + torch.cat([_uniform((n, 4), -scale.move, scale.move, gen),
                                   _uniform((n, 1), -scale.turn, scale.turn, gen)], -1)
        return Case(pred, target)

    return make


def _rotated_3d_case(scale: Scale = TYPICAL, **kwargs):
    """``xyzwlhr`` pairs: the prediction is the target moved, resized and turned a little."""

    def make(n: int, gen: torch.Generator) -> Case:
        target = torch.cat([_uniform((n, 3), 0.0, scale.extent, gen), _uniform((n, 3), *scale.sides, gen),
                            _uniform((n, 1), -math.pi, math.pi, gen)], -1)
        pred = target + torch.cat([_uniform((n, 6), -scale.move, scale.move, gen),
                                   _uniform((n, 1), -scale.turn, scale.turn, gen)], -1)
        return Case(pred, target, dict(kwargs))

    return make


def _rotated_with(**options):
    def case_at(scale: Scale):
        make = _rotated_case(scale)

        def with_options(n: int, gen: torch.Generator) -> Case:
            case = make(n, gen)
            case.kwargs.update(options)
            return case

        return with_options

    return case_at


def per_box(case: Case) -> tuple[int, ...]:
    return tuple(case.input.shape[:-1])


def per_box_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A positive weight per box; it is also the effective weight of the weighted mean."""
    w = torch.rand(case.input.shape[:-1], generator=gen, dtype=torch.float64) + 0.5
    return w, w


NOT_LOGITS = {"saturated": "box coordinates are not logits; large coordinates are the huge_boxes regime",
              "imbalance": "a box loss compares matched pairs: there are no negatives to outnumber them"}


def _same_eps(make):
    """``make`` with ``eps=1e-6``, the half-precision default, in every dtype: sub-pixel boxes at
    640 pixels collapse to degenerate ones in half precision, whose loss is set by ``eps`` (the
    log IoU loss's -log eps), so the comparison needs the same option on both sides."""

    def with_eps(n: int, gen: torch.Generator) -> Case:
        case = make(n, gen)
        case.kwargs["eps"] = 1e-6
        return case

    return with_eps


def _spec(case_at, takes_eps: bool = True, **kwargs) -> Spec:
    """``case_at(scale)`` is the loss's ``make`` at one :class:`Scale`; every regime is one scale."""
    regimes = {"typical": typical(case_at(TYPICAL)),
               "near_converged": typical(case_at(CLOSE), n=256),
               "large": large(lambda gen: case_at(TYPICAL)(250_000, gen)),
               "tiny_boxes": typical(_same_eps(case_at(TINY)) if takes_eps else case_at(TINY), n=256),
               # float16 ends at 65504: boxes of 1e5 pixels do not exist there.
               "huge_boxes": typical(case_at(HUGE), n=256, dtypes=(*FLOAT32, torch.bfloat16))}
    return Spec(make=case_at(TYPICAL), unit_shape=per_box, weight=per_box_weight, regimes=regimes,
                not_applicable=NOT_LOGITS, **kwargs)


def _without_near_converged(spec: Spec, why: str) -> Spec:
    regimes = {name: regime for name, regime in spec.regimes.items() if name != "near_converged"}
    return replace(spec, regimes=regimes, not_applicable={**spec.not_applicable, "near_converged": why})


def _with(**options):
    return lambda scale: boxes_case(scale, **options)


SPECS: dict[str, Spec] = {
    "iou": _spec(_with(mode="log")),
    "giou": _spec(_with()),
    # the same pairs read as cxcywh: still valid, overlapping
    "diou": _spec(_with(fmt="cxcywh"), budgets={"near_converged": Budget(value=2e-3, why=(
        "boxes given as cxcywh become corners c - w/2, c + w/2 in the compute dtype (after moving the "
        "target's centre to the origin): each corner keeps float32's rounding of a coordinate of the box's "
        "size, 6e-8 x 30 px = 2e-6 px, against the 5e-3 px a near-converged prediction is off; measured "
        "1.1e-3 per box (1.4e-5 on the sum). Corner-format boxes meet the default budget"))}),
    # CIoU's alpha is detached (the peers' gradient policy): a constant to the backward graph but not
    # to a numerical derivative of the gradient, so no gradgrad. Its first-order effect, alpha' v, is
    # below gradcheck's tolerance here because v is tiny for these similar shapes.
    "ciou": _spec(_with(), gradgrad=False),
    # Focal-EIoU's IoU^gamma and WIoU v2/v3's beta are detached weights by design, so their gradient is
    # not the derivative that gradcheck compares with: the contract runs the exactly differentiable
    # forms (plain EIoU; WIoU v1 with the detached enclosing box held constant by nesting) and
    # tests/test_boxes.py checks the focal and v3 forms (values, gradients, dtypes, reductions, state).
    "eiou": _spec(_with()),
    # theta=4: (1 - e^-w)^4 and |w - w_gt| are smooth away from equal sizes, which the cases avoid.
    "siou": _spec(_with()),
    "wiou": _spec(_nested_case),
    "nwd": _spec(_with(constant=4.0), takes_eps=False),
    "bounded_iou": _spec(_with(beta=0.2), takes_eps=False),
    "probiou": _spec(_rotated_case, probe=probes.ROTATED_BOXES),
    "giou_3d": _spec(_boxes_3d_case, probe=probes.BOXES_3D),
    # The exact polygon IoU; GIoU exercises the convex hull too. The cases keep every pair's vertex
    # set away from changes (no corner on an edge), where the area's derivative has a kink.
    "rotated_iou": _spec(_rotated_with(kind="giou"), probe=probes.ROTATED_BOXES),
    "rotated_iou_3d": _spec(lambda scale: _rotated_3d_case(scale, kind="diou"), probe=probes.BOXES_3D_YAW),
    "gwd": _spec(_rotated_with(tau=1.0), takes_eps=False, probe=probes.ROTATED_BOXES),
    "kld": _spec(_rotated_case, takes_eps=False, probe=probes.ROTATED_BOXES),
    "kfiou": _without_near_converged(_spec(_rotated_with(fun="ln"), probe=probes.ROTATED_BOXES), (
        "KFIoU is at most 1/3 (identical boxes), so the loss of a perfect prediction is g(1/3): 2/3, ln 3 "
        "or e^(2/3) - 1, never below 1e-3; the tiny and huge regimes hold close pairs")),
}
