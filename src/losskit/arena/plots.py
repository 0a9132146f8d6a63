"""Plots of losses against a one-dimensional probe: the loss and its gradient, one family per row.

``plot_losses(["mse", "huber", "ce", "focal", "giou"], Path("losses.png"))`` draws, for each named
loss, the value and the derivative (by autograd) along the natural 1-D probe of its registry family:

* **regression**: the residual :math:`r \\in [-3, 3]` (``input=r``, ``target=0``).
* **classification**: the margin :math:`x \\in [-6, 6]`. Binary losses (sigmoid or BCE type, which
  take a target of the input's shape) see the logit ``x`` with target 1; softmax losses (index
  targets) see the two-class logits ``(x, 0)`` with target 0, so ``x`` is the margin of the true
  class. Both read the same way: right is confident and correct, left is confident and wrong.
* **boxes**: a unit box against the same box shifted by :math:`s \\in [-1.5, 1.5]` along ``x``; the
  x axis is the shift ``s`` (the IoU is :math:`(1-|s|)/(1+|s|)` for :math:`|s| < 1` and 0 beyond).
  Rotated boxes ``(cx, cy, w, h, angle)`` and 3-D boxes ``xyzxyz`` get the same shift.

Other families (segmentation, divergence, detection, ...) have no such probe and raise
``ValueError``. A loss that cannot be evaluated on its probe (it needs an option such as
``class_counts``, or rejects the probe's shapes) is named, with the reason, in a note under the
figure and in a :class:`UserWarning`; pass the missing options with ``options=``. matplotlib is
needed (imported when a plot is drawn, with the Agg backend: nothing is ever shown on screen).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from losskit.arena.report import atomic_write

PROBE_FAMILIES = ("regression", "classification", "boxes")

_AXIS_LABELS = {
    "regression": "residual r = input - target",
    "classification": "margin x (logit of the true class against 0)",
    "boxes": "shift s of a unit box along x (IoU = (1 - |s|) / (1 + |s|) for |s| < 1, else 0)",
}
_LINESTYLES = ("-", "--", ":", "-.")
_VARIABLES = {"regression": "r", "classification": "x", "boxes": "s"}
_RANGES = {"regression": (-3.0, 3.0), "classification": (-6.0, 6.0), "boxes": (-1.5, 1.5)}


@dataclass
class Probe:
    """One loss evaluated along its family's probe."""

    name: str
    family: str
    x: Any = None  # numpy arrays when it worked
    loss: Any = None
    grad: Any = None
    kind: str = ""  # how it was probed, for the legend
    error: str | None = None


def _required_options(cls) -> list[str]:
    params = inspect.signature(cls.function).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]


def _box_encodings(s):
    """Input (shifted) and target (unit) boxes for the shift ``s``, in each box layout the losses use."""
    import torch

    zeros, ones = torch.zeros_like(s), torch.ones_like(s)
    yield "xyxy boxes", torch.stack([s, zeros, ones + s, ones], -1), torch.tensor([0.0, 0.0, 1.0, 1.0])
    yield ("rotated boxes (cx, cy, w, h, angle)", torch.stack([0.5 + s, 0.5 * ones, ones, ones, zeros], -1),
           torch.tensor([0.5, 0.5, 1.0, 1.0, 0.0]))
    yield ("3-D boxes xyzxyz", torch.stack([s, zeros, zeros, ones + s, ones, ones], -1),
           torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))


def _evaluate(module, family: str, points: int):
    """Yield (kind, x, per-point loss) candidates for the probe; the first that runs is used."""
    import torch

    low, high = _RANGES[family]
    if family == "regression":
        r = torch.linspace(low, high, points, dtype=torch.float64, requires_grad=True)
        yield "input r, target 0", r, lambda: module(r, torch.zeros_like(r), reduction="none")
    elif family == "classification":
        x = torch.linspace(low, high, points, dtype=torch.float64, requires_grad=True)
        yield ("softmax: logits (x, 0), target 0", x,
               lambda: module(torch.stack([x, torch.zeros_like(x)], 1),
                              torch.zeros(points, dtype=torch.long), reduction="none"))
        yield "binary: logit x, target 1", x, lambda: module(x, torch.ones_like(x), reduction="none")
    elif family == "boxes":
        for index in range(3):
            s = torch.linspace(low, high, points, dtype=torch.float64, requires_grad=True)
            kind, pred, unit = list(_box_encodings(s))[index]
            yield (f"{kind}: shifted box vs unit box", s,
                   lambda pred=pred, unit=unit: module(pred, unit.to(pred).expand_as(pred), reduction="none"))


def probe_loss(name: str, *, points: int = 201, options: Mapping[str, Any] | None = None) -> Probe:
    """Evaluate one registered loss and its gradient along its family's 1-D probe.

    Args:
        name: A registered name or alias (``losskit.available()``).
        points: Number of probe points.
        options: Options for ``losskit.get(name, **options)``.

    Returns:
        A :class:`Probe` with numpy arrays ``x``, ``loss``, ``grad``, or ``error`` set when the loss
        could not be evaluated on the probe.

    Raises:
        ValueError: For an unknown name (with suggestions) or a family without a 1-D probe.
    """
    import torch

    import losskit
    from losskit._core.registry import entry

    found = entry(name)  # unknown names raise the registry's ValueError with "did you mean"
    family = found.family
    if family not in PROBE_FAMILIES:
        raise ValueError(f"no 1-D probe for family {family}; plot supports {', '.join(PROBE_FAMILIES)}")
    options = dict(options or {})
    probe = Probe(found.name, family)
    missing = [key for key in _required_options(found.cls) if key not in options]
    if missing:
        probe.error = (f"needs option(s) {', '.join(missing)} that the probe cannot supply; "
                       f"pass options={{{found.name!r}: {{{missing[0]!r}: ...}}}}")
        return probe
    try:
        module = losskit.get(found.name, **options)
    except (TypeError, ValueError) as error:
        probe.error = f"cannot be built with options {options}: {error}"
        return probe
    errors = []
    for kind, x, compute in _evaluate(module, family, points):
        try:
            loss = compute()
            if loss.shape != x.shape:
                raise ValueError(f"gives shape {tuple(loss.shape)} with reduction='none', "
                                 f"expected one value per probe point {tuple(x.shape)}")
            (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
        except (TypeError, ValueError, RuntimeError) as error:
            errors.append(f"{kind}: {error}")
            continue
        grad = torch.zeros_like(x) if grad is None else grad
        probe.x, probe.kind = x.detach().numpy(), kind
        probe.loss, probe.grad = loss.detach().double().numpy(), grad.detach().double().numpy()
        return probe
    probe.error = "fails on the probe (" + "; ".join(errors) + ")"
    return probe


def plot_losses(names: Sequence[str], out: str | Path, *, points: int = 201,
                options: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Draw each loss and its gradient along its family's 1-D probe; one row per family.

    Args:
        names: Registered names or aliases; each must belong to a family with a probe
            (regression, classification, boxes).
        out: Path of the PNG to write (parent folders are created; written atomically).
        points: Number of probe points per curve.
        options: Per-name options for ``losskit.get``, e.g. ``{"ldam": {"class_counts": [90, 10]}}``.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: For an unknown name, a family without a probe (``"no 1-D probe for family
            segmentation; plot supports regression, classification, boxes"``), an empty list, or
            when no loss could be evaluated (the message gives each reason).
    """
    import io

    from matplotlib.figure import Figure

    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("plot_losses needs at least one loss name")
    if points < 2:
        raise ValueError(f"points must be at least 2, got {points}")
    options = dict(options or {})
    probes: list[Probe] = []
    seen = set()
    for name in names:
        probe = probe_loss(name, points=points, options=options.get(name))
        if probe.name not in seen:
            seen.add(probe.name)
            probes.append(probe)
    failed = [p for p in probes if p.error]
    for probe in failed:
        warnings.warn(f"plot_losses: {probe.name!r} {probe.error}", UserWarning, stacklevel=2)
    drawn = [p for p in probes if not p.error]
    if not drawn:
        raise ValueError("no loss could be evaluated on its probe: "
                         + "; ".join(f"{p.name!r} {p.error}" for p in failed))

    families = [f for f in PROBE_FAMILIES if any(p.family == f for p in drawn)]
    fig = Figure(figsize=(11, 3.6 * len(families) + 0.4 * len(failed)), layout="constrained")
    axes = fig.subplots(len(families), 2, squeeze=False)
    for row, family in zip(axes, families, strict=True):
        loss_ax, grad_ax = row
        for index, probe in enumerate(p for p in drawn if p.family == family):
            label = probe.name if family != "classification" else f"{probe.name} ({probe.kind.split(':')[0]})"
            style = _LINESTYLES[(index // 10) % len(_LINESTYLES)]  # the colour cycle has 10 colours
            (line,) = loss_ax.plot(probe.x, probe.loss, label=label, linestyle=style)
            grad_ax.plot(probe.x, probe.grad, color=line.get_color(), label=label, linestyle=style)
        loss_ax.set_title(f"{family}: loss")
        grad_ax.set_title(f"{family}: d loss / d {_VARIABLES[family]} (autograd)")
        for ax in row:
            ax.set_xlabel(_AXIS_LABELS[family])
            ax.axhline(0.0, color="0.7", linewidth=0.8)
            ax.axvline(0.0, color="0.7", linewidth=0.8)
            ax.grid(True, alpha=0.3)
        loss_ax.legend(fontsize="small")
    if failed:
        note = "\n".join(f"not drawn: {p.name} {p.error}" for p in failed)
        fig.supxlabel(note, fontsize="small", color="firebrick", ha="center")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    out = Path(out)
    atomic_write(out, buffer.getvalue())
    return out
