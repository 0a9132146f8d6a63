"""Contract-suite spec for the SSIM loss, and its accuracy regimes.

Targets are smooth images in about [0, 1] (random values on a coarse grid, interpolated, plus a
little texture), so every window holds both flat and varying parts, as in real images. The
prediction is the target plus noise: 0.1 in the typical regime, 3e-4 near convergence (the loss
about 1e-5, where ``1 - SSIM`` written as ``1 - l * cs`` keeps no digit in float32). The
saturated regime is an unrelated pair of 8-bit images (``data_range=255``), the large one a
100^3 volume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF

from losskit.examples.base import NOT_BOXES, Case, Regime, Spec, large
from losskit.examples.probes import Axis, Sweep

CHANNELS = 2
SIZE = (6, 7)  # small: float64 gradgradcheck costs the square of the number of pixels


def smooth_images(shape: tuple[int, ...], gen: torch.Generator, texture: float = 0.05) -> torch.Tensor:
    """Float64 images ``(N, C, *spatial)``: random values on a grid four times coarser, interpolated
    (bilinear or trilinear), plus uniform texture of size ``texture``."""
    batch, channels, *spatial = shape
    coarse = torch.rand((batch, channels, *(s // 4 + 2 for s in spatial)), generator=gen, dtype=torch.float64)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    image = TF.interpolate(coarse, size=tuple(spatial), mode=mode, align_corners=True)
    return image + texture * torch.rand(shape, generator=gen, dtype=torch.float64)


def noisy_pair(shape: tuple[int, ...], noise: float, gen: torch.Generator, **kwargs) -> Case:
    """A smooth target and the target plus Gaussian noise of standard deviation ``noise``."""
    target = smooth_images(shape, gen)
    return Case(target + noise * torch.randn(shape, generator=gen, dtype=torch.float64), target, kwargs)


def _case(n: int, gen: torch.Generator) -> Case:
    return noisy_pair((n, CHANNELS, *SIZE), 0.1, gen, win_size=5)


def _per_sample_weight(case: Case, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.rand(case.input.shape[0], generator=gen, dtype=torch.float64) + 0.5
    return w, w


def _saturated(gen: torch.Generator) -> Case:
    target = 255 * smooth_images((2, 1, 32, 32), gen).clamp(0, 1)
    unrelated = 255 * torch.rand((2, 1, 32, 32), generator=gen, dtype=torch.float64)
    return Case(unrelated, target, {"data_range": 255.0})


# --- the probe: 16x16 images, the prediction the target plus a checkerboard of amplitude a -----

_PATTERN = Axis("a", "amplitude a of a checkerboard added to a 16x16 ramp image (data_range 1)", -1.0, 1.0)


def _checkerboard(loss, a):
    ramp = torch.linspace(0.2, 0.8, 16, dtype=a.dtype)
    image = ((ramp[:, None] + ramp[None, :]) / 2).expand(a.shape[0], 1, 16, 16)
    board = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2 - 1
    return [("", loss(image + a[:, None, None, None] * board.to(a.dtype), image, reduction="none"))]


SPECS: dict[str, Spec] = {
    "ssim": Spec(
        make=_case,
        unit_shape=lambda case: (case.input.shape[0],),
        weight=_per_sample_weight,
        regimes={
            "typical": Regime(lambda gen: noisy_pair((8, CHANNELS, 32, 32), 0.1, gen)),
            "near_converged": Regime(lambda gen: noisy_pair((2, 1, 48, 48), 3e-4, gen)),
            "saturated": Regime(_saturated),
            "large": large(lambda gen: noisy_pair((1, 1, 100, 100, 100), 0.1, gen)),
        },
        not_applicable={**NOT_BOXES, "imbalance": "an image pair has no positives to be outnumbered"},
        probe=Sweep("ramp image + a * checkerboard vs the ramp", _PATTERN, _checkerboard),
    ),
}
