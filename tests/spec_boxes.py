"""Contract-suite specs for the box losses.

Every case holds ``n`` aligned pairs of valid boxes (positive sizes) that overlap partly: the
prediction is the target with each coordinate moved by at most 0.6 while sides are at least 2, so
no pair touches, nests exactly or coincides, and min/max ties (the kinks of the geometry) are
avoided, which keeps float64 gradcheck meaningful.
"""

from __future__ import annotations

import math

import torch

from tests.specs import Case, Spec


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)


def _corner_pairs(n: int, gen: torch.Generator, dims: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) corner boxes (``xyxy`` or ``xyzxyz``), overlapping partly."""
    lo = _uniform((n, dims), 0.0, 10.0, gen)
    target = torch.cat([lo, lo + _uniform((n, dims), 2.0, 6.0, gen)], -1)
    pred = target + _uniform((n, 2 * dims), -0.6, 0.6, gen)
    return pred, target


def boxes_case(**kwargs):
    def make(n: int, gen: torch.Generator) -> Case:
        pred, target = _corner_pairs(n, gen)
        return Case(pred, target, dict(kwargs))

    return make


def _nested_case(n: int, gen: torch.Generator) -> Case:
    """Predictions strictly inside their targets (by 0.1 to 0.6 on every side): the enclosing box
    is the target, a constant, so detaching it (WIoU) leaves the gradient exact."""
    _, target = _corner_pairs(n, gen)
    inset = _uniform((n, 4), 0.1, 0.6, gen) * torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    return Case(target + inset, target, {"version": 1})


def _boxes_3d_case(n: int, gen: torch.Generator) -> Case:
    pred, target = _corner_pairs(n, gen, dims=3)
    return Case(pred, target)


def _rotated_case(n: int, gen: torch.Generator) -> Case:
    """``xywhr`` pairs: the prediction is the target moved, resized and turned a little."""
    target = torch.cat([_uniform((n, 2), 0.0, 10.0, gen), _uniform((n, 2), 2.0, 6.0, gen),
                        _uniform((n, 1), -math.pi / 2, math.pi / 2, gen)], -1)
    pred = target + torch.cat([_uniform((n, 4), -0.6, 0.6, gen), _uniform((n, 1), -0.3, 0.3, gen)], -1)
    return Case(pred, target)


def per_box(case: Case) -> tuple[int, ...]:
    return tuple(case.input.shape[:-1])


def per_box_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A positive weight per box; it is also the effective weight of the weighted mean."""
    w = torch.rand(case.input.shape[:-1], generator=gen, dtype=torch.float64) + 0.5
    return w, w


def _spec(make, **kwargs) -> Spec:
    return Spec(make=make, unit_shape=per_box, weight=per_box_weight, **kwargs)


SPECS: dict[str, Spec] = {
    "iou": _spec(boxes_case(mode="log")),
    "giou": _spec(boxes_case()),
    "diou": _spec(boxes_case(fmt="cxcywh")),  # the same pairs read as cxcywh: still valid, overlapping
    # CIoU's alpha is detached (the peers' gradient policy): a constant to the backward graph but not
    # to a numerical derivative of the gradient, so no gradgrad. Its first-order effect, alpha' v, is
    # below gradcheck's tolerance here because v is tiny for these similar shapes.
    "ciou": _spec(boxes_case(), gradgrad=False),
    # Focal-EIoU's IoU^gamma and WIoU v2/v3's beta are detached weights by design, so their gradient is
    # not the derivative that gradcheck compares with: the contract runs the exactly differentiable
    # forms (plain EIoU; WIoU v1 with the detached enclosing box held constant by nesting) and
    # tests/test_boxes.py checks the focal and v3 forms (values, gradients, dtypes, reductions, state).
    "eiou": _spec(boxes_case()),
    # theta=4: (1 - e^-w)^4 and |w - w_gt| are smooth away from equal sizes, which the cases avoid.
    "siou": _spec(boxes_case()),
    "wiou": _spec(_nested_case),
    "nwd": _spec(boxes_case(constant=4.0)),
    "probiou": _spec(_rotated_case),
    "giou_3d": _spec(_boxes_3d_case),
}
