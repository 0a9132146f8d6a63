"""The arena's report: one self-contained HTML page, the raw results, a CSV per run, a terminal table.

Everything here reads the results dict that the runner produces (and writes as ``results.json``)::

    {"task": ..., "description": ..., "config": {...}, "losskit_version": ...,
     "primary_metric": "dice", "metrics": {"dice": "max", "loss": "min", ...},
     "runs": [{"name", "spec", "status", "error", "nonfinite_steps", "seconds",
               "epochs": [{"epoch", "train_loss", "components": {...}, "val": {...} | None,
                           "seconds"}, ...]}, ...],
     "verdict": str | None}

:func:`write_report` writes ``report.html`` (inline CSS, plots embedded as base64 PNG data URIs,
every piece of text escaped), ``results.json`` and ``runs/<run folder>/history.csv`` (the folder
also holds the run's checkpoints, see :func:`run_folder`), each file atomically (a temporary
file, then :func:`os.replace`). :func:`results_table` and :func:`print_results` give the same
table in the terminal with rich. The table shows each run's validation metrics at its last epoch,
the best value of each column highlighted according to the metric's direction (``"max"`` or
``"min"``), and why a run failed; final training losses are shown but not ranked, since different
losses live on different scales. A run's ``components`` are its loss's named parts per epoch (a
composite's terms, weighted, which sum to the total; a detection loss's box, class and DFL terms).
:func:`correlations` gives, per run, the Pearson correlation between the training loss and the
primary metric over epochs.

matplotlib (figures, Agg backend through :class:`matplotlib.figure.Figure`, never a window) and
rich (terminal table) are imported only when they are needed.
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
import tempfile
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "correlations",
    "print_results",
    "results_table",
    "run_dirs",
    "run_folder",
    "safe_name",
    "write_report",
]

_MISSING = "—"
_DIRECTIONS = {"max": "max", "higher": "max", "min": "min", "lower": "min"}
_STATUS_COLOURS = {"finished": "green", "diverged": "red", "failed": "red", "interrupted": "dark_orange"}


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


def run_dirs(results: Mapping[str, Any]) -> dict[str, str]:
    """Run name -> its folder name under ``runs/`` (:func:`run_folder`).

    Examples:
        >>> run_dirs({"runs": [{"name": "a*b"}, {"name": "ce"}]})
        {'a*b': 'axb-15eb0a7925', 'ce': 'ce-e64c826b6b'}
    """
    names = [_run_name(run, index) for index, run in enumerate(_runs(results))]
    return dict(zip(names, _folders(results), strict=True))


def _folders(results: Mapping[str, Any]) -> list[str]:
    """One unique folder per run, in order (runs that share a name get a numbered suffix)."""
    taken: set[str] = set()
    folders = []
    for index, run in enumerate(_runs(results)):
        base = candidate = run_folder(_run_name(run, index))
        suffix = 2
        while candidate.lower() in taken:
            candidate = f"{base}-{suffix}"
            suffix += 1
        taken.add(candidate.lower())
        folders.append(candidate)
    return folders


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    if n < 3:
        return None
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    syy = math.fsum((y - my) ** 2 for y in ys)
    if sxx <= 0.0 or syy <= 0.0:
        return None
    sxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


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
    """Pearson r between each run's training loss and its primary metric, over its epochs.

    Epochs where either value is missing or not finite are left out. ``None`` when fewer than 3
    epochs remain or either series is constant. For a metric where higher is better, a strongly
    negative r says the loss and the metric moved together; near 0 says the loss fell without the
    metric following.

    Examples:
        >>> results = {"primary_metric": "acc", "runs": [{"name": "ce", "epochs": [
        ...     {"train_loss": 3.0, "val": {"acc": 0.1}}, {"train_loss": 2.0, "val": {"acc": 0.2}},
        ...     {"train_loss": 1.0, "val": {"acc": 0.3}}]}]}
        >>> correlations(results)
        {'ce': -1.0}
    """
    names = [_run_name(run, index) for index, run in enumerate(_runs(results))]
    return dict(zip(names, _correlation_list(results), strict=True))


def _correlation_list(results: Mapping[str, Any]) -> list[float | None]:
    metric = results.get("primary_metric")
    return [_pearson(*_loss_metric_pairs(run, metric)[:2]) for run in _runs(results)]


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


def _table_model(results: Mapping[str, Any]) -> _Table:
    metrics = _metric_names(results)
    primary = results.get("primary_metric")
    runs = _runs(results)
    corr = _correlation_list(results)
    last = [(_epochs(run) or [None])[-1] for run in runs]

    best: dict[str, set[int]] = {}
    for metric in metrics:
        direction = _direction(results, metric)
        values = {i: _finite(_val(e).get(metric)) for i, e in enumerate(last) if e is not None}
        values = {i: v for i, v in values.items() if v is not None}
        if direction is None or not values:
            best[metric] = set()
            continue
        target = max(values.values()) if direction == "max" else min(values.values())
        best[metric] = {i for i, v in values.items() if v == target}

    def header(metric: str) -> str:
        arrow = {"max": " ↑", "min": " ↓"}.get(_direction(results, metric) or "", "")
        return f"{metric}{arrow}" + (" (primary)" if metric == primary else "")

    corr_header = f"r(loss, {primary})" if primary else "r(loss, metric)"
    table = _Table(["run", "status", "epochs", "final train loss", *map(header, metrics), corr_header,
                    "non-finite steps", "time"])
    for index, (run, epoch) in enumerate(zip(runs, last, strict=True)):
        name = _run_name(run, index)
        status = str(run.get("status") or "unknown")
        val = _val(epoch) if epoch is not None else {}
        row = [
            _Cell(name),
            _Cell(f"{status}: {_short(str(run['error']), 72)}" if run.get("error") else status,
                  style=f"status-{status}"),
            _Cell(str(len(_epochs(run)))),
            _Cell(_format(epoch.get("train_loss")) if epoch is not None else _MISSING),
            *(_Cell(_format(val.get(m)), best=index in best[m]) for m in metrics),
            _Cell(_MISSING if corr[index] is None else f"{corr[index]:+.2f}"),
            _Cell(str(run.get("nonfinite_steps") if run.get("nonfinite_steps") is not None else _MISSING)),
            _Cell(_format_seconds(run.get("seconds"))),
        ]
        table.rows.append(row)
        table.names.append(name)
        if run.get("error"):
            table.notes.append(f"{name} ({status}): {run['error']}")
        elif not _epochs(run):
            table.notes.append(f"{name} ({status}): no epoch completed")
        elif status not in ("finished",):
            table.notes.append(f"{name}: {status} after {len(_epochs(run))} epoch(s)")
    return table


def results_table(results: Mapping[str, Any]):
    """The results as a :class:`rich.table.Table`: one row per run, metrics at the last epoch.

    The best value of each metric column (by the direction in ``results["metrics"]``) is bold
    green; run names and errors are plain text, never rich markup.
    """
    from rich.table import Table
    from rich.text import Text

    model = _table_model(results)
    title = f"losskit compare: {results['task']}" if results.get("task") else "losskit compare"
    table = Table(title=Text(title), caption=Text("metrics at each run's last epoch; best per column in bold green"))
    for position, head in enumerate(model.headers):
        table.add_column(Text(head), justify="left" if position < 2 else "right", overflow="fold")
    for row in model.rows:
        cells = []
        for cell in row:
            style = "bold green" if cell.best else ""
            if cell.style.startswith("status-"):
                style = _STATUS_COLOURS.get(cell.style[len("status-"):], "")
            cells.append(Text(cell.text, style=style))
        table.add_row(*cells)
    return table


def print_results(results: Mapping[str, Any], console=None) -> None:
    """Print :func:`results_table`, the verdict and any run problems to a rich console."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    console.print(results_table(results))
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


def _figure_losses(results: Mapping[str, Any]) -> str | None:
    """(a) Training loss per run: the total and each named component, one subplot per run."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    runs = _runs(results)
    if not runs:
        return None
    rows, cols = _grid(len(runs))
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for index, (ax, run) in enumerate(zip(axes, runs, strict=False)):
        epochs = _epochs(run)
        name = _run_name(run, index)
        ax.set_title(f"{_short(name)} ({run.get('status', 'unknown')})", fontsize="medium")
        ax.set_xlabel("epoch")
        ax.set_ylabel("train loss")
        if not epochs:
            ax.text(0.5, 0.5, "no epochs", ha="center", va="center", transform=ax.transAxes, color="0.4")
            continue
        x = [e.get("epoch", i + 1) for i, e in enumerate(epochs)]
        total = _series(e.get("train_loss") for e in epochs)
        ax.plot(x, total, color="black", linewidth=2.2, marker="o", markersize=3, label="total")
        names = _ordered_union(_components(e).keys() for e in epochs)
        for component in names:
            values = _series(_components(e).get(component) for e in epochs)
            if len(names) == 1 and values == total:
                continue  # a single component equal to the total adds nothing
            ax.plot(x, values, linewidth=1.3, marker=".", label=component)
        bad = [xi for xi, e in zip(x, epochs, strict=True)
               if _number(e.get("train_loss")) is not None and _finite(e.get("train_loss")) is None]
        for position, xi in enumerate(bad):
            ax.axvline(xi, color="firebrick", linestyle="--", linewidth=1.0,
                       label="non-finite loss" if position == 0 else None)
        ax.set_xlim(min(x) - 0.25, max(x) + 0.25)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    return _png(fig)


def _figure_metrics(results: Mapping[str, Any]) -> str | None:
    """(b) Each validation metric against the epoch, all runs on one axes per metric."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics = _metric_names(results)
    if not metrics:
        return None
    rows, cols = _grid(len(metrics), 2)
    fig = Figure(figsize=(5.6 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    runs = _runs(results)
    for ax, metric in zip(axes, metrics, strict=False):
        direction = {"max": "higher is better", "min": "lower is better"}.get(_direction(results, metric) or "")
        ax.set_title(metric + (f" ({direction})" if direction else ""), fontsize="medium")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        for index, run in enumerate(runs):
            epochs = _epochs(run)
            if not any(_finite(_val(e).get(metric)) is not None for e in epochs):
                continue
            x = [e.get("epoch", i + 1) for i, e in enumerate(epochs)]
            ax.plot(x, _series(_val(e).get(metric) for e in epochs), marker="o", markersize=3,
                    label=_short(_run_name(run, index), 32))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    return _png(fig)


def _figure_loss_vs_metric(results: Mapping[str, Any]) -> str | None:
    """(c) Per run: training loss against the primary metric over epochs, with Pearson r."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metric = results.get("primary_metric")
    runs = _runs(results)
    if not metric or not runs or metric not in _metric_names(results):
        return None
    corr = _correlation_list(results)
    rows, cols = _grid(len(runs))
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for index, (ax, run) in enumerate(zip(axes, runs, strict=False)):
        name = _run_name(run, index)
        xs, ys, epochs = _loss_metric_pairs(run, metric)
        r = corr[index]
        label = "Pearson r = " + ("n/a (< 3 epochs or constant)" if r is None else f"{r:+.2f}")
        ax.set_title(_short(name) + ("" if r is None else f"  (r = {r:+.2f})"), fontsize="medium")
        ax.set_xlabel("train loss")
        ax.set_ylabel(f"val {metric}")
        if not xs:
            ax.text(0.5, 0.5, "no epoch with both values", ha="center", va="center", transform=ax.transAxes,
                    color="0.4")
            continue
        ax.plot(xs, ys, color="0.75", linewidth=0.8, zorder=1)
        points = ax.scatter(xs, ys, c=epochs, cmap="viridis", s=28, zorder=2, label=label)
        fig.colorbar(points, ax=ax, label="epoch", shrink=0.8, ticks=MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", handlelength=0.8)
    for ax in axes[len(runs):]:
        ax.set_visible(False)
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


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.verdict { background: #eef6ff; border-left: 4px solid #2b6cb0; padding: 0.7rem 1rem; margin: 1rem 0; }
.verdict.none { background: #f5f5f5; border-color: #999; color: #555; }
table { border-collapse: collapse; margin: 0.5rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
td.best { font-weight: bold; background: #e3f6e3; color: #145214; }
td.status-finished { color: #1c7c1c; } td.status-diverged, td.status-failed { color: #b00020; font-weight: bold; }
td.status-interrupted { color: #b35c00; }
table.config td, table.config th { text-align: left; }
code { background: #f3f3f3; padding: 0 0.25rem; border-radius: 3px; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.95rem; margin-top: 0.3rem; }
.notes li { color: #7a4b00; } .muted { color: #666; font-size: 0.9rem; }
"""


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
    legend = ("Validation metrics are those of each run's last epoch; the best value in each column is "
              "highlighted (" + "; ".join(directions) + "). " if directions else
              "Validation metrics are those of each run's last epoch. ")
    legend += ("Final training losses are not ranked: different losses are on different scales. "
               f"r is the Pearson correlation between training loss and {primary or 'the primary metric'} "
               "over epochs (blank with fewer than 3 epochs or a constant series).")
    notes = "".join(f"<li>{_e(n)}</li>" for n in model.notes)
    notes_html = f'<h2>Problems</h2><ul class="notes">{notes}</ul>' if notes else ""

    direction = _direction(results, primary) if primary else None
    sign = {"max": "strongly negative", "min": "strongly positive"}.get(direction or "", "large in magnitude")
    loss_vs_metric = (
        f"Each point is an epoch. A loss can keep falling while {primary or 'the metric'} stalls or gets worse "
        "(the model gets better at the loss, not at the task), so a weak correlation here warns that "
        f"minimising this loss is not what moved the metric; r {sign} means they moved together."
    )
    figures = "\n".join([
        "<h2>Training loss</h2>",
        _figure_html(_figure_losses(results), "training loss curves per run",
                     "Training loss per epoch, one panel per run: the total (black) and each named component.",
                     "No runs to plot."),
        "<h2>Validation metrics</h2>",
        _figure_html(_figure_metrics(results), "validation metrics against epoch",
                     "Each validation metric against the epoch, all runs on one axes per metric. "
                     "Gaps are epochs without a finite value (for example after a run diverged).",
                     "No validation metrics were recorded."),
        "<h2>Loss against metric</h2>",
        _figure_html(_figure_loss_vs_metric(results), f"training loss against {primary}", loss_vs_metric,
                     "No epoch has both a training loss and the primary metric."),
    ])
    links = "".join(f'<li><code>{_e(name)}</code>: <a href="runs/{_e(folder)}/history.csv">'
                    f"runs/{_e(folder)}/history.csv</a></li>" for name, folder in folders)
    files = ('<h2>Files</h2><p class="muted">Raw results: <a href="results.json">results.json</a>. '
             f"Per-run histories:</p><ul>{links}</ul>") if links else ""
    title = f"losskit compare: {task}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_e(title)}</h1>
{_html_paragraphs(str(results.get("description") or ""))}
{verdict_html}
<h2>Configuration</h2>
<table class="config">{config_rows}</table>
<h2>Results</h2>
{_html_table(model)}
<p class="muted">{_e(legend)}</p>
{notes_html}
{figures}
{files}
</body>
</html>
"""


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``report.html``, ``results.json`` and ``runs/<safe name>/history.csv`` under ``out_dir``.

    ``report.html`` is one self-contained file (inline CSS, figures as base64 PNG data URIs): the
    task, its description, the configuration, the verdict, the results table, training-loss curves
    per run and component, each validation metric against the epoch, and training loss against the
    primary metric with Pearson r. ``results.json`` is ``results`` as strict JSON (indented, keys
    sorted; non-finite numbers become ``null``, tuples lists). Each ``history.csv`` has the columns
    ``epoch, train_loss, loss_<component>..., val_<metric>..., seconds`` (empty cells for missing
    values); the folder names come from :func:`run_dirs`. Every file is written atomically.

    Returns:
        The path of ``report.html``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = _folders(results)
    text = json.dumps(_jsonable(results), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    atomic_write(out_dir / "results.json", (text + "\n").encode("utf-8"))
    for index, run in enumerate(_runs(results)):
        header, rows = _history_rows(run)
        _write_csv(out_dir / "runs" / folders[index] / "history.csv", header, rows)
    path = out_dir / "report.html"
    names = [_run_name(run, index) for index, run in enumerate(_runs(results))]
    atomic_write(path, _render_html(results, list(zip(names, folders, strict=True))).encode("utf-8"))
    return path
