"""The arena's tables: the results table (per loss, mean and 95% interval over seeds), the paired
table (each loss against the baseline) and the per-seed table, as one model that the HTML report
and the terminal (rich, imported only when a table is printed) both render.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from losskit.arena import stats
from losskit.arena.results_fields import (
    _MISSING,
    _correlation_list,
    _direction,
    _epochs,
    _finite,
    _format,
    _format_seconds,
    _groups,
    _label,
    _metric_names,
    _run_name,
    _runs,
    _seed,
    _several_seeds,
    _short,
    _val,
)

_STATUS_COLOURS = {"finished": "green", "diverged": "red", "failed": "red", "interrupted": "dark_orange",
                   "partial": "dark_orange"}


# --- the table model, shared by HTML and the terminal -----------------------------------------------


@dataclass
class _Cell:
    text: str
    best: bool = False
    style: str = ""  # "status-<status>" for status cells


@dataclass
class _Table:
    headers: list[str]
    rows: list[list[_Cell]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _header(results: Mapping[str, Any], metric: str) -> str:
    arrow = {"max": " ↑", "min": " ↓"}.get(_direction(results, metric) or "", "")
    return f"{metric}{arrow}" + (" (primary)" if metric == results.get("primary_metric") else "")


def _decimals(half: float) -> int:
    """Decimals that show ``half`` (a half-width) to two significant digits."""
    return max(0, 1 - math.floor(math.log10(half))) if half > 0 and math.isfinite(half) else 4


def _interval_text(entry: Mapping[str, Any] | None, runs: int) -> str:
    """``mean ± half-width`` of a summary entry, the mean to the half-width's last digit; the mean
    alone for one seed; ``(n=k)`` when fewer seeds than runs count.

    Examples:
        >>> _interval_text({"mean": 0.83214, "ci_low": 0.8191, "ci_high": 0.8451, "n": 3}, 3)
        '0.832 ± 0.013'
        >>> _interval_text({"mean": 181.2, "ci_low": 169.0, "ci_high": 193.4, "n": 4}, 5)
        '181 ± 12 (n=4)'
    """
    if not entry:
        return _MISSING
    if entry.get("ci_low") is None:
        text = _format(entry["mean"])
    else:
        half = (entry["ci_high"] - entry["ci_low"]) / 2
        d = _decimals(half)
        text = f"{entry['mean']:.{d}f} ± {half:.{d}f}"
    return text + (f" (n={entry['n']})" if entry["n"] < runs else "")


def _difference_text(entry: Mapping[str, Any]) -> str:
    """A paired difference and its interval, e.g. ``-0.046 [-0.088, -0.004] n=3``."""
    if entry["ci_low"] is None:
        return f"{entry['mean']:+.4g} (1 seed)"
    d = _decimals((entry["ci_high"] - entry["ci_low"]) / 2)
    return f"{entry['mean']:+.{d}f} [{entry['ci_low']:+.{d}f}, {entry['ci_high']:+.{d}f}] n={entry['n']}"


def _status_cell(runs: list[Mapping[str, Any]]) -> _Cell:
    statuses = [str(run.get("status") or "unknown") for run in runs]
    error = next((str(run["error"]) for run in runs if run.get("error")), None)
    if len(runs) == 1:
        text = statuses[0]
    else:
        counts = {s: statuses.count(s) for s in dict.fromkeys(sorted(statuses, key=lambda s: s != "finished"))}
        text = ", ".join(f"{n} {s}" for s, n in counts.items())
    text = f"{text}: {_short(error, 72)}" if error else text
    style = f"status-{statuses[0]}" if len(set(statuses)) == 1 else "status-partial"
    return _Cell(text, style=style)


def _span(values: list[int]) -> str:
    low, high = min(values, default=0), max(values, default=0)
    return str(low) if low == high else f"{low}-{high}"


def _for_stats(results: Mapping[str, Any], metrics: list[str]) -> dict[str, Any]:
    """The results as :mod:`losskit.arena.stats` reads them: every run named, the losses in order."""
    runs = [{**run, "name": _run_name(run, index)} for index, run in enumerate(_runs(results))]
    return {**results, "runs": runs, "metrics": {m: _direction(results, m) for m in metrics},
            "config": {**(results.get("config") or {}), "losses": [name for name, _ in _groups(results)]}}


def _table_model(results: Mapping[str, Any]) -> _Table:
    """One row per loss: its metrics' means over the finished seeds with their 95% intervals."""
    metrics = _metric_names(results)
    primary = results.get("primary_metric")
    groups = _groups(results)
    summary = stats.summarize(_for_stats(results, metrics))
    per_run = _correlation_list(results)
    several = _several_seeds(results)

    means = {m: {i: _finite((summary[name]["metrics"].get(m) or {}).get("mean")) for i, (name, _) in enumerate(groups)}
             for m in metrics}
    best: dict[str, set[int]] = {}
    for metric in metrics:
        values = {i: v for i, v in means[metric].items() if v is not None}
        direction = _direction(results, metric)
        target = (max if direction == "max" else min)(values.values()) if direction and values else None
        best[metric] = {i for i, v in values.items() if v == target}

    corr_header = f"r(loss, {primary})" if primary else "r(loss, metric)"
    table = _Table(["loss", "status", "seeds", "epochs", "final train loss", *(_header(results, m) for m in metrics),
                    corr_header, "non-finite steps", "time"])
    for position, (name, members) in enumerate(groups):
        runs = [run for _, run in members]
        rs = [per_run[index] for index, _ in members if per_run[index] is not None]
        nonfinite = [run.get("nonfinite_steps") for run in runs if isinstance(run.get("nonfinite_steps"), int)]
        table.rows.append([
            _Cell(name),
            _status_cell(runs),
            _Cell(str(len(runs))),
            _Cell(_span([len(_epochs(run)) for run in runs])),
            _Cell(_interval_text(summary[name]["train_loss"], len(runs))),
            *(_Cell(_interval_text(summary[name]["metrics"].get(m), len(runs)), best=position in best[m])
              for m in metrics),
            _Cell(_MISSING if not rs else f"{math.fsum(rs) / len(rs):+.2f}"),
            _Cell(str(sum(nonfinite)) if nonfinite else _MISSING),
            _Cell(_format_seconds(math.fsum(_finite(run.get("seconds")) or 0.0 for run in runs))),
        ])
        table.names.append(name)
        for index, run in members:
            label, status = _label(run, index, several), str(run.get("status") or "unknown")
            if run.get("error"):
                table.notes.append(f"{label} ({status}): {run['error']}")
            elif not _epochs(run):
                table.notes.append(f"{label} ({status}): no epoch completed")
            elif status != "finished":
                table.notes.append(f"{label}: {status} after {len(_epochs(run))} epoch(s)")
    return table


def _paired_model(results: Mapping[str, Any]) -> _Table | None:
    """One row per loss but the baseline: its difference from the baseline per metric, with the
    95% paired interval; cells styled ``better`` or ``worse`` where the interval excludes 0."""
    metrics = _metric_names(results)
    groups = _groups(results)
    if len(groups) < 2 or not metrics:
        return None
    paired = stats.compare_to_baseline(_for_stats(results, metrics))
    table = _Table(["loss", *(_header(results, m) for m in metrics)])
    for name, _ in groups[1:]:
        row = [_Cell(name)]
        for metric in metrics:
            entry = paired["differences"].get(name, {}).get(metric)
            if not entry:
                row.append(_Cell(_MISSING))
            else:
                style = {True: "better", False: "worse"}.get(entry["better"], "") if entry["significant"] else ""
                row.append(_Cell(_difference_text(entry), style=style))
        table.rows.append(row)
        table.names.append(name)
    table.notes.append(f"Difference from {groups[0][0]} (the baseline): the mean over the seeds on which both "
                       "finished, and its 95% paired t interval; marked better or worse only where the interval "
                       "excludes 0.")
    return table


def _seed_model(results: Mapping[str, Any]) -> _Table:
    """One row per run (loss and seed): its metrics at its last epoch, whatever its status."""
    metrics = _metric_names(results)
    corr = _correlation_list(results)
    table = _Table(["loss", "seed", "status", "epochs", "final train loss", *(_header(results, m) for m in metrics),
                    "r", "non-finite steps", "time"])
    for index, run in enumerate(_runs(results)):
        epoch = (_epochs(run) or [None])[-1]
        val = _val(epoch) if epoch is not None else {}
        status = str(run.get("status") or "unknown")
        table.rows.append([
            _Cell(_run_name(run, index)),
            _Cell(_MISSING if _seed(run) is None else str(_seed(run))),
            _Cell(status, style=f"status-{status}"),
            _Cell(str(len(_epochs(run)))),
            _Cell(_format(epoch.get("train_loss")) if epoch is not None else _MISSING),
            *(_Cell(_format(val.get(m))) for m in metrics),
            _Cell(_MISSING if corr[index] is None else f"{corr[index]:+.2f}"),
            _Cell(str(run.get("nonfinite_steps") if run.get("nonfinite_steps") is not None else _MISSING)),
            _Cell(_format_seconds(run.get("seconds"))),
        ])
        table.names.append(_run_name(run, index))
    return table


def _rich_table(model: _Table, title: str, caption: str):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), caption=Text(caption))
    for position, head in enumerate(model.headers):
        table.add_column(Text(head), justify="left" if position < 2 else "right", overflow="fold")
    for row in model.rows:
        cells = []
        for cell in row:
            style = "bold green" if cell.best or cell.style == "better" else "bold red" if cell.style == "worse" else ""
            if cell.style.startswith("status-"):
                style = _STATUS_COLOURS.get(cell.style[len("status-"):], "")
            cells.append(Text(cell.text, style=style))
        table.add_row(*cells)
    return table


def results_table(results: Mapping[str, Any]):
    """The results as a :class:`rich.table.Table`: one row per loss, each metric's mean over the
    finished seeds ± the half-width of its 95% interval.

    The best mean of each metric column (by the direction in ``results["metrics"]``) is bold
    green; run names and errors are plain text, never rich markup.
    """
    title = f"losskit compare: {results['task']}" if results.get("task") else "losskit compare"
    caption = ("metrics at the last epoch, mean over the finished seeds ± half-width of the 95% t interval; "
               "best mean per column in bold green")
    return _rich_table(_table_model(results), title, caption)


def paired_table(results: Mapping[str, Any]):
    """Each loss against the baseline as a :class:`rich.table.Table` (``None`` with fewer than two losses):
    the paired difference and its 95% interval per metric, green where better, red where worse."""
    model = _paired_model(results)
    if model is None:
        return None
    return _rich_table(model, "against the baseline, paired over seeds", model.notes[0])


def print_results(results: Mapping[str, Any], console=None) -> None:
    """Print :func:`results_table`, :func:`paired_table`, the verdict and any run problems to a rich console."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    console.print(results_table(results))
    paired = paired_table(results)
    if paired is not None:
        console.print(paired)
    if results.get("interrupted"):
        console.print(Text("Interrupted: the comparison stopped before every run finished.", style="bold yellow"))
    verdict = results.get("verdict")
    if verdict:
        console.print(Text("Verdict: ", style="bold") + Text(str(verdict)))
    for note in _table_model(results).notes:
        console.print(Text(note, style="yellow"))
