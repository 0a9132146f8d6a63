"""Statistics over seeds: each loss's mean with a 95% interval, and paired differences against a baseline.

A comparison runs every loss with the same seeds; one seed gives every loss the same data, initial
weights and batch order. So the seeds pair the runs, and the difference between a loss and the
baseline (the first loss) on one seed removes what that seed did to both. With ``n`` seeds whose
runs both finished, the paired differences :math:`d_i` give the mean :math:`\\bar d` and the
Student-t interval

.. math::

    \\bar d \\pm t_{0.975,\\,n-1}\\, s_d / \\sqrt{n},

where :math:`s_d` is the sample standard deviation of the :math:`d_i`. A difference is named only
when this interval excludes 0; each interval is a 95% interval on its own (no correction for
comparing several losses or metrics). A loss's mean gets the same interval from its own values.
With one seed no interval can be computed, and none is invented.

The t quantile comes from a table (degrees of freedom 1 to 30, ``scipy.stats.t.ppf(0.975, df)``
rounded to 9 decimals) and beyond 30 from the Cornish-Fisher expansion in :math:`1/\\nu`
(Abramowitz & Stegun 26.7.5), within 3e-8 of the exact quantile there: the arena does not depend
on scipy.

Only finished runs count (a diverged, failed or interrupted run has no final metrics), and only
finite values.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Interval", "compare_to_baseline", "final_values", "loss_names", "mean_interval", "paired_difference",
           "paired_verdict", "phrase_difference", "summarize", "t_quantile"]

CONFIDENCE = 0.95
# scipy.stats.t.ppf(0.975, df) for df = 1, ..., 30, to 9 decimals
_T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252, 2.306004135,
         2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546, 2.119905299,
         2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
         2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456)
_Z975 = 1.959963984540054  # the standard normal 0.975 quantile


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (two-sided 95%).

    Examples:
        >>> t_quantile(4)
        2.776445105
        >>> round(t_quantile(1000), 4)
        1.9623
    """
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be a whole number of at least 1, got {df!r}")
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = _Z975, float(df)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4))


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and its 95% t interval (``low`` and ``high`` are ``None`` for one seed).

    ``values`` are the per-seed values (or paired differences) in seed order, ``seeds`` their seeds.
    """

    mean: float
    low: float | None
    high: float | None
    n: int
    values: tuple[float, ...]
    seeds: tuple[int, ...]

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or below 0 (never with one seed)."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n,
                "values": list(self.values), "seeds": list(self.seeds)}


def mean_interval(values: Mapping[int, float] | Sequence[float]) -> Interval | None:
    """The mean of ``values`` (per seed) with its 95% t interval; ``None`` when there is none.

    Examples:
        >>> i = mean_interval([1.0, 2.0, 3.0])
        >>> i.mean, round(i.low, 4), round(i.high, 4)     # 2 -+ 4.302653 * 1 / sqrt(3)
        (2.0, -0.4841, 4.4841)
        >>> mean_interval({7: 0.5}).low is None              # one seed: no interval
        True
    """
    if not isinstance(values, Mapping):
        values = dict(enumerate(values))
    pairs = sorted((s, float(v)) for s, v in values.items() if v is not None and math.isfinite(v))
    if not pairs:
        return None
    seeds, xs = zip(*pairs, strict=True)
    mean = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return Interval(mean, None, None, 1, xs, seeds)
    half = t_quantile(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return Interval(mean, mean - half, mean + half, len(xs), xs, seeds)


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float]) -> Interval | None:
    """``values - baseline`` on the seeds both have, with the paired 95% t interval; ``None`` when
    they share no seed.

    Examples:
        >>> d = paired_difference({0: 0.70, 1: 0.74, 2: 0.71}, {0: 0.66, 1: 0.70, 2: 0.68, 3: 0.9})
        >>> d.n, round(d.mean, 4), d.excludes_zero    # differences 0.04, 0.04, 0.03 on seeds 0-2
        (3, 0.0367, True)
    """
    common = {s: values[s] - baseline[s] for s in values if s in baseline}
    return mean_interval(common)


def _finished(run: Mapping[str, Any]) -> bool:
    return run.get("status") == "finished" and bool(run.get("epochs"))


def final_values(results: Mapping[str, Any], metric: str | None) -> dict[str, dict[int, float]]:
    """Per loss (run name), per seed, the value of ``metric`` at the last epoch of each finished run
    (``metric=None``: the final training loss). Runs without a seed count as seed 0.

    Examples:
        >>> runs = [{"name": "ce", "seed": 0, "status": "finished", "epochs": [{"val": {"acc": 0.9}}]},
        ...         {"name": "ce", "seed": 1, "status": "diverged", "epochs": [{"val": None}]}]
        >>> final_values({"runs": runs}, "acc")
        {'ce': {0: 0.9}}
    """
    out: dict[str, dict[int, float]] = {}
    for run in results.get("runs") or []:
        name = str(run.get("name"))
        out.setdefault(name, {})
        if not _finished(run):
            continue
        last = run["epochs"][-1]
        value = last.get("train_loss") if metric is None else (last.get("val") or {}).get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name][int(run.get("seed") or 0)] = float(value)
    return out


def phrase_difference(diff: Interval | None, direction: str | None, digits: int = 3) -> str:
    """A difference in words: the interval when it excludes 0 and which way is better, otherwise
    "no significant difference"; with one seed, that no interval can be computed.

    Examples:
        >>> phrase_difference(paired_difference({0: 0.7, 1: 0.74, 2: 0.71}, {0: 0.66, 1: 0.7, 2: 0.68}), "max")
        '+0.037 (95% CI +0.022 to +0.051, 3 seeds): better'
        >>> phrase_difference(paired_difference({0: 0.7, 1: 0.6}, {0: 0.65, 1: 0.66}), "max")  # 12.71*0.078/sqrt 2
        'no significant difference over 2 seeds (-0.005, 95% CI -0.704 to +0.694)'
        >>> phrase_difference(paired_difference({0: 0.7}, {0: 0.65}), "max")
        '+0.050 on one seed (no interval can be computed from one seed)'
    """
    if diff is None:
        return "no seed on which both runs finished"
    f = f"{{:+.{digits}f}}"
    if diff.n == 1:
        return f"{f.format(diff.mean)} on one seed (no interval can be computed from one seed)"
    interval = f"95% CI {f.format(diff.low)} to {f.format(diff.high)}"
    if not diff.excludes_zero:
        return f"no significant difference over {diff.n} seeds ({f.format(diff.mean)}, {interval})"
    better = {"max": diff.mean > 0, "min": diff.mean < 0}.get(direction or "")
    verdict = "" if better is None else (": better" if better else ": worse")
    return f"{f.format(diff.mean)} ({interval}, {diff.n} seeds){verdict}"


def loss_names(results: Mapping[str, Any]) -> list[str]:
    """The losses of a comparison in their order (``config["losses"]``, then any other run name); the
    first is the baseline."""
    names = [str(s) for s in (results.get("config") or {}).get("losses") or []]
    for run in results.get("runs") or []:
        if str(run.get("name")) not in names:
            names.append(str(run.get("name")))
    return names


def _direction(results: Mapping[str, Any], metric: str) -> str | None:
    value = str((results.get("metrics") or {}).get(metric, "")).lower()
    return {"max": "max", "higher": "max", "min": "min", "lower": "min"}.get(value)


def summarize(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per loss: its runs by status, and the mean with its 95% interval of the final training loss
    and of each metric over its finished seeds (``None`` where no finished run has a value)."""
    metrics = list(results.get("metrics") or {})
    finals = {m: final_values(results, m) for m in metrics}
    train = final_values(results, None)
    out: dict[str, dict[str, Any]] = {}
    for name in loss_names(results):
        statuses: dict[str, int] = {}
        for run in results.get("runs") or []:
            if str(run.get("name")) == name:
                status = str(run.get("status") or "unknown")
                statuses[status] = statuses.get(status, 0) + 1

        def summary(values: Mapping[int, float]) -> dict[str, Any] | None:
            interval = mean_interval(values)
            return None if interval is None else interval.as_dict()

        out[name] = {"runs": sum(statuses.values()), "statuses": statuses,
                     "train_loss": summary(train.get(name, {})),
                     "metrics": {m: summary(finals[m].get(name, {})) for m in metrics}}
    return out


def compare_to_baseline(results: Mapping[str, Any]) -> dict[str, Any]:
    """Each loss against the baseline (the first), per metric: the paired difference over the seeds
    on which both finished, its 95% interval, whether the interval excludes 0 (``significant``)
    and, if so, whether the loss is better by the metric's direction."""
    names = loss_names(results)
    baseline = names[0] if names else None
    differences: dict[str, dict[str, Any]] = {}
    for metric in results.get("metrics") or {}:
        values = final_values(results, metric)
        for name in names[1:]:
            diff = paired_difference(values.get(name, {}), values.get(baseline, {}))
            entry = None
            if diff is not None:
                direction = _direction(results, metric)
                better = None
                if diff.excludes_zero and direction is not None:
                    better = diff.mean > 0 if direction == "max" else diff.mean < 0
                entry = {**diff.as_dict(), "significant": diff.excludes_zero, "better": better}
            differences.setdefault(name, {})[metric] = entry
    return {"baseline": baseline, "method": "paired t over seeds", "confidence": CONFIDENCE,
            "differences": differences}


def paired_verdict(results: Mapping[str, Any]) -> str | None:
    """The primary metric of each loss against the baseline, paired over seeds, in one sentence.

    Examples:
        >>> runs = [{"name": n, "seed": s, "status": "finished", "epochs": [{"val": {"acc": v}}]}
        ...         for n, values in (("ce", (0.90, 0.92, 0.91)), ("focal", (0.93, 0.95, 0.93)))
        ...         for s, v in enumerate(values)]
        >>> paired_verdict({"runs": runs, "primary_metric": "acc", "metrics": {"acc": "max"}})
        'acc against ce (the baseline), paired over seeds: focal +0.027 (95% CI +0.012 to +0.041, 3 seeds): better.'
    """
    primary = results.get("primary_metric")
    names = loss_names(results)
    if not primary or len(names) < 2:
        return None
    values = final_values(results, primary)
    baseline = names[0]
    diffs = {name: paired_difference(values.get(name, {}), values.get(baseline, {})) for name in names[1:]}
    direction = _direction(results, primary)
    if all(d is not None and d.n == 1 for d in diffs.values()):
        parts = ", ".join(f"{name} {d.mean:+.3f}" for name, d in diffs.items())
        return (f"{primary} against {baseline} (the baseline) on one seed: {parts}; no interval can be computed "
                "from one seed (run 2 or more seeds).")
    parts = "; ".join(f"{name} {phrase_difference(d, direction)}" for name, d in diffs.items())
    return f"{primary} against {baseline} (the baseline), paired over seeds: {parts}."
