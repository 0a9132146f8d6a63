"""Float64 references for the Lovász losses, written from Berman et al. (CVPR 2018) with plain loops.

The Lovász extension is evaluated from its definition, not from the cumulative-sum formula that
losskit uses: sort the errors decreasingly, grow the set ``S`` of "mispredicted" pixels one pixel at a
time, and weight each error by the increase of the Jaccard set loss
``Delta_J(S) = |S| / |F u S|`` (``F`` the foreground set; Eq. 4 of the paper). Ignored pixels are
cropped out (never passed in), units are collected in Python dicts, and the values are torch scalars
so autograd gives the reference gradient.
"""

from __future__ import annotations

import torch


def jaccard_set_loss(mispredicted: set[int], foreground: set[int]) -> float:
    """Delta_J(S) = |S| / |F u S|, with Delta_J(empty set) = 0."""
    if not mispredicted:
        return 0.0
    return len(mispredicted) / len(foreground | mispredicted)


def lovasz_extension(errors: list[torch.Tensor], foreground: list[int]) -> torch.Tensor:
    """sum_i m_(pi_i) (Delta_J(S_i) - Delta_J(S_(i-1))), S_i the i largest errors."""
    order = sorted(range(len(errors)), key=lambda i: -float(errors[i].detach()))
    fg = {i for i, f in enumerate(foreground) if f}
    total = torch.zeros((), dtype=torch.float64)
    grown: set[int] = set()
    previous = 0.0
    for i in order:
        grown.add(i)
        current = jaccard_set_loss(grown, fg)
        total = total + errors[i] * (current - previous)
        previous = current
    return total


def lovasz_softmax(probs: torch.Tensor, target: torch.Tensor, *, classes: str = "present", per_image: bool = False,
                   ignore_index: int | None = None, first_class: int = 0) -> dict[tuple[int, ...], torch.Tensor]:
    """Units of the Lovász-Softmax loss: {(n, c) or (c,): loss}; absent or pixel-less units are left out.

    ``probs`` (N, C, H, W) probabilities, ``target`` (N, H, W) class indices; classes below
    ``first_class`` are skipped (``include_background=False`` is ``first_class=1``).
    """
    n_img, n_cls, height, width = probs.shape
    groups = [[n] for n in range(n_img)] if per_image else [list(range(n_img))]
    units = {}
    for g, images in enumerate(groups):
        for c in range(first_class, n_cls):
            errors, fg = [], []
            for n in images:
                for y in range(height):
                    for x in range(width):
                        label = int(target[n, y, x])
                        if ignore_index is not None and label == ignore_index:
                            continue
                        f = 1 if label == c else 0
                        errors.append((f - probs[n, c, y, x]).abs())
                        fg.append(f)
            if not errors or (classes == "present" and not any(fg)):
                continue
            key = (g, c - first_class) if per_image else (c - first_class,)
            units[key] = lovasz_extension(errors, fg)
    return units


def lovasz_hinge(logits: torch.Tensor, target: torch.Tensor, *, per_image: bool = True,
                 ignore_index: int | None = None) -> dict[tuple[int, ...], torch.Tensor]:
    """Units of the Lovász hinge: {(n, c) or (c,): loss} for logits and 0/1 labels (N, C, H, W)."""
    n_img, n_ch, height, width = logits.shape
    groups = [[n] for n in range(n_img)] if per_image else [list(range(n_img))]
    units = {}
    for g, images in enumerate(groups):
        for c in range(n_ch):
            errors, fg = [], []
            for n in images:
                for y in range(height):
                    for x in range(width):
                        label = int(target[n, c, y, x])
                        if ignore_index is not None and label == ignore_index:
                            continue
                        sign = 2.0 * label - 1.0
                        errors.append(torch.relu(1.0 - logits[n, c, y, x] * sign))
                        fg.append(label)
            if errors:
                units[(g, c) if per_image else (c,)] = lovasz_extension(errors, fg)
    return units


def mean(units: dict) -> torch.Tensor:
    values = list(units.values())
    return sum(values) / len(values) if values else torch.zeros((), dtype=torch.float64)


def as_unit_tensor(units: dict, shape: tuple[int, ...]) -> torch.Tensor:
    """The ``reduction="none"`` layout: absent units are 0."""
    out = torch.zeros(shape, dtype=torch.float64)
    for key, value in units.items():
        out[key] = value.detach()
    return out
