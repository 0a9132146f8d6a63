"""Contract-suite specs for the Lovász losses.

Natural units: ``lovasz_softmax`` gives one value per (image, class) with ``per_image=True`` (used
here, so the batch dimension is exercised) and one per class otherwise; ``lovasz_hinge`` one per
(image, channel). Every class is made present in every image (pixels 0..C-1 hold classes 0..C-1,
never ignored), so no unit is masked and ``"mean"`` is the plain mean of ``"none"``. Random logits
give errors without ties and away from the hinge's kink, so float64 gradcheck is meaningful; the
loss is piecewise (sorting), so there is no gradgradcheck.
"""

from __future__ import annotations

import torch

from tests.specs import Case, Spec

C = 3
SPATIAL = (3, 4)
IGNORE = 255


def _logits(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64) * 2


def _ignored(n: int, gen: torch.Generator) -> torch.Tensor:
    """About a fifth of the pixels, never the first C of an image."""
    ignored = torch.rand((n, *SPATIAL), generator=gen) < 0.2
    ignored.view(n, SPATIAL[0] * SPATIAL[1])[:, :C] = False
    return ignored


def _softmax_case(n: int, gen: torch.Generator) -> Case:
    target = torch.randint(C, (n, *SPATIAL), generator=gen)
    target.view(n, SPATIAL[0] * SPATIAL[1])[:, :C] = torch.arange(C)  # every class present in every image
    target = torch.where(_ignored(n, gen), IGNORE, target)
    return Case(_logits((n, C, *SPATIAL), gen), target, {"per_image": True, "ignore_index": IGNORE})


def _softmax_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.rand((case.input.shape[0], C), generator=gen, dtype=torch.float64) + 0.5
    return w, w


def _hinge_case(n: int, gen: torch.Generator) -> Case:
    target = (torch.rand((n, 2, *SPATIAL), generator=gen) < 0.4).long()
    target = torch.where(_ignored(n, gen).unsqueeze(1), IGNORE, target)
    return Case(_logits((n, 2, *SPATIAL), gen), target, {"ignore_index": IGNORE})


def _hinge_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.rand(case.input.shape[:2], generator=gen, dtype=torch.float64) + 0.5
    return w, w


SPECS: dict[str, Spec] = {
    "lovasz_softmax": Spec(make=_softmax_case, unit_shape=lambda case: (case.input.shape[0], C),
                           weight=_softmax_weight, gradgrad=False),
    "lovasz_hinge": Spec(make=_hinge_case, unit_shape=lambda case: tuple(case.input.shape[:2]),
                         weight=_hinge_weight, gradgrad=False),
}
