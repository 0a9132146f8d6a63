"""Reading the arena's results dict (see :mod:`losskit.arena.report` for its layout): numbers and
their text, runs, epochs, metric names, the runs of each loss, run folders, and the correlation
between the training loss and the primary metric.
"""

from __future__ import annotations

import hashlib
import math
import re
import statistics
import textwrap
from collections.abc import Iterable, Mapping
from typing import Any

_MISSING = "—"
_DIRECTIONS = {"max": "max", "higher": "max", "min": "min", "lower": "min"}


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


def _short(text: str, width: int = 40) -> str:
    return textwrap.shorten(text, width=width, placeholder="…") if len(text) > width else text


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
