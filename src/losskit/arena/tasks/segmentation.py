"""The default task: tiny lesions in generated grey images, a small U-Net, lesion Dice, sensitivity and precision."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from losskit.arena.stats import final_values, paired_difference, phrase_difference
from losskit.arena.tasks.base import Task, batched, register_task

__all__ = ["LESION_SIZE", "TinyUNet", "make_lesion_images"]

# Seeds of the default comparison: as many as fit in 120 s on 2 cores. On 2 idle Xeon cores one
# seed's four runs took about 47 s of CPU time (about 11.5 s a run, one thread each): five seeds
# took 136 s of wall time with the start and the report, so four (see the README).
SEGMENTATION_SEEDS = 4
LESION_SIZE = 48


def make_lesion_images(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` grey 48 x 48 images with 1-3 faint round lesions (about 1-2% of the pixels) and their masks."""
    size = LESION_SIZE
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.empty(n, 1, size, size)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        # a smooth background (a random tilted plane) plus pixel noise
        tilt = (torch.rand(2, generator=generator) - 0.5) * 0.6
        image = tilt[0] * xx / size + tilt[1] * yy / size + 0.2 * torch.randn(size, size, generator=generator)
        for _ in range(int(torch.randint(1, 4, (), generator=generator))):
            r = 1.5 + 2.0 * float(torch.rand((), generator=generator))
            cx, cy = (4 + (size - 8) * torch.rand(2, generator=generator)).tolist()
            lesion = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            masks[i][lesion] = 1
            image = image + 0.25 * lesion
        images[i, 0] = image
    return images, masks


class TinyUNet(nn.Module):
    """Two down and two up steps with skip connections: a U-Net small enough for a CPU.

    Any image size works: the input is padded at the bottom and right to a multiple of 4, and the
    output cropped back, so ``(B, C, H, W)`` gives ``(B, classes, H, W)``.

    Examples:
        >>> TinyUNet(in_channels=3, classes=4)(torch.zeros(2, 3, 30, 21)).shape
        torch.Size([2, 4, 30, 21])
    """

    def __init__(self, in_channels: int = 1, classes: int = 2, width: int = 8) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.SiLU())

        self.enc1, self.enc2, self.enc3 = conv(in_channels, width), conv(width, 2 * width), conv(2 * width, 4 * width)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, 2), conv(4 * width, 2 * width)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * width, width, 2, 2), conv(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        # Two 2x2 poolings: pad the bottom and right edges to a multiple of 4, crop the output back.
        x = nn.functional.pad(x, (0, -width % 4, 0, -height % 4))
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        e3 = self.enc3(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat((self.up2(e3), e2), 1))
        d1 = self.dec1(torch.cat((self.up1(d2), e1), 1))
        return self.head(d1)[..., :height, :width]


def _lesion_data(seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return make_lesion_images(256, gen), make_lesion_images(96, gen)


def _lesion_metrics(model: nn.Module, val: tuple[Tensor, Tensor], device: torch.device) -> dict[str, float]:
    from torchmetrics.functional.classification import binary_f1_score, binary_precision, binary_recall

    images, masks = val
    predicted = batched(model, images, device).argmax(1).flatten()
    truth = masks.flatten()
    # Pooled over every validation pixel: the Dice score of the lesion class is its F1 score.
    return {"dice": float(binary_f1_score(predicted, truth)), "sensitivity": float(binary_recall(predicted, truth)),
            "precision": float(binary_precision(predicted, truth))}


def _lesion_verdict(results: dict) -> str | None:
    """Does Dice find more lesion pixels than cross-entropy? The paired sensitivity difference over seeds."""
    values = final_values(results, "sensitivity")
    ce = next((values[n] for n in ("ce", "cross_entropy") if n in values), None)
    dice = values.get("dice")
    if ce is None or dice is None:
        return None
    diff = paired_difference(dice, ce)
    if diff is None:
        return None
    return f"Lesion sensitivity, Dice against cross-entropy: {phrase_difference(diff, 'max')}."


register_task(Task(
    name="segmentation",
    description=("Tiny-lesion segmentation: 48 x 48 grey images with one to three faint round lesions that "
                 "cover about 1.5% of the pixels, a small U-Net, 256 training and 96 validation images. "
                 "Pixel-wise cross-entropy is dominated by the background; region losses weigh the lesion "
                 "class as much as the background. Metrics pool every validation pixel."),
    default_losses=("ce", "dice", "dice + ce", "focal_tversky"),
    make_data=_lesion_data,
    make_model=TinyUNet,
    metrics={"dice": "max", "sensitivity": "max", "precision": "max"},
    primary_metric="dice",
    evaluate=_lesion_metrics,
    verdict=_lesion_verdict,
    epochs=8,
    batch_size=16,
    lr=3e-3,
    seeds=SEGMENTATION_SEEDS,
))
