"""``losskit compare --task tabular`` and ``--task segmentation-folder``: your data, without Python.

The tests write their own small CSV, Parquet and PNG files.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from losskit.arena import compare
from losskit.arena.tasks import get_task
from losskit.arena.tasks.segmentation_folder import mask_classes, read_pairs, segmentation_metrics
from losskit.arena.tasks.tabular import _regression_metrics, _tabular_data, read_table
from losskit.cli import main

pd = pytest.importorskip("pandas")
Image = pytest.importorskip("PIL.Image")


# --- data the tests make -----------------------------------------------------------------------------


def write_table(path: Path, rows: int = 120, seed: int = 0, kind: str = "regression") -> Path:
    """A CSV (or Parquet, by the suffix) with two numeric columns (one value missing), a text column
    and a boolean one; the target follows them with some noise."""
    rng = random.Random(seed)
    colours = ["red", "green", "blue"]
    lines = []
    for i in range(rows):
        x1, x2 = rng.gauss(0, 1), rng.uniform(-2, 2)
        colour, flag = colours[i % 3], i % 4 == 0
        y = 2 * x1 - x2 + (1.5 if colour == "red" else 0.0) + 0.1 * rng.gauss(0, 1)
        target = round(10 + 3 * y, 6) if kind == "regression" else ("high" if y > 0 else "low")
        lines.append((None if i == 7 else round(x1, 6), round(x2, 6), colour, flag, target))
    frame = pd.DataFrame(lines, columns=["x1", "x2", "colour", "flag", "y"])
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def write_folder(root: Path, pairs: int = 6, size: tuple[int, int] = (18, 14), values=(0, 255),
                 colour_image: int | None = None) -> Path:
    """``root/images`` and ``root/masks``: grey images with bright squares, masks with ``values``
    (background first), ``size`` = (width, height)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    width, height = size
    for i in range(pairs):
        mask = np.full((height, width), values[0], dtype=np.uint8)
        image = rng.integers(0, 60, (height, width), dtype=np.uint8)
        for k, value in enumerate(values[1:]):
            top, left = (i + 2 * k) % (height - 4), (3 * i + 5 * k) % (width - 4)
            mask[top:top + 4, left:left + 4] = value
            image[top:top + 4, left:left + 4] += np.uint8(120 + 40 * k)
        picture = Image.fromarray(image)
        if colour_image == i:
            picture = picture.convert("RGB")
        picture.save(root / "images" / f"case{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i:02d}.png")
    return root


def cli(*args: str) -> int:
    return main(["compare", "--no-progress", *args])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def histories(results: dict) -> list[list[dict]]:
    return [[{k: v for k, v in e.items() if k != "seconds"} for e in r["epochs"]] for r in results["runs"]]


# --- tabular -----------------------------------------------------------------------------------------


def test_csv_and_parquet_read_alike_with_one_hot_columns(tmp_path):
    csv_table = read_table(write_table(tmp_path / "d.csv"), "y")
    parquet_table = read_table(write_table(tmp_path / "d.parquet"), "y")
    assert csv_table.kind == "regression"  # a float target
    assert csv_table.columns == ["x1", "x2", "colour", "flag"]
    assert csv_table.encoded == ["x1", "x2", "flag", "colour=blue", "colour=green", "colour=red"]
    assert csv_table.numeric == 3  # x1, x2 and the boolean flag
    for a, b in ((csv_table.features, parquet_table.features), (csv_table.target, parquet_table.target)):
        torch.testing.assert_close(a, b, equal_nan=True)
    # Row 1 is green: its one-hot columns are (0, 1, 0); row 7 has no x1.
    assert csv_table.features[1, 3:].tolist() == [0.0, 1.0, 0.0]
    assert math.isnan(csv_table.features[7, 0])


def test_standardized_with_the_training_rows_and_a_missing_value_is_their_mean(tmp_path):
    table = read_table(write_table(tmp_path / "d.csv"), "y")
    (x_train, _), (x_val, _) = _tabular_data(table, seed=3)
    assert len(x_train) == 96 and len(x_val) == 24  # a fifth held out
    numeric = x_train[:, :3].double()
    raw = table.features[:, :3].double()
    order = torch.randperm(120, generator=torch.Generator().manual_seed(3))
    train_rows = raw[order[24:]]
    for column in range(3):  # population mean and standard deviation of the training rows, NaN left out
        seen = train_rows[:, column][~train_rows[:, column].isnan()]
        expected = (train_rows[:, column] - seen.mean()) / seen.std(unbiased=False)
        torch.testing.assert_close(numeric[:, column], expected.nan_to_num(0.0), atol=1e-5, rtol=1e-5)
    assert x_train[:, 3:].sum(1).eq(1).all()  # one-hot columns untouched


def test_the_kind_of_target(tmp_path):
    assert read_table(write_table(tmp_path / "c.csv", kind="classification"), "y").classes == ["high", "low"]
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "k": [0, 2, 1, 2], "v": [0.5, 1.5, 2.5, 3.5]})
    frame.to_csv(tmp_path / "k.csv", index=False)
    whole = read_table(tmp_path / "k.csv", "k")
    assert whole.kind == "classification" and whole.classes == ["0", "1", "2"] and whole.target.tolist() == [0, 2, 1, 2]
    assert read_table(tmp_path / "k.csv", "k", "regression").kind == "regression"
    assert read_table(tmp_path / "k.csv", "v").kind == "regression"


def test_regression_metrics_are_in_the_targets_units():
    """A model that predicts 0 (the standardized mean) predicts the mean: MAE is the mean absolute
    deviation from it, R^2 is 1 - SS_res / SS_tot of the validation rows."""
    class Zero(nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 1)

    mean, std = 10.0, 4.0
    y = torch.tensor([[-1.0], [0.5], [2.0]])  # standardized: 6, 12, 18 in the target's units
    metrics = _regression_metrics(mean, std, Zero(), (torch.zeros(3, 2), y), torch.device("cpu"))
    assert metrics["mae"] == pytest.approx((4 + 2 + 8) / 3)
    assert metrics["rmse"] == pytest.approx(math.sqrt((16 + 4 + 64) / 3))
    assert metrics["r2"] == pytest.approx(1 - (16 + 4 + 64) / (36 + 0 + 36))  # truth mean 12


def test_a_tabular_comparison_end_to_end(tmp_path, capsys):
    data = write_table(tmp_path / "d.csv")
    out = tmp_path / "out"
    assert cli("--task", "tabular", "--data", str(data), "--target", "y", "--losses", "mse,0.5*mse + l1",
               "--epochs", "2", "--seeds", "2", "--jobs", "1", "--out", str(out)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "tabular" and results["primary_metric"] == "mae"
    assert results["config"]["task_options"]["target"] == "y" and results["config"]["seeds"] == [0, 1]
    assert [(r["spec"], r["seed"]) for r in results["runs"]] == [("mse", 0), ("0.5*mse + l1", 0), ("mse", 1),
                                                                  ("0.5*mse + l1", 1)]
    for run in results["runs"]:
        assert run["status"] == "finished" and set(run["epochs"][-1]["val"]) == {"mae", "rmse", "r2"}
        if run["spec"] != "mse":  # the composite's terms, on every seed
            assert set(run["epochs"][-1]["components"]) == {"mse", "l1"}
    assert results["paired"]["baseline"] == "mse" and results["summary"]["mse"]["metrics"]["mae"]["n"] == 2
    assert "report.html" in capsys.readouterr().out


@pytest.mark.parametrize(("make", "args", "message"), [
    ("table", ["--target", "z"], "target column 'z' is not in d.csv (columns: x1, x2, colour, flag, y)"),
    ("table", ["--target", "Y"], "target column 'Y' is not in d.csv; did you mean 'y'?"),
    ("table", ["--target", "colour", "--kind", "regression"],
     "e.g. 'red'); regression needs numbers (or use --kind classification)"),
    ("table", [], "the tabular task needs --target"),
    ("empty", ["--target", "y"], "data 'e.csv' has no rows"),
    ("gaps", ["--target", "y"], "target column 'y' has 1 missing value(s)"),
    ("none", ["--target", "y"], "is not a file"),
    ("table", ["--target", "y", "--kind", "regression", "--task", "classification"],
     "data, kind, target: options of the segmentation-folder and tabular tasks only"),
])
def test_bad_tables_are_one_line_and_exit_2(make, args, message, tmp_path, capsys):
    data = {"table": lambda: write_table(tmp_path / "d.csv"), "none": lambda: tmp_path / "missing.csv"}.get(make)
    if make == "empty":
        (tmp_path / "e.csv").write_text("x1,y\n")
        data = lambda: tmp_path / "e.csv"  # noqa: E731
    elif make == "gaps":
        (tmp_path / "g.csv").write_text("x1,y\n1,2\n2,\n3,4\n")
        data = lambda: tmp_path / "g.csv"  # noqa: E731
    task = ["--task", "tabular"] if "--task" not in args else []
    assert cli(*task, "--data", str(data()), *args, "--out", str(tmp_path / "out")) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out" / "results.json").exists()


def test_resume_refuses_a_changed_data_file(tmp_path, capsys):
    data, out = write_table(tmp_path / "d.csv"), tmp_path / "out"
    args = ["--task", "tabular", "--data", str(data), "--target", "y", "--losses", "mse", "--epochs", "1",
            "--seeds", "1", "--jobs", "1", "--out", str(out)]
    assert cli(*args) == 0
    before = (out / "results.json").read_text()
    write_table(data, seed=1)  # the same columns, other values
    capsys.readouterr()
    assert cli("--resume", "--out", str(out), "--epochs", "2") == 2  # the saved task options find the file
    err = one_line_error(capsys)
    assert "--resume: these settings differ" in err and "data_sha256 '" in err
    assert (out / "results.json").read_text() == before


# --- segmentation-folder ------------------------------------------------------------------------------


def test_pairs_classes_and_channels(tmp_path):
    pairs = read_pairs(write_folder(tmp_path / "bin"))
    assert pairs.images.shape == (6, 1, 14, 18) and pairs.masks.shape == (6, 14, 18)
    assert pairs.values == [0, 255] and set(pairs.masks.unique().tolist()) == {0, 1}  # 0/255 masks: classes 0 and 1
    assert float(pairs.images.min()) >= 0.0 and float(pairs.images.max()) <= 1.0
    colour = read_pairs(write_folder(tmp_path / "rgb", values=(0, 1, 2), colour_image=2))
    assert colour.images.shape[1] == 3 and colour.values == [0, 1, 2]  # one colour image: every image RGB
    grey = np.asarray(Image.open(tmp_path / "rgb" / "images" / "case00.png"), dtype=np.float32) / 255
    torch.testing.assert_close(colour.images[0, 1], torch.from_numpy(grey))  # the grey image, copied to RGB


def test_segmentation_metrics_by_hand():
    # 3 classes. truth:     0 0 1 1 2 2 2 0
    #            predicted: 0 1 1 1 2 0 2 2
    # class 1: TP 2, FP 1, FN 0 -> Dice 4/5, IoU 2/3, sensitivity 1, precision 2/3
    # class 2: TP 2, FP 1, FN 1 -> Dice 4/6, IoU 2/4, sensitivity 2/3, precision 2/3
    truth = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0, 2, 2])
    metrics = segmentation_metrics(predicted, truth, 3)
    assert metrics["dice"] == pytest.approx((4 / 5 + 4 / 6) / 2)
    assert metrics["iou"] == pytest.approx((2 / 3 + 2 / 4) / 2)
    assert metrics["sensitivity"] == pytest.approx((1 + 2 / 3) / 2)
    assert metrics["precision"] == pytest.approx(2 / 3)
    # A class absent from the validation masks is left out; no foreground at all gives NaN.
    assert segmentation_metrics(torch.tensor([0, 2]), torch.tensor([0, 1]), 3)["sensitivity"] == 0.0
    assert math.isnan(segmentation_metrics(torch.tensor([0, 1]), torch.tensor([0, 0]), 2)["dice"])


def test_a_folder_comparison_end_to_end(tmp_path):
    data = write_folder(tmp_path / "data", pairs=5, values=(0, 1, 2))
    results = compare("segmentation-folder", ["ce", "dice"], data=data, epochs=1, seeds=2, jobs=1,
                      out=tmp_path / "out", progress=False)
    assert results["task"] == "segmentation-folder" and len(results["runs"]) == 4
    for run in results["runs"]:
        assert run["status"] == "finished"
        assert set(run["epochs"][0]["val"]) == {"dice", "iou", "sensitivity", "precision"}
        assert all(0.0 <= v <= 1.0 for v in run["epochs"][0]["val"].values() if not math.isnan(v))
    assert "3 classes (mask values 0, 1, 2" in results["description"]


def _two_sizes(root):
    write_folder(root)
    Image.fromarray(np.zeros((10, 18), dtype=np.uint8)).save(root / "masks" / "case01.png")


def _renamed(root):
    write_folder(root)
    (root / "masks" / "case03.png").rename(root / "masks" / "case03_mask.png")


def _rgb_mask(root):
    write_folder(root)
    Image.fromarray(np.zeros((14, 18, 3), dtype=np.uint8)).save(root / "masks" / "case02.png")


def _one_class(root):
    write_folder(root, values=(7,))


def _other_image_size(root):
    write_folder(root)
    Image.fromarray(np.zeros((14, 20), dtype=np.uint8)).save(root / "images" / "case04.png")
    Image.fromarray(np.zeros((14, 20), dtype=np.uint8)).save(root / "masks" / "case04.png")


def _no_pngs(root):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images" / "notes.txt").write_text("no images here")


@pytest.mark.parametrize(("make", "message"), [
    (_two_sizes, "image case01.png is 18x14 but its mask is 18x10 (width x height)"),
    (_renamed, "do not pair up by name: images without a mask: case03.png; masks without an image: case03_mask.png"),
    (_rgb_mask, "mask case02.png is a RGB image; a mask holds one class index per pixel"),
    (_one_class, "hold one value only (7): nothing to segment"),
    (_other_image_size, "images differ in size: case00.png is 18x14, case04.png is 20x14"),
    (_no_pngs, "images holds no .png files"),
    (lambda root: root.mkdir(), "has no images/ folder"),
    (lambda root: None, "is not a folder"),
])
def test_bad_folders_are_one_line_and_exit_2(make, message, tmp_path, capsys):
    root = tmp_path / "data"
    make(root)
    assert cli("--task", "segmentation-folder", "--data", str(root), "--out", str(tmp_path / "out")) == 2
    assert message in one_line_error(capsys)


def test_non_integer_mask_values_are_refused():
    with pytest.raises(ValueError, match=r"mask m.png holds non-integer values \(e.g. 0.25\)"):
        mask_classes(np.array([[0.0, 1.0], [0.25, 1.0]], dtype=np.float32), "m.png")
    with pytest.raises(ValueError, match="holds negative values"):
        mask_classes(np.array([[-1, 0]], dtype=np.int32), "m.png")
    assert mask_classes(np.array([[0.0, 3.0]], dtype=np.float32), "m.png").tolist() == [0, 3]


def test_a_task_with_data_needs_it():
    with pytest.raises(ValueError, match="the segmentation-folder task needs --data DIR"):
        get_task("segmentation-folder")
    with pytest.raises(ValueError, match="not an option of the segmentation-folder task"):
        get_task("segmentation-folder", data=".", target="y")
