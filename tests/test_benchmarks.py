"""The benchmark scripts run (on tiny shapes) and the CPU memory tracker counts what it should."""

import pytest
import torch

from benchmarks import bench_boxes, bench_cross_entropy, bench_focal
from benchmarks.harness import cpu_peak_bytes


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
    boxes = bench_boxes.main(["--sizes", "2000", "--rounds", "1"])
    assert "reference (eager formula)" in boxes
