"""``losskit compare --task detection --obb``: the rotated-rectangles task, its AP and the CLI flag."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from losskit.arena.tasks import TASKS, get_task
from losskit.arena.tasks.detection_obb import average_precision, make_rotated_shapes
from losskit.cli import main


@pytest.fixture
def small_obb_task(monkeypatch):
    task = get_task("detection-obb")

    def make_data(seed):
        train, val = task.make_data(seed)
        return train[:32], val[:8]

    monkeypatch.setitem(TASKS, "detection-obb", dataclasses.replace(task, make_data=make_data))


def test_compare_obb_end_to_end(tmp_path, small_obb_task):
    assert main(["compare", "--task", "detection", "--obb", "--losses", "obb,obb-no-angle", "--epochs", "1",
                 "--seeds", "1", "--out", str(tmp_path), "--no-progress", "--jobs", "1"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in results["runs"]] == ["obb", "obb-no-angle"]
    for run in results["runs"]:
        assert run["status"] == "finished"
        assert 0.0 <= run["epochs"][0]["val"]["ap50_probiou"] <= 1.0
        assert set(run["epochs"][0]["components"]) == {"box", "cls", "dfl", "angle"}


def test_obb_flag_needs_the_detection_task(capsys):
    assert main(["compare", "--task", "segmentation", "--obb"]) == 2
    assert "--obb goes with --task detection" in capsys.readouterr().err


def test_rotated_shapes_are_drawn_where_the_targets_say():
    images, t = make_rotated_shapes(4, torch.Generator().manual_seed(0))
    assert bool((t["bboxes"][:, 2] >= t["bboxes"][:, 3]).all())  # w >= h
    assert bool(((t["bboxes"][:, 4] >= -math.pi / 4) & (t["bboxes"][:, 4] < 3 * math.pi / 4)).all())
    # The first rectangle's centre pixel has its class colour (unless a later one covers it).
    first = t["bboxes"][0]
    x, y = int(first[0] * 64), int(first[1] * 64)
    colour = images[0, :, y, x]
    assert bool((colour > 0.9).any())


def test_average_precision_hand_values():
    box = torch.tensor([[20.0, 20.0, 16.0, 8.0, 0.4]])
    truth = [{"boxes": torch.cat([box, box + torch.tensor([20.0, 20.0, 0, 0, 0])]), "labels": torch.tensor([0, 0])}]
    # Detections by score: a miss (far away), then both objects. Precision 0, 1/2, 2/3 at recalls 0, 1/2, 1;
    # the all-point envelope at the two hits is 2/3 and 2/3: AP = (2/3 + 2/3) / 2 = 2/3.
    found = [{"boxes": torch.cat([box + torch.tensor([40.0, 0, 0, 0, 0]), box, truth[0]["boxes"][1:]]),
              "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([0, 0, 0])}]
    assert average_precision(found, truth) == pytest.approx(2 / 3)
    # A duplicate of a found object is a false positive: one hit at rank 1, one object missed -> AP 1/2.
    found = [{"boxes": torch.cat([box, box]), "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}]
    assert average_precision(found, truth) == pytest.approx(0.5)
