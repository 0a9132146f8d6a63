"""The benchmark scripts run (on tiny shapes) and the CPU memory tracker counts what it should."""

import pytest
import torch

from benchmarks import (
    bench_boxes,
    bench_compare,
    bench_cross_entropy,
    bench_detection,
    bench_focal,
    bench_fused_policy,
)
from benchmarks.harness import cpu_peak_bytes, rss_available, rss_growth, rss_profile


def test_cpu_peak_counts_new_tensors_but_not_views_or_inputs():
    x = torch.zeros(1024)  # 4 KiB, the caller's

    def step():
        view = x.view(32, 32)  # no allocation
        y = x + 1  # 4 KiB
        z = y * 2  # 4 KiB while y is alive: the peak
        del y
        return view, z

    assert cpu_peak_bytes(step) == 2 * 4096


@pytest.mark.slow
def test_benchmark_scripts_run():
    focal = bench_focal.main(["--numel", "65536", "--rounds", "1"])
    assert "monai.FocalLoss" in focal and "kornia.binary_focal_loss" in focal
    ce = bench_cross_entropy.main(["--rows", "64", "--classes", "10", "--rounds", "1", "--checks"])
    assert "torch.nn.functional" in ce and "value checks on" in ce
    boxes = bench_boxes.main(["--sizes", "2000", "--rounds", "1", "--threads", "1", "--losses", "ciou"])
    assert "plain formula (autograd)" in boxes and "threads=1" in boxes and "CPU: " in boxes


def test_fused_policy_benchmark_runs_and_reports_both_ratios():
    text = bench_fused_policy.main(["--sequences", "2", "--tokens", "16", "--hidden", "16", "--vocab", "100",
                                    "--rounds", "1", "--threads", str(torch.get_num_threads())])
    assert text.count("added memory fused / naive") == 2 and "load average" in text


def allocate_megabytes(megabytes):
    """A step for rss_growth: allocate and touch ``megabytes`` MB, keep it alive until the step ends."""

    def step():
        block = torch.ones(megabytes * 2**20 // 4)
        return block.sum()

    return step


def test_rss_growth_sees_a_step_allocation_and_not_the_inputs():
    growth = rss_growth("tests.test_benchmarks:allocate_megabytes", 64)
    assert 60 * 2**20 <= growth <= 90 * 2**20  # the 64 MB block, plus a little for the interpreter


@pytest.mark.slow
def test_detection_benchmark_reports_resident_set_growth():
    """The detection benchmark runs (losskit alone where Ultralytics is missing) and gives each
    implementation's RSS growth, measured in its own process, beside the tracker."""
    text = bench_detection.main(["--scenarios", "crowded", "--imgsz", "64", "--objects", "20", "--rounds", "1",
                                 "--warmup", "0", "--classes", "4"] + ([] if rss_available() else ["--no-rss"]))
    assert "crowded: B=4, 64x64" in text
    if rss_available():
        lines = text.splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("peak memory, one process each"))
        assert "RSS growth (MB)" in lines[header] and lines[header + 1].startswith("losskit")
        growth, tracker, *_ = (float(v) for v in lines[header + 1].split()[1:])
        assert growth > 0 and tracker > 0


def test_rss_profile_puts_the_code_pages_apart():
    profile = rss_profile("tests.test_benchmarks:allocate_megabytes", 16)
    # torch.ones and sum run for the first time in the fresh process: their code pages are file-backed
    # resident memory, part of the growth but not of the anonymous 16 MB block.
    assert 0 <= profile["file"] < profile["growth"]
    assert 14 * 2**20 <= profile["growth"] - profile["file"] <= 40 * 2**20  # page-level noise either way


@pytest.mark.slow
def test_compare_benchmark_runs_and_checks_the_numbers():
    text = bench_compare.main(["--task", "classification", "--losses", "ce", "--epochs", "1", "--seeds", "2"])
    assert "2 runs" in text and "--jobs 2" in text and "identical numbers: yes" in text


@pytest.mark.slow
def test_rotated_benchmark_runs_and_checks_the_plain_formulas():
    from benchmarks import bench_rotated

    text = bench_rotated.main(["--sizes", "100", "--rounds", "1"])
    for title in ("Rotated IoU loss", "GWD loss", "KLD loss", "KFIOU loss", "different losses on the same pairs"):
        assert title in text
    assert "plain formula (autograd)" in text and "losskit probiou_loss" in text
