"""Your images and masks: ``DIR/images/*.png`` and ``DIR/masks/*.png``, paired by name, and the small U-Net.

``losskit compare --task segmentation-folder --data DIR``.

**Reading.** Pillow reads every PNG. An image and its mask have the same file name. Grey images
(8 or 16 bit) give one input channel, scaled to [0, 1]; if any image has colour (RGB, RGBA,
palette), every image is read as RGB (three channels). A mask holds one class index per pixel
(a grey or palette PNG). The classes are the distinct mask values over all masks, in increasing
order (so a binary mask saved as 0 / 255 has the classes 0 and 1); the smallest value is the
background, the others the foreground classes.

**Split and model.** Each seed holds out its own fifth of the pairs (at least one) for validation,
the same for every loss of that seed. The U-Net is :class:`~losskit.arena.tasks.segmentation.TinyUNet`
(any image size: it pads to a multiple of 4 and crops back).

**Metrics**, pooled over every validation pixel, averaged over the foreground classes present in
the validation masks: Dice (:math:`2TP / (2TP + FP + FN)`), IoU (:math:`TP / (TP + FP + FN)`),
sensitivity (:math:`TP / (TP + FN)`) and precision (:math:`TP / (TP + FP)`, 0 when a class is
never predicted). With one foreground class these are the lesion metrics of the ``segmentation``
task. NaN when the validation masks hold no foreground at all.

Every problem is a one-line ``ValueError`` before anything trains: no such folder, no
``images/`` or ``masks/`` folder, no PNG files, images and masks that do not pair up by name or
differ in size, images of different sizes, a mask that is not a class-index image (colour, or
non-integer values), one class only, more than :data:`MAX_CLASSES` classes.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from losskit.arena.tasks.base import Task, batched, needs_data, register_task
from losskit.arena.tasks.segmentation import TinyUNet

__all__ = ["MAX_CLASSES", "Pairs", "folder_task", "mask_classes", "read_pairs", "segmentation_metrics"]

MAX_CLASSES = 64
VAL_FRACTION = 0.2
USAGE = "--data DIR, with DIR/images/*.png and DIR/masks/*.png of the same names"
_GREY = {"1": 255.0, "L": 255.0, "LA": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0}
_INDEX_MODES = {"1", "L", "P", "I", "I;16", "I;16B", "I;16L", "F"}


@dataclass
class Pairs:
    """Images ``(N, C, H, W)`` in [0, 1], masks ``(N, H, W)`` of class indices, and their file names."""

    images: Tensor
    masks: Tensor
    names: list[str]
    values: list[int]  # the mask value of each class index


def _pngs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() == ".png"}


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" ({len(names)} in all)" if len(names) > 5 else "")


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"{path.parent.name}/{path.name} cannot be read as a PNG: {str(error)[:160]}") from None
    return image


def _image_array(image, colour: bool) -> np.ndarray:
    """``(C, H, W)`` float32 in [0, 1]."""
    if colour:
        return np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    if image.mode == "LA":
        image = image.convert("L")
    return (np.asarray(image, dtype=np.float32) / _GREY.get(image.mode, 1.0))[None]


def mask_classes(mask: np.ndarray, name: str) -> np.ndarray:
    """The integer class values of a mask array, or a ValueError naming the mask.

    Examples:
        >>> mask_classes(np.array([[0, 255], [255, 0]], dtype=np.uint8), "a.png")
        array([  0, 255])
        >>> mask_classes(np.array([[0.0, 0.5]]), "b.png")
        Traceback (most recent call last):
        ValueError: mask b.png holds non-integer values (e.g. 0.5); a mask holds one class index per pixel
    """
    if mask.dtype.kind == "f":
        bad = mask[(mask != np.round(mask)) | ~np.isfinite(mask)]
        if bad.size:
            raise ValueError(f"mask {name} holds non-integer values (e.g. {bad.flat[0]:g}); a mask holds one class "
                             "index per pixel")
    elif mask.dtype.kind not in "iub":
        raise ValueError(f"mask {name} holds {mask.dtype} values; a mask holds one class index per pixel")
    values = np.unique(mask)
    if values.size and values.min() < 0:
        raise ValueError(f"mask {name} holds negative values ({values.min():g}); class indices are 0 or more")
    return values.astype(np.int64)


def read_pairs(folder: str | Path) -> Pairs:
    """Read and check ``folder/images/*.png`` and ``folder/masks/*.png`` (see the module docstring)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"data {str(root)!r} is not a folder; {USAGE}")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise ValueError(f"data {str(root)!r} has no {sub}/ folder; {USAGE}")
    images, masks = _pngs(root / "images"), _pngs(root / "masks")
    if not images:
        raise ValueError(f"{root / 'images'} holds no .png files; {USAGE}")
    lonely = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if any(lonely):
        parts = ([f"images without a mask: {_listing(lonely[0])}"] if lonely[0] else []) + (
            [f"masks without an image: {_listing(lonely[1])}"] if lonely[1] else [])
        raise ValueError(f"images and masks of {root} do not pair up by name: {'; '.join(parts)}")
    names = sorted(images)
    if len(names) < 2:
        raise ValueError(f"{root} holds {len(names)} image; a training and a validation split need 2")
    opened = [(_open(images[n]), _open(masks[n])) for n in names]
    first = opened[0][0].size
    for name, (image, mask) in zip(names, opened, strict=True):
        if mask.size != image.size:
            raise ValueError(f"image {name} is {image.size[0]}x{image.size[1]} but its mask is "
                             f"{mask.size[0]}x{mask.size[1]} (width x height)")
        if image.size != first:
            raise ValueError(f"images differ in size: {names[0]} is {first[0]}x{first[1]}, {name} is "
                             f"{image.size[0]}x{image.size[1]}; resize them to one size")
        if mask.mode not in _INDEX_MODES:
            raise ValueError(f"mask {name} is a {mask.mode} image; a mask holds one class index per pixel "
                             "(a grey or palette PNG)")
    colour = any(image.mode not in _GREY for image, _ in opened)
    arrays = [np.asarray(mask) for _, mask in opened]
    values = np.unique(np.concatenate([mask_classes(a, n) for a, n in zip(arrays, names, strict=True)]))
    if len(values) < 2:
        raise ValueError(f"the masks of {root} hold one value only ({values[0]}): nothing to segment")
    if len(values) > MAX_CLASSES:
        raise ValueError(f"the masks of {root} hold {len(values)} distinct values (more than {MAX_CLASSES}); a mask "
                         "holds class indices, not intensities")
    lookup = {int(v): i for i, v in enumerate(values)}
    index = np.vectorize(lookup.__getitem__, otypes=[np.int64])
    return Pairs(torch.from_numpy(np.stack([_image_array(image, colour) for image, _ in opened])),
                 torch.from_numpy(np.stack([index(a.astype(np.int64)) for a in arrays])), names,
                 [int(v) for v in values])


def _folder_sha256(root: Path, names: list[str]) -> str:
    digest = hashlib.sha256()
    for sub in ("images", "masks"):
        for name in names:
            digest.update(f"{sub}/{name}\0".encode())
            digest.update((root / sub / name).read_bytes())
    return digest.hexdigest()


def _folder_data(pairs: Pairs, seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    n = len(pairs.names)
    n_val = max(1, round(VAL_FRACTION * n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train, val = order[n_val:], order[:n_val]
    return (pairs.images[train], pairs.masks[train]), (pairs.images[val], pairs.masks[val])


def segmentation_metrics(predicted: Tensor, truth: Tensor, classes: int) -> dict[str, float]:
    """Dice, IoU, sensitivity and precision from the pooled confusion matrix, averaged over the
    foreground classes (1, ..., classes - 1) present in ``truth``.

    Examples:
        >>> truth = torch.tensor([0, 0, 1, 1, 1, 0])
        >>> predicted = torch.tensor([0, 1, 1, 1, 0, 0])   # class 1: TP 2, FP 1, FN 1
        >>> {k: round(v, 4) for k, v in segmentation_metrics(predicted, truth, 2).items()}
        {'dice': 0.6667, 'iou': 0.5, 'sensitivity': 0.6667, 'precision': 0.6667}
    """
    confusion = torch.bincount(truth.flatten() * classes + predicted.flatten(),
                               minlength=classes * classes).reshape(classes, classes).double()
    tp = confusion.diagonal()
    fn, fp = confusion.sum(1) - tp, confusion.sum(0) - tp
    present = (tp + fn)[1:] > 0

    def mean(numerator: Tensor, denominator: Tensor) -> float:
        ratio = torch.where(denominator > 0, numerator / denominator.clamp(min=1), 0.0)[1:][present]
        return float(ratio.mean()) if len(ratio) else float("nan")

    return {"dice": mean(2 * tp, 2 * tp + fp + fn), "iou": mean(tp, tp + fp + fn), "sensitivity": mean(tp, tp + fn),
            "precision": mean(tp, tp + fp)}


def _folder_metrics(classes: int, model: nn.Module, val: tuple[Tensor, Tensor], device: torch.device,
                    ) -> dict[str, float]:
    images, masks = val
    predicted = batched(model, images, device, size=16).argmax(1)
    return segmentation_metrics(predicted, masks, classes)


def _unet(channels: int, classes: int) -> nn.Module:
    return TinyUNet(in_channels=channels, classes=classes)


def folder_task(data: str | Path | None = None, **options: object) -> Task:
    """The segmentation-folder task for the folder ``data`` (see the module docstring).

    Raises:
        ValueError: No ``data``, an option this task does not take, or any problem with the files.
    """
    if options:
        raise ValueError(f"{', '.join(sorted(options))}: not an option of the segmentation-folder task "
                         "(it takes --data only; the classes come from the masks)")
    if data is None:
        raise ValueError(f"the segmentation-folder task needs {USAGE}")
    root = Path(data).expanduser().resolve()
    pairs = read_pairs(root)
    n, channels, height, width = pairs.images.shape
    classes = len(pairs.values)
    n_train = n - max(1, round(VAL_FRACTION * n))
    shown = ", ".join(map(str, pairs.values[:10])) + (", ..." if classes > 10 else "")
    return Task(
        name="segmentation-folder",
        description=(f"{root.name}: {n} image / mask pairs of {width} x {height} pixels, {channels} input "
                     f"channel(s), {classes} classes (mask values {shown}; the first is the background). Each "
                     "seed holds out its own fifth of the pairs for validation. The small U-Net; Dice, IoU, "
                     "sensitivity and precision pool every validation pixel and average the foreground classes."),
        default_losses=("ce", "dice", "dice + ce", "focal_tversky"),
        make_data=functools.partial(_folder_data, pairs),
        make_model=functools.partial(_unet, channels, classes),
        metrics={"dice": "max", "iou": "max", "sensitivity": "max", "precision": "max"},
        primary_metric="dice",
        evaluate=functools.partial(_folder_metrics, classes),
        epochs=10, batch_size=min(8, n_train), lr=3e-3, seeds=5,
        options={"data": str(root), "data_sha256": _folder_sha256(root, pairs.names)})


_placeholder = needs_data("segmentation-folder", USAGE)
register_task(Task(
    name="segmentation-folder",
    description="Your images and masks (PNG files paired by name): the small U-Net, classes read from the masks.",
    default_losses=(),
    make_data=_placeholder,
    make_model=_placeholder,
    metrics={},
    primary_metric="",
    evaluate=_placeholder,
    configure=folder_task,
))
