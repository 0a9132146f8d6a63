"""The arena's statistics over seeds, against scipy (which the arena itself does not import)."""

from __future__ import annotations

import math

import pytest

from losskit.arena.stats import (
    compare_to_baseline,
    final_values,
    mean_interval,
    paired_difference,
    paired_verdict,
    summarize,
    t_quantile,
)

scipy_stats = pytest.importorskip("scipy.stats")


def test_t_quantile_matches_scipy():
    for df in [*range(1, 200), 500, 10_000]:
        assert t_quantile(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=2e-7, abs=0), df
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="df must be a whole number of at least 1"):
            t_quantile(bad)


@pytest.mark.parametrize("values", [[0.71, 0.74, 0.69], [1.0, 2.0], [0.5, 0.52, 0.49, 0.51, 0.55, 0.47, 0.5]])
def test_mean_interval_matches_scipy(values):
    interval = mean_interval(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=sum(values) / len(values),
                                       scale=scipy_stats.sem(values))
    assert interval.mean == pytest.approx(sum(values) / len(values))
    assert (interval.low, interval.high) == (pytest.approx(low, rel=1e-6), pytest.approx(high, rel=1e-6))
    assert interval.n == len(values)


def test_paired_difference_matches_scipy_ttest_rel():
    loss = {0: 0.742, 1: 0.718, 2: 0.751, 3: 0.730, 4: 0.722}
    baseline = {0: 0.713, 1: 0.705, 2: 0.739, 3: 0.701, 4: 0.716, 9: 0.5}  # seed 9 has no partner: left out
    diff = paired_difference(loss, baseline)
    seeds = sorted(loss)
    test = scipy_stats.ttest_rel([loss[s] for s in seeds], [baseline[s] for s in seeds])
    ci = test.confidence_interval(0.95)
    assert diff.n == 5 and diff.seeds == (0, 1, 2, 3, 4)
    assert (diff.low, diff.high) == (pytest.approx(ci.low, rel=1e-6), pytest.approx(ci.high, rel=1e-6))
    assert diff.excludes_zero == (test.pvalue < 0.05)


def test_one_seed_has_no_interval_and_nothing_is_invented():
    one = mean_interval({3: 0.7})
    assert one.n == 1 and one.low is None and one.high is None and not one.excludes_zero
    assert mean_interval([]) is None and mean_interval([math.nan, None]) is None
    assert paired_difference({0: 0.7}, {1: 0.6}) is None  # no common seed


def _results(values: dict[str, list[float | None]], metric="dice", direction="max", statuses=None):
    runs = []
    for name, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            status = (statuses or {}).get((name, seed), "finished")
            runs.append({"name": name, "spec": name, "seed": seed, "status": status,
                         "epochs": [{"train_loss": 1.0 - (value or 0), "val": {metric: value}}]})
    return {"runs": runs, "primary_metric": metric, "metrics": {metric: direction},
            "config": {"losses": list(values)}}


def test_summary_and_paired_table_by_hand():
    # ce 0.60, 0.62, 0.61; dice 0.66, 0.70, 0.68: differences 0.06, 0.08, 0.07, mean 0.07, sd 0.01,
    # half-width t(0.975, 2) * 0.01 / sqrt(3) = 4.302653 * 0.0057735 = 0.024841.
    results = _results({"ce": [0.60, 0.62, 0.61], "dice": [0.66, 0.70, 0.68]})
    summary = summarize(results)
    assert summary["ce"]["metrics"]["dice"]["mean"] == pytest.approx(0.61)
    assert summary["ce"]["statuses"] == {"finished": 3}
    paired = compare_to_baseline(results)
    assert paired["baseline"] == "ce"
    entry = paired["differences"]["dice"]["dice"]
    assert entry["mean"] == pytest.approx(0.07) and entry["n"] == 3
    assert entry["ci_low"] == pytest.approx(0.07 - 0.024841, abs=1e-6)
    assert entry["ci_high"] == pytest.approx(0.07 + 0.024841, abs=1e-6)
    assert entry["significant"] and entry["better"] is True
    assert paired_verdict(results) == ("dice against ce (the baseline), paired over seeds: dice +0.070 (95% CI "
                                       "+0.045 to +0.095, 3 seeds): better.")


def test_a_difference_whose_interval_holds_zero_is_not_named():
    # differences -0.05, +0.10, -0.20: mean -0.05, sd 0.15, half-width 4.302653 * 0.15 / sqrt(3) = 0.3726
    results = _results({"ce": [0.80, 0.70, 0.90], "tversky": [0.75, 0.80, 0.70]})
    verdict = paired_verdict(results)
    assert verdict == ("dice against ce (the baseline), paired over seeds: tversky no significant difference over "
                       "3 seeds (-0.050, 95% CI -0.423 to +0.323).")
    assert compare_to_baseline(results)["differences"]["tversky"]["dice"]["better"] is None


def test_lower_is_better_and_unfinished_runs():
    # mae: l1 lower than mse on every seed; the diverged seed 2 of l1 is left out of both means and pairs.
    results = _results({"mse": [1.0, 1.2, 1.1], "l1": [0.6, 0.7, 9.0]}, metric="mae", direction="min",
                       statuses={("l1", 2): "diverged"})
    assert final_values(results, "mae")["l1"] == {0: 0.6, 1: 0.7}
    entry = compare_to_baseline(results)["differences"]["l1"]["mae"]
    assert entry["n"] == 2 and entry["mean"] == pytest.approx(-0.45)
    # differences -0.4, -0.5: sd 0.0707, half-width 12.706205 * 0.0707107 / sqrt(2) = 0.6353
    assert entry["ci_high"] == pytest.approx(-0.45 + 0.63531, abs=1e-5) and not entry["significant"]
    assert summarize(results)["l1"]["statuses"] == {"finished": 2, "diverged": 1}


def test_one_seed_verdict_says_no_interval():
    verdict = paired_verdict(_results({"ce": [0.6], "dice": [0.65], "focal": [0.55]}))
    assert verdict == ("dice against ce (the baseline) on one seed: dice +0.050, focal -0.050; no interval can be "
                       "computed from one seed (run 2 or more seeds).")
