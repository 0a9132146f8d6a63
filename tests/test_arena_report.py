"""The arena's report (HTML, JSON, CSV, terminal table), the loss plots and ``loss_info``."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import warnings

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("rich")

import matplotlib.image  # noqa: E402
from rich.console import Console  # noqa: E402

from losskit.arena.report import (  # noqa: E402
    correlations,
    print_results,
    results_table,
    run_dirs,
    run_folder,
    safe_name,
    write_report,
)
from losskit.cli.info import loss_info  # noqa: E402
from losskit.cli.plots import plot_losses, probe_loss  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _epoch(n, loss, components, val, seconds=1.0):
    return {"epoch": n, "train_loss": loss, "components": components, "val": val, "seconds": seconds}


def make_results():
    """Four runs: a plain one, a composite with * and + (and a name that needs escaping), one that
    diverged (no val metrics after epoch 1, a NaN loss), and one that failed before any epoch."""
    ce = [
        _epoch(1, 0.60, {"ce": 0.60}, {"dice": 0.10, "sensitivity": 0.30, "precision": 0.20}),
        _epoch(2, 0.40, {"ce": 0.40}, {"dice": 0.30, "sensitivity": 0.40, "precision": 0.50}),
        _epoch(3, 0.30, {"ce": 0.30}, {"dice": 0.40, "sensitivity": 0.52, "precision": 0.60}),
    ]
    combo = [
        _epoch(1, 0.70, {"dice": 0.40, "ce": 0.30}, {"dice": 0.20, "sensitivity": 0.50, "precision": 0.30}),
        _epoch(2, 0.50, {"dice": 0.30, "ce": 0.20}, {"dice": 0.50, "sensitivity": 0.60, "precision": 0.40}),
        _epoch(3, 0.45, {"dice": 0.30, "ce": 0.15}, {"dice": 0.60, "sensitivity": 0.71, "precision": 0.45}),
    ]
    diverged = [
        _epoch(1, 2.0, {}, {"dice": 0.05, "sensitivity": 0.9, "precision": 0.05}),
        _epoch(2, float("nan"), {}, None),
    ]
    return {
        "task": "segmentation",
        "description": "tiny-lesion segmentation: <8 px lesions & a 64x64 image",
        "config": {"epochs": 3, "seed": 0, "optimizer": "adam", "lr": 0.003, "batch_size": 16, "device": "cpu"},
        "losskit_version": "0.1.0",
        "primary_metric": "dice",
        "metrics": {"dice": "max", "sensitivity": "max", "precision": "max", "loss": "min"},
        "runs": [
            {"name": "ce", "spec": "ce", "status": "finished", "error": None, "nonfinite_steps": 0,
             "seconds": 12.3, "epochs": ce},
            {"name": "0.5*dice+0.5*ce", "spec": "0.5*dice + 0.5*ce", "status": "finished", "error": None,
             "nonfinite_steps": 0, "seconds": 14.0, "epochs": combo},
            {"name": "focal<b>", "spec": "focal", "status": "diverged", "error": "loss became nan at step 7",
             "nonfinite_steps": 3, "seconds": 2.5, "epochs": diverged},
            {"name": "tversky", "spec": "tversky(alpha=2)", "status": "failed",
             "error": "ValueError: alpha must be in [0, 1]", "nonfinite_steps": 0, "seconds": 0.1,
             "epochs": []},
        ],
        "verdict": "Dice raised sensitivity over cross-entropy on this data: 0.71 vs 0.52 (best of each run's "
                   "last epoch).",
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of :func:`make_results`, written once for the tests that read it."""
    out = tmp_path_factory.mktemp("report")
    return write_report(make_results(), out / "out")


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_write_report_html(report):
    results = make_results()
    path = report
    assert path.name == "report.html" and path.parent.name == "out" and path.is_file()
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for name in ("ce", "0.5*dice+0.5*ce", "focal&lt;b&gt;", "tversky"):
        assert name in page
    assert "focal<b>" not in page  # escaped everywhere, never raw
    assert "&lt;8 px lesions &amp; a 64x64 image" in page
    assert results["verdict"].replace("'", "&#x27;") in page
    assert "alpha must be in [0, 1]" in page  # the failed run's error is reported
    # Self-contained: no external stylesheet, script or image.
    assert "<link" not in page and "<script" not in page and 'src="http' not in page
    images = _images(page)
    assert len(images) == 4  # loss curves, validation metrics, loss against metric, final loss against metric
    for png in images:
        assert png.startswith(PNG_SIGNATURE)
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100


def _best_cells(page: str) -> set[tuple[str, str, str]]:
    """(run, column, value) of each highlighted cell of the results table."""
    table = page[page.index('<table class="results">'):]
    table = table[:table.index("</table>")]
    headers = [html.unescape(h) for h in re.findall(r"<th>([^<]*)</th>", table)]
    best = set()
    for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1]):
        cells = re.findall(r'<td(?: class="([^"]*)")?>([^<]*)</td>', row)
        for header, (classes, value) in zip(headers, cells, strict=True):
            if "best" in classes.split():
                best.add((html.unescape(cells[0][1]), header, value))
    return best


def test_report_highlights_best_per_column(report, tmp_path):
    page = report.read_text(encoding="utf-8")
    # dice: 0.6 (combo); sensitivity: 0.71 (combo); precision: 0.6 (ce). The diverged run's last
    # epoch has no metrics, so its early sensitivity of 0.9 is not a candidate; the training
    # losses of different losses are not ranked.
    assert _best_cells(page) == {("0.5*dice+0.5*ce", "dice ↑ (primary)", "0.6"),
                                 ("0.5*dice+0.5*ce", "sensitivity ↑", "0.71"),
                                 ("ce", "precision ↑", "0.6")}
    # Lower-is-better metrics pick the minimum.
    results = make_results()
    results["metrics"]["precision"] = "min"
    page = write_report(results, tmp_path / "min").read_text(encoding="utf-8")
    assert ("0.5*dice+0.5*ce", "precision ↓", "0.45") in _best_cells(page)


def test_results_json_round_trips(report):
    results = make_results()
    text = (report.parent / "results.json").read_text(encoding="utf-8")
    loaded = json.loads(text)  # strict JSON: NaN is written as null
    assert "NaN" not in text and text.startswith("{\n  ")
    assert list(loaded) == sorted(loaded)
    assert loaded["runs"][2]["epochs"][1]["train_loss"] is None
    results["runs"][2]["epochs"][1]["train_loss"] = None
    assert loaded == results


def test_history_csv(report):
    tmp_path = report.parent
    results = make_results()
    folders = {name: folder for (name, _), folder in run_dirs(results).items()}  # runs without a seed
    assert folders == {name: run_folder(name) for name in ("ce", "0.5*dice+0.5*ce", "focal<b>", "tversky")}
    assert [f.rsplit("-", 1)[0] for f in folders.values()] == ["ce", "0.5xdice_plus_0.5xce", "focal_b", "tversky"]
    with open(tmp_path / "runs" / folders["0.5*dice+0.5*ce"] / "history.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["epoch", "train_loss", "loss_dice", "loss_ce", "val_dice", "val_sensitivity",
                       "val_precision", "seconds"]
    assert rows[1:] == [
        ["1", "0.7", "0.4", "0.3", "0.2", "0.5", "0.3", "1.0"],
        ["2", "0.5", "0.3", "0.2", "0.5", "0.6", "0.4", "1.0"],
        ["3", "0.45", "0.3", "0.15", "0.6", "0.71", "0.45", "1.0"],
    ]
    with open(tmp_path / "runs" / folders["focal<b>"] / "history.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [["epoch", "train_loss", "val_dice", "val_sensitivity", "val_precision", "seconds"],
                    ["1", "2.0", "0.05", "0.9", "0.05", "1.0"],
                    ["2", "nan", "", "", "", "1.0"]]
    with open(tmp_path / "runs" / folders["tversky"] / "history.csv", newline="") as handle:
        assert list(csv.reader(handle)) == [["epoch", "train_loss", "seconds"]]
    # Nothing but the three kinds of file, no temporary files left behind.
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["report.html", "results.json", *sorted(f"runs/{f}/history.csv" for f in folders.values())]


def test_safe_names_are_unique():
    assert safe_name("0.5*dice + 0.5*ce") == "0.5xdice_plus_0.5xce"
    assert safe_name("../../etc") == "etc"
    assert safe_name("***") == "xxx" and safe_name("///") == "run"
    dirs = run_dirs({"runs": [{"name": "A b"}, {"name": "ab"}, {"name": "Ab"}]})
    assert len({d.lower() for d in dirs.values()}) == 3  # unique even on case-insensitive disks
    assert all(d.startswith(("Ab-", "ab-")) for d in dirs.values())
    # Specs that differ only after the first 80 characters (where names used to be cut) differ.
    head = "0.5*dice(smooth_nr=1.0, smooth_dr=1.0, include_background=False) + 0.5*focal(gamma=2.0, "
    long = [head + "alpha=0.25)", head + "alpha=0.5)"]
    assert safe_name(long[0])[:80] == safe_name(long[1])[:80]
    assert run_folder(long[0]) != run_folder(long[1]) and all(len(run_folder(n)) <= 51 for n in long)
    # The same name twice (a results file edited by hand) still gets two folders.
    twice = run_dirs({"runs": [{"name": "ce"}, {"name": "ce", "spec": "ce"}]})
    assert len(twice) == 1 and list(twice.values()) == [run_folder("ce") + "-2"]


def test_correlations_hand_checked():
    def run(name, losses, metrics):
        epochs = [{"train_loss": x, "val": {"acc": y}} for x, y in zip(losses, metrics, strict=True)]
        return {"name": name, "epochs": epochs}

    results = {"primary_metric": "acc", "runs": [
        run("falls", [3.0, 2.0, 1.0], [0.1, 0.2, 0.3]),  # y = 0.4 - 0.1 x exactly: r = -1
        run("rises", [1.0, 2.0, 4.0], [0.1, 0.2, 0.4]),  # y = x / 10: r = +1
        # x = 1, 2, 3, y = 1, 3, 2: sxy = (-1)(-1) + 0 + (1)(0) = 1, sxx = syy = 2, so r = 1/2
        run("half", [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]),
        run("short", [2.0, 1.0], [0.1, 0.2]),  # fewer than 3 epochs
        run("flat", [3.0, 2.0, 1.0], [0.5, 0.5, 0.5]),  # constant metric
        # Missing and non-finite epochs are dropped, leaving 2 points.
        run("gaps", [3.0, float("nan"), 1.0, 0.5], [0.1, 0.2, None, 0.4]),
    ]}
    r = correlations(results)
    assert r["falls"] == pytest.approx(-1.0) and r["rises"] == pytest.approx(1.0)
    assert r["half"] == pytest.approx(0.5)
    assert r["short"] is None and r["flat"] is None and r["gaps"] is None
    full = correlations(make_results())
    assert full["ce"] < -0.9 and full["focal<b>"] is None and full["tversky"] is None


def test_print_results_terminal():
    results = make_results()
    console = Console(record=True, width=200)
    print_results(results, console=console)
    text = console.export_text()
    for name in ("ce", "0.5*dice+0.5*ce", "focal<b>", "tversky", "diverged", "failed", "Verdict"):
        assert name in text
    assert "alpha must be in [0, 1]" in text  # rich markup is not interpreted in run data
    table = results_table(results)
    assert table.row_count == 4 and len(table.columns) == 11


def test_report_with_no_runs(tmp_path):
    results = {"task": "t", "primary_metric": "acc", "metrics": {"acc": "max"}, "runs": [], "verdict": None}
    page = write_report(results, tmp_path).read_text(encoding="utf-8")
    assert "No verdict" in page and _images(page) == []


def test_plot_losses_png(tmp_path):
    out = plot_losses(["mse", "huber", "ce", "focal", "giou"], tmp_path / "figs" / "losses.png", points=41)
    assert out == tmp_path / "figs" / "losses.png"
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert matplotlib.image.imread(io.BytesIO(data), format="png").shape[0] > 200


def test_probes_match_hand_values():
    # Huber (delta 1) at r = -3 is 3 - 1/2 = 2.5 with slope -1; at r = 0 it is 0 with slope 0.
    huber = probe_loss("huber", points=7)
    assert huber.x.tolist() == [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    assert huber.loss[0] == pytest.approx(2.5) and huber.grad[0] == pytest.approx(-1.0)
    assert huber.loss[3] == 0.0 and huber.grad[3] == 0.0
    # Two-class softmax CE at margin x is log(1 + e^-x), as BCE of logit x with target 1;
    # both have slope -sigmoid(-x), -1/2 at x = 0.
    ce, bce = probe_loss("ce", points=5), probe_loss("bce", points=5)
    assert ce.kind.startswith("softmax") and bce.kind.startswith("binary")
    for probe in (ce, bce):
        assert probe.loss == pytest.approx([math.log1p(math.exp(-x)) for x in probe.x])
        assert probe.grad[2] == pytest.approx(-0.5)
    # A unit box shifted by s = 0.5: IoU = 0.5 / 1.5 = 1/3, the enclosing box is the union, so
    # GIoU loss = 2/3.
    giou = probe_loss("giou", points=7)  # s = -1.5, -1, ..., 1.5
    assert giou.x[4] == pytest.approx(0.5) and giou.loss[4] == pytest.approx(2 / 3)
    # LDAM's probe carries its class counts (90, 10) and scale 1: the margins go as n^(-1/4) with
    # the rarest class's 0.5, so the true class 0 gets 0.5 (10 / 90)^(1/4) and its loss is
    # log(1 + e^-(x - that margin)).
    ldam = probe_loss("ldam", points=5)
    shift = 0.5 * (10 / 90) ** 0.25
    assert ldam.loss == pytest.approx([math.log1p(math.exp(-(x - shift))) for x in ldam.x])


def test_every_family_has_a_probe():
    import losskit
    from losskit.cli import plots

    assert set(losskit.families()) <= set(plots.PROBE_FAMILIES)
    for family in losskit.families():
        for name in losskit.available(family):
            probe = probe_loss(name, points=9)  # raises if the loss fails on its probe
            assert probe.axis and probe.variable and probe.curves, name
            for _, loss, grad in probe.curves:
                assert loss.shape == grad.shape == (9,), name
                assert all(math.isfinite(v) for v in [*loss, *grad]), name


def test_new_family_probes_match_hand_values():
    # Detection: at logit 0 with target 1, varifocal is q * BCE = ln 2 with slope -1/2; quality
    # focal is |1 - 1/2|^2 ln 2. Distribution focal on 8 bins, the target bin at logit x and the
    # others at 0: -log softmax = log(1 + 7 e^-x), ln 8 at x = 0.
    vfl, qfl, dfl = (probe_loss(n, points=5) for n in ("varifocal", "quality_focal", "distribution_focal"))
    assert vfl.x[2] == 0.0 and vfl.loss[2] == pytest.approx(math.log(2)) and vfl.grad[2] == pytest.approx(-0.5)
    assert qfl.loss[2] == pytest.approx(0.25 * math.log(2))
    assert dfl.loss == pytest.approx([math.log1p(7 * math.exp(-x)) for x in dfl.x])
    # Segmentation: at margin 0 every pixel is 1/2 for both classes, so soft Dice is 1/2 for each.
    dice = probe_loss("dice", points=5)
    assert dice.loss[2] == pytest.approx(0.5, abs=1e-4) and dice.loss[0] > 0.99 and dice.loss[-1] < 0.01
    # Contrastive: at s = 0 the positive and the negative tie: SupCon gives ln 2 per anchor.
    supcon = probe_loss("supervised_contrastive", points=5)  # s = -1, -0.5, 0, 0.5, 1
    assert supcon.loss[2] == pytest.approx(math.log(2))
    assert supcon.loss == pytest.approx([math.log1p(math.exp(-s / 0.1)) for s in supcon.x])
    # Triplet (margin 1, Euclidean): d+ = sqrt(2 - 2s), d- = sqrt(2): [d+ - d- + 1]_+.
    triplet = probe_loss("triplet_margin", points=5)
    assert triplet.loss == pytest.approx([max(0.0, math.sqrt(2 - 2 * s) - math.sqrt(2) + 1) for s in triplet.x],
                                         abs=1e-6)
    # Divergence: KL(P || softmax(x, 0)) is 0 at x = ln 3 (P = (0.75, 0.25)); negative slope left of it.
    kl = probe_loss("kl_div", points=13)  # x = -6, -5, ..., 6
    assert kl.loss[7] == pytest.approx(0.75 * math.log(0.75 / (math.e / (math.e + 1)))
                                       + 0.25 * math.log(0.25 / (1 / (math.e + 1))))
    assert kl.grad[6] < 0 < kl.grad[8]


def test_rl_and_preference_probes():
    # PPO at r = 1.5 with A = +1 is clipped to -(1.2) (zero slope), at r = 0.5 unclipped -0.5
    # (slope -1); with A = -1 it is max(-r, -clip(r)) * -1 -> 0.8 flat at r = 0.5 and 1.5 at r = 1.5.
    ppo = probe_loss("ppo_clip", points=11)  # r = 0.5, 0.6, ..., 1.5
    assert ppo.axis.startswith("probability ratio") and ppo.variable == "r"
    (pos, pos_loss, pos_grad), (neg, neg_loss, neg_grad) = ppo.curves
    assert pos == "A = +1" and neg == "A = -1"
    assert pos_loss[[0, -1]] == pytest.approx([-0.5, -1.2]) and pos_grad[[0, -1]] == pytest.approx([-1.0, 0.0])
    assert neg_loss[[0, -1]] == pytest.approx([0.8, 1.5]) and neg_grad[[0, -1]] == pytest.approx([0.0, 1.0])
    assert [label for label, *_ in probe_loss("grpo", points=5).curves] == [
        "reward 1 of (1, 0): A > 0", "reward 0 of (1, 0): A < 0"]
    assert probe_loss("reinforce", points=4).grad.tolist() == pytest.approx([-1.0] * 4)  # return +1: -l
    value = probe_loss("value", points=7)
    assert value.variable == "e" and value.loss[0] == pytest.approx(9.0)
    kl = probe_loss("kl_penalty", points=5)  # k3 at d: e^-d - 1 + d
    assert kl.loss == pytest.approx([math.exp(-d) - 1 + d for d in kl.x])
    # DPO (beta 0.1) at margin m, the reference log-probs equal: -log sigmoid(0.1 m).
    dpo = probe_loss("dpo", points=5)
    assert dpo.variable == "m" and dpo.loss == pytest.approx([math.log1p(math.exp(-0.1 * m)) for m in dpo.x])
    kto = probe_loss("kto", points=5)
    assert [label for label, *_ in kto.curves] == ["desirable", "undesirable"]
    assert kto.curves[0][1][2] == pytest.approx(0.5) and kto.curves[0][2][2] < 0 < kto.curves[1][2][2]


def test_plot_losses_every_family(tmp_path):
    import losskit

    names = [losskit.available(f)[0] for f in losskit.families()] + ["ppo_clip", "value", "kto"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = plot_losses(names, tmp_path / "all.png", points=21,
                          options={"balanced_softmax": {"class_counts": [90, 10]}})
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert matplotlib.image.imread(out, format="png").shape[0] > 1000  # one row per (family, axis)


def test_plot_losses_errors(tmp_path, monkeypatch):
    from losskit.cli import plots

    monkeypatch.setattr(plots, "PROBE_FAMILIES", ("regression", "classification", "boxes"))
    with pytest.raises(ValueError, match="no 1-D probe for family segmentation; plot supports regression"):
        plot_losses(["dice"], tmp_path / "x.png")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="did you mean 'huber'"):
        plot_losses(["hubr"], tmp_path / "x.png")
    # The probe's own options draw LDAM; options that break it raise the loss's error, nothing is
    # caught or drawn in its place.
    plot_losses(["ldam", "mse"], tmp_path / "ldam.png", points=11)
    with pytest.raises(ValueError, match="class_counts"):
        plot_losses(["mse", "ldam"], tmp_path / "z.png", points=11, options={"ldam": {"class_counts": [1, 2, 3]}})
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "z.png").exists()
    assert (tmp_path / "ldam.png").is_file()


def test_loss_info():
    text = loss_info("huber")
    assert text.startswith("huber (regression): Huber loss")
    assert re.search(r"^  delta\s+= 1\.0$", text, re.MULTILINE)  # the option and its default
    assert "losskit.nn.HuberLoss" in text and "losskit.huber_loss" in text
    # The example call comes from the table of example inputs, by the function's own argument names.
    example = loss_info("dpo").split("example inputs (losskit.examples, 2 samples):\n")[1]
    assert re.match(r"  chosen_log_probs\s+= tensor float64 \(2,\)\n  rejected_log_probs\s+= tensor float64 \(2,\)",
                    example)
    assert "plot probe: chosen -3.5 + m/2, rejected -3.5 - m/2" in example
    assert "\\ell(e)" in text  # the formula
    assert "references:" in text and "Huber, \"Robust Estimation" in text
    assert "Examples" not in text and ">>>" not in text
    focal = loss_info("focal")  # an alias
    assert focal.startswith("sigmoid_focal (classification)") and "aliases:   focal" in focal
    # The family's "to reproduce a peer" rows that name the loss.
    assert "alpha_gate=0.5" in loss_info("ciou").split("to reproduce a peer")[1]
    assert "to reproduce:" in loss_info("varifocal")
    with pytest.raises(ValueError, match="did you mean 'huber'"):
        loss_info("hubr")


def test_loss_info_reads_like_text():
    import losskit

    # Inline formulas read as Unicode (griffe sections, pylatexenc), never as reST roles.
    asl = loss_info("asl")
    assert "easy negatives (p < `clip`)" in asl and "\\sigma" not in asl.split("formula:")[0]
    assert "KL(P \u2016 Q)" in loss_info("kl_div").splitlines()[0]
    assert "exp (1/|y|" in loss_info("ppo_clip")  # \tfrac{1}{|y|}
    # A directive with two equations keeps them apart: ASL's probability shift, then its loss.
    formula = asl.split("formula:\n")[1].split("\n\n")
    assert formula[0].strip().startswith("p = \\sigma(x)") and formula[1].strip().startswith("\\ell = ")
    for name in losskit.available():
        text = loss_info(name)
        assert ":math:`" not in text and ":func:`" not in text and ":class:`" not in text, name


def test_docstring_markdown_keeps_each_equation():
    from losskit.cli.docstrings import convert

    # reST separates the equations of one directive by a blank line; each becomes its own block.
    doc = "Text.\n\n.. math::\n\n    a = 1\n\n    b = 2\n    + 3\n\nMore with :math:`x` and :func:`f`."
    expected = "Text.\n\n$$\na = 1\n$$\n\n$$\nb = 2\n+ 3\n$$\n\nMore with $x$ and `f`."
    assert re.sub(r"\n{3,}", "\n\n", convert(doc)) == expected


def make_seeded_results():
    """Two losses on three seeds. Final dice: ce 0.60, 0.62, 0.61; dice 0.66, 0.70, 0.68 (paired
    differences 0.06, 0.08, 0.07: mean 0.07, sd 0.01, half-width 4.302653 * 0.01 / sqrt(3) = 0.0248).
    Final precision: ce 0.80, 0.70, 0.90; dice 0.75, 0.80, 0.70 (differences -0.05, +0.10, -0.20:
    mean -0.05, sd 0.15, half-width 0.3726, so no significant difference)."""
    finals = {"ce": [(0.60, 0.80), (0.62, 0.70), (0.61, 0.90)], "dice": [(0.66, 0.75), (0.70, 0.80), (0.68, 0.70)]}
    runs = []
    for name, per_seed in finals.items():
        for seed, (dice, precision) in enumerate(per_seed):
            epochs = [_epoch(e, 1.0 / e + 0.01 * seed, {"dice": 0.6 / e, "cross_entropy": 0.4 / e + 0.01 * seed},
                             {"dice": dice * e / 3, "precision": precision}) for e in (1, 2, 3)]
            runs.append({"name": name, "spec": name, "seed": seed, "status": "finished", "error": None,
                         "nonfinite_steps": 0, "seconds": 2.0, "epochs": epochs})
    return {"task": "segmentation", "description": "three seeds", "primary_metric": "dice",
            "metrics": {"dice": "max", "precision": "max"}, "losskit_version": "0.1.0",
            "config": {"losses": ["ce", "dice"], "seeds": [0, 1, 2]}, "runs": runs, "verdict": None}


def test_several_seeds_give_means_intervals_and_paired_differences(tmp_path, monkeypatch):
    from matplotlib.collections import PathCollection, PolyCollection

    from losskit.arena import figures as figures_module

    figures = []
    png = figures_module._png
    monkeypatch.setattr(figures_module, "_png", lambda fig: figures.append(fig) or png(fig))
    page = write_report(make_seeded_results(), tmp_path).read_text(encoding="utf-8")
    # The results table: mean ± half-width of the 95% t interval (dice: ce 0.610 ± 0.025, dice 0.680 ± 0.050).
    assert "<td class=\"best\">0.680 ± 0.050</td>" in page and "<td>0.610 ± 0.025</td>" in page
    # The paired table: dice better than ce, its interval excluding 0; precision not significant.
    assert '<td class="better">+0.070 [+0.045, +0.095] n=3</td>' in page
    assert "<td>-0.05 [-0.42, +0.32] n=3</td>" in page  # two significant digits of the half-width
    assert "Per seed" in page and page.count('href="runs/ce-e64c826b6b/seed-') == 3  # a history per seed
    losses, metrics, _, scatter = figures
    # Seed bands: a filled band behind each line (total and two components per loss; each metric per loss).
    assert sum(isinstance(c, PolyCollection) for ax in losses.axes for c in ax.collections) == 2 * 3
    assert sum(isinstance(c, PolyCollection) for ax in metrics.axes for c in ax.collections) == 2 * 2
    # Components: the composite's terms, one line each (mean over seeds), beside the total.
    assert {line.get_label() for line in losses.axes[0].get_lines()} == {"total", "dice", "cross_entropy"}
    # The scatter: one point per run, one colour per loss.
    points = [c for c in scatter.axes[0].collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in points] == [3, 3]
    ce_points = sorted(points[0].get_offsets().tolist())  # (final train loss, final dice) of each seed
    expected = [(1 / 3, 0.60), (1 / 3 + 0.01, 0.62), (1 / 3 + 0.02, 0.61)]
    assert [c for point in ce_points for c in point] == pytest.approx([c for point in expected for c in point])


def test_terminal_shows_the_paired_table():
    console = Console(record=True, width=200)
    print_results(make_seeded_results(), console=console)
    text = console.export_text()
    assert "against the baseline, paired over seeds" in text and "+0.070 [+0.045, +0.095] n=3" in text
    assert "0.680 ± 0.050" in text
