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

This module writes the files; the tables are :mod:`losskit.arena.tables`, the figures
:mod:`losskit.arena.figures`, and reading the results dict :mod:`losskit.arena.results_fields`
(their names stay importable from here).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import re
import string
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from losskit.arena.figures import (  # noqa: F401  (importable from here, as before)
    _band,
    _draw_band,
    _figure_final_scatter,
    _figure_loss_vs_metric,
    _figure_losses,
    _figure_metrics,
    _grid,
    _png,
    _series,
)
from losskit.arena.results_fields import (  # noqa: F401  (importable from here, as before)
    _DIRECTIONS,
    _MISSING,
    _components,
    _correlation_list,
    _direction,
    _epochs,
    _finite,
    _folders,
    _format,
    _format_seconds,
    _groups,
    _label,
    _loss_metric_pairs,
    _metric_names,
    _number,
    _ordered_union,
    _pearson,
    _run_name,
    _runs,
    _seed,
    _several_seeds,
    _short,
    _val,
    correlations,
    run_dirs,
    run_folder,
    safe_name,
)
from losskit.arena.tables import (  # noqa: F401  (importable from here, as before)
    _STATUS_COLOURS,
    _Cell,
    _decimals,
    _difference_text,
    _for_stats,
    _header,
    _interval_text,
    _paired_model,
    _rich_table,
    _seed_model,
    _span,
    _status_cell,
    _Table,
    _table_model,
    paired_table,
    print_results,
    results_table,
)

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


# --- the files ------------------------------------------------------------------------------------


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
