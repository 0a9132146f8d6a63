"""Validation shared by the box functions: the format tables, the default ``eps`` and its dtype
policy, and the shape and value checks of box tensors."""

from __future__ import annotations

import torch
from torch import Tensor

from losskit._core.checks import check_number, check_one_of, check_tensor, checks_enabled
from losskit._core.numerics import LOW_PRECISION as _LOW_PRECISION

__all__ = ["AXIS_ALIGNED_FORMATS", "ROTATED_FORMATS", "check_boxes", "default_eps"]

AXIS_ALIGNED_FORMATS: tuple[str, ...] = ("xyxy", "xywh", "cxcywh")
ROTATED_FORMATS: tuple[str, ...] = ("xywhr", "cxcywhr", "xyxyxyxy")
_WIDTH = {"xyxy": 4, "xywh": 4, "cxcywh": 4, "xywhr": 5, "cxcywhr": 5, "xyxyxyxy": 8, "xyzxyz": 6, "xyzwlhr": 7}


def default_eps(dtype: torch.dtype) -> float:
    """The default ``eps`` of the box functions for boxes of ``dtype`` (see the module docstring).

    Examples:
        >>> default_eps(torch.float32), default_eps(torch.float16)
        (1e-07, 1e-06)
    """
    return 1e-6 if dtype in _LOW_PRECISION else 1e-7


def _resolve_eps(eps: float | None, dtype: torch.dtype) -> float:
    if eps is None:
        return default_eps(dtype)
    return check_number("eps", eps, low=0.0)


def _result_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype.is_floating_point else torch.float32


def _check_box_tensor(name: str, boxes: object, fmt: str) -> Tensor:
    boxes = check_tensor(name, boxes)
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise TypeError(f"{name} must hold real box coordinates, got dtype {boxes.dtype}")
    width = _WIDTH[fmt]
    if boxes.dim() == 0 or boxes.shape[-1] != width:
        raise ValueError(f"{name} must have shape (..., {width}) for fmt={fmt!r}, got shape {tuple(boxes.shape)}")
    return boxes


def _check_fmt(fmt: object, choices: tuple[str, ...], name: str = "fmt") -> str:
    check_one_of(name, fmt, choices)
    return "xywhr" if fmt == "cxcywhr" else fmt  # type: ignore[return-value]


def check_boxes(name: str, boxes: Tensor, fmt: str = "xyxy", *, finite: bool = False) -> None:
    """Value check: every box has non-negative width and height (``x1 <= x2``, ``y1 <= y2``).

    Zero width or height is valid. Runs only while value checks are on (it needs a device sync).
    With ``finite=True`` (the box losses) NaN and infinite coordinates are rejected too, in the
    same sync: a bounded loss (NWD, ProbIoU, the IoU family) can be finite at an infinite box while
    its gradient is NaN. Without it NaN passes here. Corner boxes (``xyxyxyxy``) have no order to
    check.

    Raises:
        ValueError: naming ``name``, the format, how many boxes are invalid and the first one.
    """
    if fmt == "xyxyxyxy" or not checks_enabled() or boxes.numel() == 0:
        return
    if fmt in ("xyxy", "xyzxyz"):
        d = boxes.shape[-1] // 2
        size = boxes[..., d:] - boxes[..., :d]
        rule = "x1 <= x2, y1 <= y2" + (", z1 <= z2" if d == 3 else "")
    elif fmt == "xyzwlhr":
        size = boxes[..., 3:6]
        rule = "w >= 0, l >= 0, h >= 0"
    else:
        size = boxes[..., 2:4]
        rule = "w >= 0, h >= 0"
    inverted = (size < 0).any(-1)
    bad = inverted | ~torch.isfinite(boxes).all(-1) if finite else inverted
    if not bool(bad.any()):
        return
    flat = bad.reshape(-1)
    first = int(flat.nonzero()[0])
    example = [round(v, 6) for v in boxes.reshape(-1, boxes.shape[-1])[first].tolist()]
    if finite and not bool(torch.isfinite(boxes.reshape(-1, boxes.shape[-1])[first]).all()):
        raise ValueError(
            f"{name} has {int(flat.sum())} of {flat.numel()} boxes with NaN or infinite coordinates (first at "
            f"flat index {first}: {example}). Fix the upstream computation, or switch value checks off with "
            "losskit.set_checks(False)"
        )
    raise ValueError(
        f"{name} has {int(flat.sum())} of {flat.numel()} boxes with negative width or height for fmt={fmt!r} "
        f"(first at flat index {first}: {example}); boxes need {rule} (zero size is "
        "allowed). Check the format (xyxy, xywh = x1, y1, w, h as COCO, cxcywh), or switch value checks off "
        "with losskit.set_checks(False)"
    )
