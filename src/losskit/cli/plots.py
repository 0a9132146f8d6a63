"""Plots of losses against a one-dimensional probe: the loss and its gradient, one row per family.

``plot_losses(["mse", "huber", "ce", "focal", "giou"], Path("losses.png"))`` draws, for each named
loss, the value and the derivative (by autograd) along the 1-D probe its spec names in the table
of example inputs (:func:`losskit.examples.sweep`; the probes and what each family's means are in
:mod:`losskit.examples.probes`). The probe also carries the options a loss cannot be built
without (``class_counts`` for LDAM); ``options=`` replaces them.

Nothing is caught: a loss that raises on its probe raises here (the tests draw every registered
loss). matplotlib is needed (imported when a plot is drawn, with the Agg backend: nothing is ever
shown on screen).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from losskit.arena.report import atomic_write

# The families in the order of the figure's rows.
PROBE_FAMILIES = ("regression", "classification", "boxes", "detection", "segmentation", "contrastive",
                  "metric", "divergence", "rl", "preference")
_LINESTYLES = ("-", "--", ":", "-.")


@dataclass
class Probe:
    """One loss evaluated along its probe.

    ``x``, ``loss`` and ``grad`` hold the first curve; ``curves`` holds every curve as
    ``(label, loss, grad)`` (a loss probed at two settings, such as PPO at a positive and a
    negative advantage, has two). ``axis`` and ``variable`` name the probe's x axis.
    """

    name: str
    family: str
    x: Any = None  # numpy arrays
    loss: Any = None
    grad: Any = None
    kind: str = ""  # how it was probed, for the legend
    curves: list = field(default_factory=list)
    axis: str = ""
    variable: str = ""


def probe_loss(name: str, *, points: int = 201, options: Mapping[str, Any] | None = None) -> Probe:
    """Evaluate one registered loss and its gradient along its 1-D probe.

    Args:
        name: A registered name or alias (``losskit.available()``).
        points: Number of probe points.
        options: Options for ``losskit.get(name, **options)``, over those the probe carries.

    Returns:
        A :class:`Probe` with numpy arrays ``x``, ``loss``, ``grad`` (and every curve in ``curves``).

    Raises:
        ValueError: For an unknown name (with suggestions), a family outside
            :data:`PROBE_FAMILIES`, or a curve without one value per probe point; whatever the
            loss raises on its probe.
    """
    import torch

    import losskit
    from losskit import examples
    from losskit._core.registry import entry

    found = entry(name)  # unknown names raise the registry's ValueError with "did you mean"
    if found.family not in PROBE_FAMILIES:
        raise ValueError(f"no 1-D probe for family {found.family}; plot supports {', '.join(PROBE_FAMILIES)}")
    sweep = examples.sweep(found.name)
    module = losskit.get(found.name, **{**sweep.options, **(options or {})})
    x = sweep.axis.grid(points)
    curves = []
    for label, loss in sweep.curves(module, x):
        if loss.shape != x.shape:
            raise ValueError(f"{found.name!r} gives shape {tuple(loss.shape)} on its probe, "
                             f"expected one value per probe point {tuple(x.shape)}")
        (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True, retain_graph=True)
        grad = torch.zeros_like(x) if grad is None else grad
        curves.append((label, loss.detach().double().numpy(), grad.detach().double().numpy()))
    return Probe(found.name, found.family, x.detach().numpy(), curves[0][1], curves[0][2], sweep.kind, curves,
                 sweep.axis.label, sweep.axis.variable)


def plot_losses(names: Sequence[str], out: str | Path, *, points: int = 201,
                options: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Draw each loss and its gradient along its 1-D probe; one row per family and probe axis.

    Args:
        names: Registered names or aliases; each must belong to a family with a probe
            (:data:`PROBE_FAMILIES`).
        out: Path of the PNG to write (parent folders are created; written atomically).
        points: Number of probe points per curve.
        options: Per-name options for ``losskit.get`` over those the probe carries, e.g.
            ``{"ldam": {"scale": 30.0}}``.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: For an unknown name, a family without a probe (``"no 1-D probe for family
            ...; plot supports regression, classification, ..."``) or an empty list; whatever a
            loss raises on its probe.
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
    # One row per (family, probe axis): most families have one axis, rl has one per kind of input.
    rows: list[tuple[str, str, str]] = []
    for family in PROBE_FAMILIES:
        for probe in probes:
            if probe.family == family and (family, probe.axis, probe.variable) not in rows:
                rows.append((family, probe.axis, probe.variable))
    fig = Figure(figsize=(11, 3.6 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for row, (family, axis, variable) in zip(axes, rows, strict=True):
        loss_ax, grad_ax = row
        index = 0
        for probe in probes:
            if (probe.family, probe.axis, probe.variable) != (family, axis, variable):
                continue
            for label, loss, grad in probe.curves:
                name = f"{probe.name} ({label})" if label else probe.name
                if family in ("classification", "boxes") and not label:
                    name = f"{probe.name} ({probe.kind.split(':')[0]})" if family == "classification" else name
                style = _LINESTYLES[(index // 10) % len(_LINESTYLES)]  # the colour cycle has 10 colours
                (line,) = loss_ax.plot(probe.x, loss, label=name, linestyle=style)
                grad_ax.plot(probe.x, grad, color=line.get_color(), label=name, linestyle=style)
                index += 1
        several = sum(r[0] == family for r in rows) > 1
        loss_ax.set_title(f"{family}: loss" + (f" against {variable}" if several else ""))
        grad_ax.set_title(f"{family}: d loss / d {variable} (autograd)")
        for ax in row:
            ax.set_xlabel(axis, fontsize="small" if len(axis) > 70 else None, wrap=True)
            ax.axhline(0.0, color="0.7", linewidth=0.8)
            ax.axvline(0.0, color="0.7", linewidth=0.8)
            ax.grid(True, alpha=0.3)
        loss_ax.legend(fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    out = Path(out)
    atomic_write(out, buffer.getvalue())
    return out
