"""The arena's report: one self-contained HTML page, the raw results, a CSV per run, terminal tables.

Everything here reads the results dict that the runner produces (and writes as ``results.json``)::

    {"task": ..., "description": ..., "config": {..., "losses": [...], "seeds": [...]},
     "losskit_version": ..., "primary_metric": "dice", "metrics": {"dice": "max", ...},
     "runs": [{"name", "spec", "seed", "status", "error", "nonfinite_steps", "seconds",
               "epochs": [{"epoch", "train_loss", "components": {...}, "val": {...} | None,
                           "seconds"}, ...]}, ...],
     "summary": {...}, "paired": {...}, "verdict": str | None}

There is one run per (loss, seed); a run without ``"seed"`` counts as seed 0. ``summary`` and
``paired`` are :func:`losskit.arena.stats.summarize` and
:func:`~losskit.arena.stats.compare_to_baseline` of the runs (recomputed here when absent).

:func:`write_report` writes ``report.html`` (inline CSS, plots embedded as base64 PNG data URIs,
every piece of text escaped), ``results.json`` and ``runs/<run folder>/seed-<seed>/history.csv``
(the folder also holds the run's checkpoints, see :func:`run_folder`), each file atomically (a
temporary file, then :func:`os.replace`); :func:`write_results` the last two only. The results
table has one row per loss: each metric's mean over the seeds whose run finished, with the
half-width of its 95% t interval (``0.731 ± 0.021``; a single seed shows the value alone), the
best mean of each column highlighted according to the metric's direction (``"max"`` or
``"min"``), and why a run failed. Final training losses are shown but not ranked, since
different losses live on different scales. The paired table gives each loss's difference from
the baseline (the first loss) per metric, with its 95% paired interval, marked when the interval
excludes 0. A per-seed table gives every run. :func:`results_table` and :func:`print_results`
show the tables in the terminal with rich. A run's ``components`` are its loss's named parts per
epoch (a composite's terms, weighted, which sum to the total; a detection loss's box, class and
DFL terms). :func:`correlations` gives, per loss, the Pearson correlation between the training
loss and the primary metric over epochs, averaged over seeds.

The curves show each loss's mean over seeds and, with several seeds, the band from the lowest
to the highest seed. matplotlib (figures, Agg backend through :class:`matplotlib.figure.Figure`,
never a window) and rich (terminal tables) are imported only when they are needed.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import math
import os
import re
import statistics
import string
import tempfile
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from losskit.arena import stats

__all__ = [
    "correlations",
    "print_results",
    "paired_table",
    "results_table",
    "run_dirs",
    "run_folder",
    "safe_name",
    "write_report",
    "write_results",
]

_MISSING = "—"
_DIRECTIONS = {"max": "max", "higher": "max", "min": "min", "lower": "min"}
_STATUS_COLOURS = {"finished": "green", "diverged": "red", "failed": "red", "interrupted": "dark_orange",
                   "partial": "dark_orange"}


# --- small utilities -------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A float for a number (non-finite kept), None for anything else (None, text, bools)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _finite(value: Any) -> float | None:
    number = _number(value)
    return number if number is not None and math.isfinite(number) else None


def _format(value: Any) -> str:
    number = _number(value)
    if number is None:
        return _MISSING
    if not math.isfinite(number):
        return "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")
    return f"{number:.4g}"


def _format_seconds(value: Any) -> str:
    seconds = _finite(value)
    if seconds is None:
        return _MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m {seconds:02d}s"


def _direction(results: Mapping[str, Any], metric: str) -> str | None:
    value = (results.get("metrics") or {}).get(metric)
    return _DIRECTIONS.get(str(value).lower()) if value is not None else None


def _runs(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(results.get("runs") or [])


def _epochs(run: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(run.get("epochs") or [])


def _val(epoch: Mapping[str, Any]) -> Mapping[str, Any]:
    return epoch.get("val") or {}


def _components(epoch: Mapping[str, Any]) -> Mapping[str, Any]:
    return epoch.get("components") or {}


def _ordered_union(groups: Iterable[Iterable[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for group in groups:
        for key in group:
            seen.setdefault(str(key), None)
    return list(seen)


def _metric_names(results: Mapping[str, Any]) -> list[str]:
    """Validation metrics seen in any run: the primary first, then in the declared order, then the rest."""
    seen = _ordered_union(_val(e).keys() for run in _runs(results) for e in _epochs(run))
    declared = [str(m) for m in (results.get("metrics") or {}) if str(m) in seen]
    primary = results.get("primary_metric")
    ordered = ([primary] if primary in seen else []) + declared + seen
    return _ordered_union([ordered])


def _run_name(run: Mapping[str, Any], index: int) -> str:
    name = run.get("name")
    return str(name) if name not in (None, "") else f"run {index + 1}"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` through a temporary file and a rename: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- names, correlations ---------------------------------------------------------------------------


def safe_name(name: str) -> str:
    """A file-system-safe folder name for a run name or loss spec.

    ``*`` becomes ``x``, ``+`` becomes ``_plus_``, spaces go, and anything outside
    ``[A-Za-z0-9._-]`` becomes ``_``; at most 80 characters. Not unique by itself: :func:`run_folder`
    adds a hash of the whole name.

    Examples:
        >>> safe_name("0.5*dice + 0.5*ce")
        '0.5xdice_plus_0.5xce'
        >>> safe_name("../focal(gamma=2)")
        'focal_gamma_2'
    """
    text = re.sub(r"\s+", "", str(name)).replace("*", "x").replace("+", "_plus_")
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    text = re.sub(r"_{2,}", "_", text).strip("._-")[:80].strip("._-")
    return text or "run"


def run_folder(name: str) -> str:
    """The folder of a run under ``runs/``: a readable prefix (:func:`safe_name`, at most 40
    characters) and a hash of the whole name, so that names that differ anywhere, even after the
    first 40 characters or only in case, get different folders.

    Examples:
        >>> run_folder("0.5*dice + 0.5*ce")
        '0.5xdice_plus_0.5xce-36bcec4e3b'
        >>> run_folder("dice") != run_folder("Dice")
        True
    """
    digest = hashlib.sha256(str(name).encode("utf-8")).hexdigest()[:10]
    return f"{safe_name(name)[:40].rstrip('._-') or 'run'}-{digest}"


def _seed(run: Mapping[str, Any]) -> int | None:
    seed = run.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _several_seeds(results: Mapping[str, Any]) -> bool:
    return len({_seed(run) for run in _runs(results)}) > 1


def _label(run: Mapping[str, Any], index: int, several: bool) -> str:
    """A run's name, with its seed when the comparison has several."""
    name = _run_name(run, index)
    return f"{name} [seed {_seed(run)}]" if several and _seed(run) is not None else name


def run_dirs(results: Mapping[str, Any]) -> dict[tuple[str, int | None], str]:
    """(run name, seed) -> the run's folder under ``runs/``: :func:`run_folder` of the name, then
    ``seed-<seed>`` (nothing for a run without a seed).

    Examples:
        >>> run_dirs({"runs": [{"name": "a*b", "seed": 0}, {"name": "ce", "seed": 1}, {"name": "ce"}]})
        {('a*b', 0): 'axb-15eb0a7925/seed-0', ('ce', 1): 'ce-e64c826b6b/seed-1', ('ce', None): 'ce-e64c826b6b'}
    """
    keys = [(_run_name(run, index), _seed(run)) for index, run in enumerate(_runs(results))]
    return dict(zip(keys, _folders(results), strict=True))


def _folders(results: Mapping[str, Any]) -> list[str]:
    """One unique folder per run, in order (runs that share a name and seed get a numbered suffix)."""
    taken: set[str] = set()
    folders = []
    for index, run in enumerate(_runs(results)):
        seed = _seed(run)
        base = candidate = run_folder(_run_name(run, index)) + (f"/seed-{seed}" if seed is not None else "")
        suffix = 2
        while candidate.lower() in taken:
            candidate = f"{base}-{suffix}"
            suffix += 1
        taken.add(candidate.lower())
        folders.append(candidate)
    return folders


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's r, or ``None`` below 3 points or when either series is constant."""
    if len(xs) < 3:
        return None
    try:
        r = statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # a constant series
        return None
    return max(-1.0, min(1.0, r))  # a rounding step outside [-1, 1] is clipped


def _loss_metric_pairs(run: Mapping[str, Any], metric: str | None) -> tuple[list[float], list[float], list[int]]:
    xs, ys, epochs = [], [], []
    for position, epoch in enumerate(_epochs(run)):
        x, y = _finite(epoch.get("train_loss")), _finite(_val(epoch).get(metric)) if metric else None
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
            epochs.append(int(epoch.get("epoch", position + 1)))
    return xs, ys, epochs


def correlations(results: Mapping[str, Any]) -> dict[str, float | None]:
    """Per loss, the Pearson r between the training loss and the primary metric over a run's
    epochs, averaged over its seeds.

    Epochs where either value is missing or not finite are left out; a run with fewer than 3
    such epochs, or a constant series, has no r and is left out of the average (``None`` when no
    run of the loss has one). For a metric where higher is better, a strongly negative r says
    the loss and the metric moved together; near 0 says the loss fell without the metric
    following.

    Examples:
        >>> results = {"primary_metric": "acc", "runs": [{"name": "ce", "epochs": [
        ...     {"train_loss": 3.0, "val": {"acc": 0.1}}, {"train_loss": 2.0, "val": {"acc": 0.2}},
        ...     {"train_loss": 1.0, "val": {"acc": 0.3}}]}]}
        >>> correlations(results)
        {'ce': -1.0}
    """
    per_run = _correlation_list(results)
    out: dict[str, float | None] = {}
    for name, members in _groups(results):
        values = [per_run[index] for index, _ in members if per_run[index] is not None]
        out[name] = math.fsum(values) / len(values) if values else None
    return out


def _correlation_list(results: Mapping[str, Any]) -> list[float | None]:
    metric = results.get("primary_metric")
    return [_pearson(*_loss_metric_pairs(run, metric)[:2]) for run in _runs(results)]


def _groups(results: Mapping[str, Any]) -> list[tuple[str, list[tuple[int, Mapping[str, Any]]]]]:
    """The runs of each loss, ``(index, run)`` in seed order, the losses in the comparison's order."""
    groups: dict[str, list[tuple[int, Mapping[str, Any]]]] = {
        str(n): [] for n in (results.get("config") or {}).get("losses") or []}
    for index, run in enumerate(_runs(results)):
        groups.setdefault(_run_name(run, index), []).append((index, run))
    return [(name, members) for name, members in groups.items() if members]


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


def _short(text: str, width: int = 40) -> str:
    return textwrap.shorten(text, width=width, placeholder="…") if len(text) > width else text


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


# --- the files ------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Plain JSON data: tuples as lists, numpy/torch scalars as numbers, non-finite floats as null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return _jsonable(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _csv_value(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "" if value is None or isinstance(value, (Mapping, list)) else str(value)
    if number.is_integer() and isinstance(value, int):
        return str(int(number))
    return repr(number)


def _history_rows(run: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    epochs = _epochs(run)
    components = _ordered_union(_components(e).keys() for e in epochs)
    metrics = _ordered_union(_val(e).keys() for e in epochs)
    header = ["epoch", "train_loss", *(f"loss_{c}" for c in components), *(f"val_{m}" for m in metrics), "seconds"]
    rows = []
    for position, epoch in enumerate(epochs):
        rows.append([
            _csv_value(epoch.get("epoch", position + 1)),
            _csv_value(epoch.get("train_loss")),
            *(_csv_value(_components(epoch).get(c)) for c in components),
            *(_csv_value(_val(epoch).get(m)) for m in metrics),
            _csv_value(epoch.get("seconds")),
        ])
    return header, rows


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue().encode("utf-8"))


# The page's skeleton and style: a string.Template shipped as package data.
_PAGE = string.Template(resources.files("losskit.arena").joinpath("report.html").read_text(encoding="utf-8"))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_value(value: Any) -> str:
    if isinstance(value, str):
        return _e(value)
    return _e(json.dumps(_jsonable(value), sort_keys=True))


def _html_paragraphs(text: str) -> str:
    return "\n".join(f"<p>{_e(p.strip())}</p>" for p in re.split(r"\n\s*\n", text) if p.strip())


def _html_table(model: _Table) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in model.headers)
    body = []
    for row in model.rows:
        cells = []
        for cell in row:
            classes = " ".join(c for c in ("best" if cell.best else "", _e(cell.style)) if c)
            attr = f' class="{classes}"' if classes else ""
            cells.append(f"<td{attr}>{_e(cell.text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="results"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _figure_html(png: str | None, alt: str, caption: str, missing: str) -> str:
    if png is None:
        return f'<p class="muted">{_e(missing)}</p>'
    return (f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{png}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _render_html(results: Mapping[str, Any], folders: list[tuple[str, str]]) -> str:
    task = str(results.get("task") or "comparison")
    primary = results.get("primary_metric")
    model = _table_model(results)
    paired = _paired_model(results)
    config = dict(results.get("config") or {})
    config_rows = "".join(f"<tr><th>{_e(k)}</th><td>{_html_value(v)}</td></tr>" for k, v in config.items())
    meta_rows = [("losskit", results.get("losskit_version") or "unknown")]
    if primary:
        direction = {"max": "higher is better", "min": "lower is better"}.get(_direction(results, primary) or "", "")
        meta_rows.append(("primary metric", f"{primary} ({direction})" if direction else primary))
    config_rows += "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in meta_rows)

    verdict = results.get("verdict")
    verdict_html = (f'<div class="verdict"><strong>Verdict.</strong> {_e(verdict)}</div>' if verdict else
                    '<div class="verdict none">No verdict was drawn for this comparison.</div>')
    if results.get("interrupted"):
        verdict_html = ('<div class="verdict none"><strong>Interrupted.</strong> The comparison was stopped '
                        "before every run finished; this report shows what was done.</div>" + verdict_html)

    directions = [f"{m}: {'higher' if _direction(results, m) == 'max' else 'lower'} is better"
                  for m in _metric_names(results) if _direction(results, m)]
    legend = ("Validation metrics are those of each run's last epoch: the mean over the seeds whose run "
              "finished, ± the half-width of its 95% Student-t interval (one seed: the value alone; n= when "
              "fewer seeds count than ran). The best mean in each column is highlighted (" + "; ".join(directions)
              + "). " if directions else "Validation metrics are those of each run's last epoch, mean over seeds. ")
    legend += ("Final training losses are not ranked: different losses are on different scales. "
               f"r is the Pearson correlation between training loss and {primary or 'the primary metric'} "
               "over epochs, averaged over seeds (blank with fewer than 3 epochs or a constant series). "
               "Time is summed over seeds.")
    notes = "".join(f"<li>{_e(n)}</li>" for n in model.notes)
    notes_html = f'<h2>Problems</h2><ul class="notes">{notes}</ul>' if notes else ""
    paired_html = ("<h2>Against the baseline</h2>" + _html_table(paired)
                   + f'<p class="muted">{_e(paired.notes[0])} Each interval is a 95% interval on its own '
                   "(no correction for comparing several losses or metrics).</p>") if paired is not None else ""

    direction = _direction(results, primary) if primary else None
    sign = {"max": "strongly negative", "min": "strongly positive"}.get(direction or "", "large in magnitude")
    several = _several_seeds(results)
    band = (" The line is the mean over seeds, the shaded band runs from the lowest to the highest seed."
            if several else "")
    loss_vs_metric = (
        f"Each point is an epoch (of every seed). A loss can keep falling while {primary or 'the metric'} stalls "
        "or gets worse (the model gets better at the loss, not at the task), so a weak correlation here warns "
        f"that minimising this loss is not what moved the metric; r {sign} means they moved together."
    )
    scatter = (f"One point per finished run (loss and seed): its final training loss against its final "
               f"{primary}. Each loss has its own scale, so compare points of one colour: a spread along "
               f"{primary} at a similar loss says the seed, not the loss value, decided the metric.")
    figures = "\n".join([
        "<h2>Training loss</h2>",
        _figure_html(_figure_losses(results), "training loss curves per loss",
                     "Training loss per epoch, one panel per loss: the total (black) and each named component "
                     "(a composite's weighted terms)." + band, "No runs to plot."),
        "<h2>Validation metrics</h2>",
        _figure_html(_figure_metrics(results), "validation metrics against epoch",
                     "Each validation metric against the epoch, all losses on one axes per metric." + band
                     + " Gaps are epochs without a finite value (for example after a run diverged).",
                     "No validation metrics were recorded."),
        "<h2>Loss against metric</h2>",
        _figure_html(_figure_loss_vs_metric(results), f"training loss against {primary}", loss_vs_metric,
                     "No epoch has both a training loss and the primary metric."),
        "<h2>Final loss against metric, across seeds</h2>",
        _figure_html(_figure_final_scatter(results), f"final training loss against {primary}", scatter,
                     "No finished run has both a final training loss and the primary metric."),
    ])
    seed_html = ("<h2>Per seed</h2>" + _html_table(_seed_model(results))
                 + '<p class="muted">Every run at its last epoch, whatever its status.</p>')
    links = "".join(f'<li><code>{_e(name)}</code>: <a href="runs/{_e(folder)}/history.csv">'
                    f"runs/{_e(folder)}/history.csv</a></li>" for name, folder in folders)
    files = ('<h2>Files</h2><p class="muted">Raw results: <a href="results.json">results.json</a>. '
             f"Per-run histories:</p><ul>{links}</ul>") if links else ""
    title = f"losskit compare: {task}"
    return _PAGE.substitute(
        title=_e(title), description=_html_paragraphs(str(results.get("description") or "")), verdict=verdict_html,
        config=config_rows, results=_html_table(model), legend=_e(legend), paired=paired_html, notes=notes_html,
        figures=figures, seeds=seed_html, files=files)


def write_results(results: Mapping[str, Any], out_dir: str | Path) -> list[str]:
    """Write ``results.json`` and each run's ``runs/<run folder>/seed-<seed>/history.csv`` under
    ``out_dir`` (atomically); return the run folders (:func:`run_dirs`), in the order of the runs.

    ``results.json`` is ``results`` as strict JSON (indented, keys sorted; non-finite numbers
    become ``null``, tuples lists). Each ``history.csv`` has the columns ``epoch, train_loss,
    loss_<component>..., val_<metric>..., seconds`` (empty cells for missing values).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = _folders(results)
    text = json.dumps(_jsonable(results), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    atomic_write(out_dir / "results.json", (text + "\n").encode("utf-8"))
    for index, run in enumerate(_runs(results)):
        header, rows = _history_rows(run)
        _write_csv(out_dir / "runs" / folders[index] / "history.csv", header, rows)
    return folders


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``report.html`` and everything :func:`write_results` writes under ``out_dir``.

    ``report.html`` is one self-contained file (inline CSS, figures as base64 PNG data URIs): the
    task, its description, the configuration, the verdict, the results table (per loss, mean and
    95% interval over seeds), the paired differences from the baseline, training-loss curves per
    loss and component, each validation metric against the epoch (both with the band of the
    seeds), training loss against the primary metric with Pearson r, the final training loss
    against the primary metric across seeds and losses, and every run at its last epoch. Every
    file is written atomically.

    Returns:
        The path of ``report.html``.
    """
    folders = write_results(results, out_dir)
    path = Path(out_dir) / "report.html"
    several = _several_seeds(results)
    labels = [_label(run, index, several) for index, run in enumerate(_runs(results))]
    atomic_write(path, _render_html(results, list(zip(labels, folders, strict=True))).encode("utf-8"))
    return path
