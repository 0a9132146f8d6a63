"""The arena's figures, drawn with matplotlib (imported only when a figure is drawn, Agg backend
through :class:`matplotlib.figure.Figure`, never a window) and returned as base64 PNG for the HTML
report: training loss per loss and component, each validation metric against the epoch (both the
mean over seeds with the band of the seeds), training loss against the primary metric, and the
final loss against the final metric across seeds.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Mapping
from typing import Any

from losskit.arena.results_fields import (
    _components,
    _direction,
    _epochs,
    _finite,
    _groups,
    _loss_metric_pairs,
    _metric_names,
    _number,
    _ordered_union,
    _short,
    _val,
    correlations,
)
from losskit.arena.tables import (
    _status_cell,
)

# --- figures -----------------------------------------------------------------------------------------


def _series(values: Iterable[Any]) -> list[float]:
    """Numbers for plotting: missing and non-finite values become NaN (a gap in the line)."""
    out = []
    for value in values:
        number = _finite(value)
        out.append(math.nan if number is None else number)
    return out


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _grid(count: int, columns: int = 3) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def _band(runs: list[Mapping[str, Any]], value) -> tuple[list[int], list[float], list[float], list[float]]:
    """Epochs, and per epoch the mean, lowest and highest finite ``value(epoch)`` over ``runs``
    (NaN where no run has one: a gap in the line)."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for position, epoch in enumerate(_epochs(run)):
            values = by_epoch.setdefault(int(epoch.get("epoch", position + 1)), [])
            number = _finite(value(epoch))
            if number is not None:
                values.append(number)
    xs = sorted(by_epoch)
    mean = [math.fsum(by_epoch[x]) / len(by_epoch[x]) if by_epoch[x] else math.nan for x in xs]
    low = [min(by_epoch[x], default=math.nan) for x in xs]
    high = [max(by_epoch[x], default=math.nan) for x in xs]
    return xs, mean, low, high


def _draw_band(ax, runs: list[Mapping[str, Any]], value, **line) -> None:
    """The mean over seeds as a line and, with several seeds, the lowest-to-highest band."""
    xs, mean, low, high = _band(runs, value)
    (drawn,) = ax.plot(xs, mean, **line)
    if len(runs) > 1:
        ax.fill_between(xs, low, high, color=drawn.get_color(), alpha=0.15, linewidth=0)


def _figure_losses(results: Mapping[str, Any]) -> str | None:
    """(a) Training loss per loss: the total and each named component, the mean over seeds with the
    band of the seeds, one subplot per loss."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    groups = _groups(results)
    if not groups:
        return None
    rows, cols = _grid(len(groups))
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (name, members) in zip(axes, groups, strict=False):
        runs = [run for _, run in members]
        ax.set_title(f"{_short(name)} ({_status_cell(runs).text.split(':')[0]})", fontsize="medium")
        ax.set_xlabel("epoch")
        ax.set_ylabel("train loss")
        if not any(_epochs(run) for run in runs):
            ax.text(0.5, 0.5, "no epochs", ha="center", va="center", transform=ax.transAxes, color="0.4")
            continue
        _draw_band(ax, runs, lambda e: e.get("train_loss"), color="black", linewidth=2.2, marker="o",
                   markersize=3, label="total")
        total = _band(runs, lambda e: e.get("train_loss"))[1]
        names = _ordered_union(_components(e).keys() for run in runs for e in _epochs(run))
        for component in names:
            if len(names) == 1 and _band(runs, lambda e, c=component: _components(e).get(c))[1] == total:
                continue  # a single component equal to the total adds nothing
            _draw_band(ax, runs, lambda e, c=component: _components(e).get(c), linewidth=1.3, marker=".",
                       label=component)
        bad = sorted({int(e.get("epoch", i + 1)) for run in runs for i, e in enumerate(_epochs(run))
                      if _number(e.get("train_loss")) is not None and _finite(e.get("train_loss")) is None})
        for position, xi in enumerate(bad):
            ax.axvline(xi, color="firebrick", linestyle="--", linewidth=1.0,
                       label="non-finite loss" if position == 0 else None)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    return _png(fig)


def _figure_metrics(results: Mapping[str, Any]) -> str | None:
    """(b) Each validation metric against the epoch, every loss on one axes per metric: the mean over
    seeds with the band of the seeds."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics = _metric_names(results)
    if not metrics:
        return None
    rows, cols = _grid(len(metrics), 2)
    fig = Figure(figsize=(5.6 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        direction = {"max": "higher is better", "min": "lower is better"}.get(_direction(results, metric) or "")
        ax.set_title(metric + (f" ({direction})" if direction else ""), fontsize="medium")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        for name, members in _groups(results):
            runs = [run for _, run in members]
            if not any(_finite(_val(e).get(metric)) is not None for run in runs for e in _epochs(run)):
                continue
            _draw_band(ax, runs, lambda e, m=metric: _val(e).get(m), marker="o", markersize=3, label=_short(name, 32))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    return _png(fig)


def _figure_loss_vs_metric(results: Mapping[str, Any]) -> str | None:
    """(c) Per loss: training loss against the primary metric, every epoch of every seed, with
    Pearson r averaged over seeds."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metric = results.get("primary_metric")
    groups = _groups(results)
    if not metric or not groups or metric not in _metric_names(results):
        return None
    r_by_loss = correlations(results)
    rows, cols = _grid(len(groups))
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (name, members) in zip(axes, groups, strict=False):
        r = r_by_loss.get(name)
        label = "Pearson r = " + ("n/a (< 3 epochs or constant)" if r is None else f"{r:+.2f}")
        ax.set_title(_short(name) + ("" if r is None else f"  (r = {r:+.2f})"), fontsize="medium")
        ax.set_xlabel("train loss")
        ax.set_ylabel(f"val {metric}")
        pairs = [_loss_metric_pairs(run, metric) for _, run in members]
        if not any(xs for xs, _, _ in pairs):
            ax.text(0.5, 0.5, "no epoch with both values", ha="center", va="center", transform=ax.transAxes,
                    color="0.4")
            continue
        for xs, ys, _ in pairs:
            ax.plot(xs, ys, color="0.75", linewidth=0.8, zorder=1)
        points = ax.scatter([x for xs, _, _ in pairs for x in xs], [y for _, ys, _ in pairs for y in ys],
                            c=[e for _, _, es in pairs for e in es], cmap="viridis", s=28, zorder=2, label=label)
        fig.colorbar(points, ax=ax, label="epoch", shrink=0.8, ticks=MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", handlelength=0.8)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    return _png(fig)


def _figure_final_scatter(results: Mapping[str, Any]) -> str | None:
    """(d) Final training loss against the final primary metric, one point per finished run, one
    colour per loss."""
    from matplotlib.figure import Figure

    metric = results.get("primary_metric")
    if not metric:
        return None
    points = []
    for name, members in _groups(results):
        finished = [run for _, run in members if run.get("status") == "finished" and _epochs(run)]
        last = [_epochs(run)[-1] for run in finished]
        xy = [(_finite(e.get("train_loss")), _finite(_val(e).get(metric))) for e in last]
        points.append((name, [(x, y) for x, y in xy if x is not None and y is not None]))
    if not any(xy for _, xy in points):
        return None
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    for name, xy in points:
        if xy:
            ax.scatter([x for x, _ in xy], [y for _, y in xy], s=36, alpha=0.85, label=_short(name, 32))
    ax.set_xlabel("final training loss (each loss on its own scale)")
    ax.set_ylabel(f"final val {metric}")
    ax.set_title(f"final training loss against {metric}, one point per seed", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)
