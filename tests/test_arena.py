"""``losskit compare``: the command end to end on each task, resume after kill -9, two processes, errors."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from torch import nn

from losskit.arena import report as _report
from losskit.arena.report import _table_model
from losskit.arena.runner import compare
from losskit.arena.tasks import TASKS, Task, get_task
from losskit.cli import main
from losskit.compose.spec import split_specs

PNG = b"\x89PNG\r\n\x1a\n"
# Tests train on the first samples of each data set only, to stay quick; the code path is the same.
SUBSET = {"segmentation": (48, 16), "classification": (256, 100), "regression": (128, 50), "detection": (48, 16)}


def subset_task(name: str) -> Task:
    task = get_task(name)
    n_train, n_val = SUBSET[name]

    def make_data(seed):
        train, val = task.make_data(seed)
        cut = (lambda d, n: d[:n]) if task.collate else (lambda d, n: tuple(t[:n] for t in d))
        return cut(train, n_train), cut(val, n_val)

    return dataclasses.replace(task, make_data=make_data)


@pytest.fixture
def small_tasks(monkeypatch):
    for name in SUBSET:
        monkeypatch.setitem(TASKS, name, subset_task(name))


# Runs the command in a fresh process on the small tasks (for kill -9 and torchrun). With
# KILL_AFTER_CHECKPOINTS=k the process kills itself (SIGKILL: no cleanup, no exception) right after
# its k-th checkpoint is complete (its index written), which is a kill at a known point of the run.
SCRIPT = """
import os, signal, sys
from losskit.arena import checkpoint, tasks
from tests.test_arena import SUBSET, subset_task

if __name__ == "__main__":  # worker processes (spawn) import this file too, and must not run the command
    # Ctrl-C as in a terminal: a child inherits an ignored SIGINT from its parent (a test runner's
    # worker may ignore it), and Python then installs no KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for name in SUBSET:
        tasks.TASKS[name] = subset_task(name)
    limit = int(os.environ.get("KILL_AFTER_CHECKPOINTS", "0"))
    if limit:
        write, written = checkpoint.atomic_write, []
        def atomic_write(path, data):
            write(path, data)
            written.append(path)
            if path.name == "checkpoint.json" and len([p for p in written if p.name == "checkpoint.json"]) == limit:
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.atomic_write = atomic_write  # the checkpoint module writes the checkpoints
    if os.environ.get("KILL_WHEN_FILE"):
        from tests.test_arena_parallel import kill_when_file
        kill_when_file(os.environ["KILL_WHEN_FILE"], os.environ["CHILDREN_FILE"], os.environ["KILL_SIGNAL"])
    from losskit.cli import main
    raise SystemExit(main(sys.argv[1:]))
"""


# The subprocesses import this checkout's tests and losskit (src/), never an installed copy.
_ROOT = Path(__file__).resolve().parents[1]
CHECKOUT_PATH = os.pathsep.join([str(_ROOT), str(_ROOT / "src")])


def script(tmp_path: Path) -> str:
    path = tmp_path / "run_losskit.py"
    path.write_text(SCRIPT)
    return str(path)


def run_cli(tmp_path: Path, *args: str, timeout: float = 600, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": CHECKOUT_PATH,
           **env_vars}
    return subprocess.run([sys.executable, script(tmp_path), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def last_metrics(out: Path) -> dict[str, dict[str, float]]:
    results = json.loads((out / "results.json").read_text())
    return {r["name"]: r["epochs"][-1]["val"] for r in results["runs"]}


@pytest.mark.parametrize(("task", "losses"), [("segmentation", "ce,dice + ce"), ("classification", "ce,poly1"),
                                              ("regression", "mse,huber"), ("detection", "ciou,giou"),
                                              ("rl", "reinforce,ppo")])
def test_compare_end_to_end(task, losses, tmp_path, capsys, small_tasks):
    assert main(["compare", "--task", task, "--losses", losses, "--epochs", "1", "--seeds", "1", "--out",
                 str(tmp_path), "--no-progress"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in results["runs"]] == split_specs(losses)
    assert all(r["status"] == "finished" and len(r["epochs"]) == 1 for r in results["runs"])
    metrics = set(TASKS[task].metrics)
    for run in results["runs"]:
        assert set(run["epochs"][0]["val"]) == metrics
        bound = {"regression": None, "rl": 200.0}.get(task, 1.0)  # rl: mean return, at most 200 steps
        assert bound is None or all(0.0 <= v <= bound for v in run["epochs"][0]["val"].values())
    html = (tmp_path / "report.html").read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert images and all(base64.b64decode(i).startswith(PNG) for i in images)
    if task == "segmentation":  # the composite's terms are its components
        assert set(results["runs"][1]["epochs"][0]["components"]) == {"dice", "cross_entropy"}
    printed = capsys.readouterr().out
    assert all(name in printed for name in split_specs(losses)[:1]) and "report.html" in printed


def test_losses_fall_on_the_default_task(tmp_path):
    """Three epochs of the default comparison (on 96 images): every loss falls, and the verdict is stated."""
    task = dataclasses.replace(subset_task("segmentation"), make_data=lambda seed: tuple(
        tuple(t[:96] for t in part) for part in get_task("segmentation").make_data(seed)))
    results = compare(task, ["ce", "dice"], epochs=3, seeds=1, out=tmp_path, progress=False)
    for run in results["runs"]:
        losses = [e["train_loss"] for e in run["epochs"]]
        assert losses[-1] < losses[0], run["name"]
    verdict = results["verdict"]
    assert verdict.startswith("dice against ce (the baseline) on one seed: dice ")
    assert "no interval can be computed from one seed" in verdict
    assert "Lesion sensitivity, Dice against cross-entropy: " in verdict


@pytest.mark.slow
def test_resume_after_kill_reaches_the_same_numbers(tmp_path):
    args = ["compare", "--task", "classification", "--losses", "ce,poly1", "--epochs", "4", "--seeds", "1",
            "--no-progress"]
    straight = run_cli(tmp_path, *args, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "killed"
    # killed by SIGKILL after the second run's first epoch: one run done, one half done
    killed = run_cli(tmp_path, *args, "--out", str(out), KILL_AFTER_CHECKPOINTS="5")
    assert killed.returncode == -signal.SIGKILL
    state = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in state["runs"]] == ["finished"]
    resumed = run_cli(tmp_path, *args, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert last_metrics(out) == last_metrics(tmp_path / "straight")


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    """torchrun with 2 CPU processes (gloo) gives the metrics of 1 process at the same global batch size."""
    args = ["--task", "classification", "--losses", "ce", "--epochs", "2", "--batch-size", "64", "--seeds", "1",
            "--no-progress"]
    single = run_cli(tmp_path, "compare", *args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": CHECKOUT_PATH}
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             script(tmp_path), "compare", *args, "--out", str(tmp_path / "two")],
                            capture_output=True, text=True, timeout=600, env=env)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = last_metrics(tmp_path / "one")["ce"], last_metrics(tmp_path / "two")["ce"]
    assert json.loads((tmp_path / "two" / "results.json").read_text())["config"]["world_size"] == 2
    assert one.keys() == two.keys()
    for key in one:  # gradients averaged over ranks equal the full-batch gradient up to float rounding
        assert one[key] == pytest.approx(two[key], abs=1e-4), key


@pytest.mark.parametrize(("argv", "message"), [
    (["compare", "--task", "segmentaton"], "did you mean 'segmentation'"),
    (["compare", "--losses", "ce,dcie"], "did you mean 'dice'"),
    (["compare", "--losses", "0.5*"], "losskit: error:"),
    (["compare", "--losses", "ce,ce"], "listed twice"),
    (["compare", "--task", "rl", "--losses", "dpo", "--epochs", "1", "--no-progress"], "compares 'reinforce'"),
    (["info", "hubr"], "did you mean 'huber'"),
])
def test_bad_arguments_give_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_list_and_info(capsys):
    assert main(["list"]) == 0
    assert "segmentation: " in capsys.readouterr().out
    assert main(["info", "huber"]) == 0
    assert "delta" in capsys.readouterr().out


def test_split_specs_keeps_commas_inside_options():
    assert split_specs("ce, focal(gamma=2.0, alpha=0.25) ,0.5*dice+ce") == ["ce", "focal(gamma=2.0, alpha=0.25)",
                                                                              "0.5*dice+ce"]
    # The spec tokenizer splits them: a comma inside a string is an option's, a stray character is an error.
    assert split_specs("x(name='a,b'), ce") == ["x(name='a,b')", "ce"]
    with pytest.raises(ValueError, match="at position 3: unexpected character '!'"):
        split_specs("ce,!")


# --- the Python API with a task of one's own ---------------------------------------------------


class _Broken(nn.Module):
    """A loss that becomes NaN: the run is marked diverged, the comparison goes on."""

    def forward(self, input, target):
        return nn.functional.mse_loss(input, target) * float("nan")


class _Interrupting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, input, target):
        self.calls += 1
        if self.calls == 5:
            raise KeyboardInterrupt
        return nn.functional.mse_loss(input, target)


def line_task(make_loss) -> Task:
    x = torch.linspace(-1, 1, 64)[:, None]
    data = (x, 3 * x + 1)

    def evaluate(model, val, device):
        return {"mae": float((model(val[0]) - val[1]).abs().mean())}

    return Task(name="line", description="y = 3x + 1", default_losses=("mse",), make_data=lambda seed: (data, data),
                make_model=lambda: nn.Linear(1, 1), metrics={"mae": "min"}, primary_metric="mae", evaluate=evaluate,
                make_loss=make_loss, epochs=3, batch_size=16, lr=0.05, seeds=1)


def test_a_diverged_run_is_marked_and_the_others_finish(tmp_path):
    import losskit

    task = line_task(lambda spec: _Broken() if spec == "broken" else losskit.build(spec))
    results = compare(task, ["broken", "mse"], out=tmp_path, progress=False)
    broken, mse = results["runs"]
    assert broken["status"] == "diverged" and broken["nonfinite_steps"] == 4 and broken["epochs"][0]["val"] is None
    assert mse["status"] == "finished" and mse["epochs"][-1]["val"]["mae"] < mse["epochs"][0]["val"]["mae"]
    assert "diverged" in (tmp_path / "report.html").read_text()


def test_interrupt_writes_a_partial_report(tmp_path):
    task = line_task(lambda spec: _Interrupting())
    with pytest.raises(KeyboardInterrupt):
        compare(task, ["mse"], out=tmp_path, progress=False)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["interrupted"] and results["runs"][0]["status"] == "interrupted"
    assert (tmp_path / "report.html").exists()


def test_tasks_are_registered_objects():
    assert {"segmentation", "classification", "regression", "detection", "rl"} <= set(TASKS)
    with pytest.raises(ValueError, match="did you mean 'regression'"):
        get_task("regresion")


# --- files from earlier runs, arguments and failures --------------------------------------------------


FIGURES = ("_figure_losses", "_figure_metrics", "_figure_loss_vs_metric", "_figure_final_scatter")
DRAW = {name: getattr(_report, name) for name in FIGURES}


@pytest.fixture
def line(monkeypatch):
    """The y = 3x + 1 task registered as "line" (one linear layer: every comparison takes well under a
    second), with a count of the models it built. The report leaves out its figures (drawing them
    would take most of the time; the report's tests and the composite test below draw them)."""
    import losskit
    from losskit.arena import report

    for name in FIGURES:
        monkeypatch.setattr(report, name, lambda results: None)
    built = []
    task = line_task(lambda spec: losskit.build(spec))
    make_model = task.make_model
    task = dataclasses.replace(task, make_model=lambda: built.append(1) or make_model())
    monkeypatch.setitem(TASKS, "line", task)
    task.built = built
    return task


def cli(out: Path, *args: str) -> int:
    return main(["compare", "--task", "line", "--out", str(out), "--no-progress", *args])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def results_of(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def histories(results: dict) -> list[list[dict]]:
    """Each run's epochs without their timings: what must repeat exactly."""
    return [[{k: v for k, v in e.items() if k != "seconds"} for e in r["epochs"]] for r in results["runs"]]


def test_a_previous_comparison_is_refused_without_resume(line, tmp_path, capsys):
    """A second comparison into the same folder never reads the first's checkpoints: it is refused."""
    assert cli(tmp_path, "--losses", "mse", "--epochs", "2") == 0
    first = results_of(tmp_path)
    capsys.readouterr()
    assert cli(tmp_path, "--losses", "mse", "--epochs", "2", "--seed", "3") == 2
    err = one_line_error(capsys)
    assert "holds a previous comparison (results.json)" in err and "--resume" in err
    assert results_of(tmp_path) == first  # untouched: no seed-0 numbers reported under seed 3
    # Checkpoints alone (a comparison killed before its first results) count as a previous comparison.
    (tmp_path / "results.json").unlink()
    assert cli(tmp_path, "--losses", "mse", "--seed", "3") == 2
    assert "checkpoints under runs/" in one_line_error(capsys)


@pytest.mark.parametrize(("change", "keys"), [
    (["--seed", "3"], ["seeds [0] -> [3]"]),
    (["--seeds", "2"], ["seeds [0] -> [0, 1]"]),
    (["--lr", "0.01", "--optimizer", "sgd"], ["lr 0.05 -> 0.01", "optimizer 'adam' -> 'sgd'"]),
    (["--batch-size", "8"], ["batch_size 16 -> 8"]),
    (["--losses", "mse,l1"], ["losses ['mse'] -> ['mse', 'l1']"]),
    (["--task", "regression"], ["task 'line' -> 'regression'"]),
    ("version", ["losskit_version '0.1.0' -> '9.9'"]),
    ("world", ["world_size 2 -> 1"]),
    (["--epochs", "1"], ["--epochs 1 is fewer than the 2 epochs"]),
])
def test_resume_refuses_other_settings_naming_them(change, keys, line, tmp_path, capsys, monkeypatch):
    assert cli(tmp_path, "--losses", "mse", "--epochs", "2") == 0
    first = results_of(tmp_path)
    capsys.readouterr()
    if change == "version":
        monkeypatch.setattr("losskit.__version__", "9.9")
    elif change == "world":  # as if the first comparison had run under torchrun on two processes
        edited = dict(first, config={**first["config"], "world_size": 2})
        (tmp_path / "results.json").write_text(json.dumps(edited))
        first = edited
    assert cli(tmp_path, "--resume", *(change if isinstance(change, list) else [])) == 2
    err = one_line_error(capsys)
    assert all(key in err for key in keys), err
    assert results_of(tmp_path) == first and len(line.built) == 1  # nothing trained


def test_resume_takes_the_saved_settings_and_raising_epochs_trains_on(line, tmp_path, capsys):
    """--resume --epochs 4 after 2 epochs reaches the numbers of 4 epochs straight (same batches, optimizer
    state restored); --resume alone reuses every saved setting and has nothing left to do."""
    args = ["--losses", "mse,0.5*mse + l1", "--lr", "0.02", "--seed", "5"]
    assert cli(tmp_path / "straight", *args, "--epochs", "4") == 0
    assert cli(tmp_path / "grown", *args, "--epochs", "2") == 0
    assert cli(tmp_path / "grown", "--resume", "--epochs", "4") == 0
    straight, grown = results_of(tmp_path / "straight"), results_of(tmp_path / "grown")
    assert grown["config"] == straight["config"]
    assert [r["status"] for r in grown["runs"]] == ["finished", "finished"]
    assert histories(grown) == histories(straight)
    built = len(line.built)
    assert cli(tmp_path / "grown", "--resume") == 0
    assert len(line.built) == built and results_of(tmp_path / "grown")["runs"] == grown["runs"]


def test_run_folders_of_specs_that_differ_late_are_distinct(line, tmp_path):
    """Two specs whose folder names used to be cut to the same 80 characters train separately."""
    head = "mse(reduction='mean') + 0.0*l1(reduction='mean') + 0.0*huber(delta=1.0, reduction='mean') + 0.0*"
    specs = [head + "l1", head + "mse"]
    results = compare(line, specs, out=tmp_path / "both", progress=False)
    alone = compare(line, specs[1:], out=tmp_path / "alone", progress=False)
    assert [r["spec"] for r in results["runs"]] == specs
    assert histories(results)[1] == histories(alone)[0]
    folders = sorted(p.name for p in (tmp_path / "both" / "runs").iterdir())
    assert len(folders) == 2 and folders[0] != folders[1]


def _plant(out: Path, data: bytes) -> Path:
    """Replace the newest checkpoint file of the run under ``out`` with ``data``, recording its hash in
    the index as a careful forger would; returns the file."""
    import hashlib

    path = max((out / "runs").rglob("*.pt"))
    path.write_bytes(data)
    index_path = path.parent / "checkpoint.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        for entry in index["checkpoints"]:
            if entry["file"] == path.name:
                entry["sha256"] = hashlib.sha256(data).hexdigest()
        index_path.write_text(json.dumps(index))
    return path


class _Payload:
    """Pickled, it calls open(path, "w") when loaded without weights_only: a file appears."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_crafted_checkpoint_never_runs(line, tmp_path, capsys):
    out, marker = tmp_path / "out", tmp_path / "pwned"
    assert cli(out, "--losses", "mse", "--epochs", "2") == 0
    buffer = io.BytesIO()
    torch.save({"model": _Payload(marker), "optimizer": {}, "loss": {}}, buffer)
    planted = _plant(out, buffer.getvalue())
    capsys.readouterr()
    assert cli(out, "--losses", "mse", "--epochs", "2", "--seed", "1") == 2  # without --resume: never read
    assert not marker.exists()
    capsys.readouterr()
    assert cli(out, "--resume", "--epochs", "3") == 0
    assert not marker.exists()
    err = capsys.readouterr().err
    assert f"losskit: warning: checkpoint {planted} is not used: torch.load(weights_only=True) refused it" in err
    assert "falling back to epoch-0001.pt" in err
    assert results_of(out)["runs"][0]["status"] == "finished" and len(results_of(out)["runs"][0]["epochs"]) == 3
    for path in (out / "runs").glob("*/*.pt"):  # what the runner writes loads as tensors only
        assert set(torch.load(path, weights_only=True)) == {"model", "optimizer", "loss"}
    index = json.loads(next((out / "runs").rglob("checkpoint.json")).read_text())
    assert index["spec"] == "mse" and index["settings"]["seed"] == 0 and len(index["checkpoints"]) == 2


def test_a_truncated_checkpoint_falls_back_to_the_one_before(line, tmp_path, capsys):
    args = ["--losses", "mse,0.5*mse + l1"]
    assert cli(tmp_path / "straight", *args, "--epochs", "3") == 0
    out = tmp_path / "out"
    assert cli(out, *args, "--epochs", "2") == 0
    newest = max((out / "runs").rglob("epoch-0002.pt"))
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    capsys.readouterr()
    assert cli(out, "--resume", "--epochs", "3") == 0
    err = capsys.readouterr().err
    assert err.count("losskit: warning:") == 1 and f"checkpoint {newest} is not used: its SHA-256 differs" in err
    assert err.strip().endswith("falling back to epoch-0001.pt")
    # Epoch 2 was trained again from epoch 1's checkpoint: the numbers of 3 epochs straight.
    assert histories(results_of(out)) == histories(results_of(tmp_path / "straight"))
    assert cli(out, "--resume", "--epochs", "4") == 0  # and the next resume does not fail the same way
    assert "warning" not in capsys.readouterr().err
    assert [len(r["epochs"]) for r in results_of(out)["runs"]] == [4, 4]
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_an_unreadable_checkpoint_index_restarts_the_run(line, tmp_path, capsys):
    assert cli(tmp_path, "--losses", "mse", "--epochs", "2") == 0
    index = next((tmp_path / "runs").rglob("checkpoint.json"))
    index.write_text(index.read_text()[:40])
    capsys.readouterr()
    assert cli(tmp_path, "--resume", "--epochs", "3") == 0
    assert "is not used: it cannot be read" in capsys.readouterr().err
    assert len(results_of(tmp_path)["runs"][0]["epochs"]) == 3


@pytest.mark.parametrize(("args", "message"), [
    (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["--epochs", "-1"], "argument --epochs: must be at least 1, got -1"),
    (["--batch-size", "-4"], "argument --batch-size: must be at least 1, got -4"),
    (["--batch-size", "1000"], "batch_size 1000 is larger than the 64 training samples"),
    (["--lr", "-1"], "argument --lr: must be a finite number greater than 0, got -1"),
    (["--lr", "0"], "argument --lr: must be a finite number greater than 0"),
    (["--lr", "nan"], "argument --lr: must be a finite number greater than 0"),
    (["--device", "cuda:99"], "device 'cuda:99' is not available here; devices here: cpu"),
    (["--device", "tpu"], "device 'tpu' is not available here"),
    (["--optimizer", "adamw"], "argument --optimizer: invalid choice: 'adamw'"),
    (["--losses", "focal(gama=2)"], "unexpected option 'gama'"),
    ("file", "is a file; --out names a folder"),
    ("inside a file", "is not writable"),
])
def test_arguments_are_checked_before_anything_trains(args, message, line, tmp_path, capsys):
    if isinstance(args, str):
        (tmp_path / "taken").write_text("a file")
        out = tmp_path / "taken" if args == "file" else tmp_path / "taken" / "out"
        args = []
    else:
        out = tmp_path / "out"
    with pytest.raises(SystemExit) if message.startswith("argument") else nullcontext() as exited:
        code = cli(out, *args)
    code = exited.value.code if message.startswith("argument") else code
    assert code == 2
    assert message in one_line_error(capsys)
    assert line.built == [] and not (out / "results.json").exists()
    if "device" in args:  # checked before the output folder is made
        assert not out.exists()


def test_the_python_api_checks_arguments_too(line, tmp_path):
    for kwargs, message in [({"epochs": 0}, "epochs must be a whole number of at least 1, got 0"),
                            ({"batch_size": -4}, "batch_size must be a whole number of at least 1"),
                            ({"lr": -1.0}, "lr must be a finite number greater than 0, got -1.0"),
                            ({"device": "cuda:99"}, "device 'cuda:99' is not available here"),
                            ({"seed": 1.5}, "seed must be a whole number")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            compare(line, ["mse"], out=tmp_path / "out", progress=False, **kwargs)
    assert line.built == []


def test_an_error_writing_the_report_is_one_line_and_exit_1(line, tmp_path, capsys, monkeypatch):
    def full_disk(results, out):
        raise OSError(28, "No space left on device", str(out / "report.html"))

    monkeypatch.setattr("losskit.arena.runner.write_report", full_disk)
    assert cli(tmp_path, "--losses", "mse") == 1
    err = one_line_error(capsys)
    assert err.startswith("losskit: error: [Errno 28] No space left on device") and "--debug" in err
    with pytest.raises(OSError, match="No space left"):  # --debug: the traceback, as Python raises it
        cli(tmp_path / "debug", "--losses", "mse", "--debug")


class _Raises(nn.Module):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def forward(self, input, target):
        raise self.error


def test_a_comparison_where_every_run_failed_exits_1(tmp_path, capsys, monkeypatch):
    missing = ModuleNotFoundError("No module named 'torchmetrics'", name="torchmetrics")
    losses = {"metrics": _Raises(missing), "broken": _Raises(ValueError("alpha must be in [0, 1], got 2\nmore"))}
    monkeypatch.setitem(TASKS, "line", line_task(lambda spec: losses[spec]))
    assert main(["compare", "--task", "line", "--losses", "metrics,broken", "--out", str(tmp_path),
                 "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "losskit: error: no run finished; the table says why\n"
    reasons = ["torchmetrics is not installed: pip install 'losskit[arena]'",
               "ValueError: alpha must be in [0, 1], got 2"]
    assert f"metrics (failed): {reasons[0]}" in captured.out and f"broken (failed): {reasons[1]}" in captured.out
    results = results_of(tmp_path)
    assert [r["error"] for r in results["runs"]] == reasons
    status = [row[1].text for row in _table_model(results).rows]  # the table's status cells say why
    assert status == [f"failed: {reasons[0]}", f"failed: {reasons[1]}"]


def test_a_missing_dependency_before_training_names_the_extra(line, tmp_path, capsys, monkeypatch):
    def no_sklearn(seed):
        raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")

    monkeypatch.setitem(TASKS, "line", dataclasses.replace(line, make_data=no_sklearn))
    assert cli(tmp_path, "--losses", "mse") == 1
    assert "sklearn is not installed: pip install 'losskit[arena]'" in one_line_error(capsys)


def test_composite_terms_are_recorded_and_plotted(line, tmp_path, monkeypatch):
    """Each term of "0.5*mse + l1" is a component in results.json (the weighted parts sum to the total),
    a line of the loss figure and a column of history.csv."""
    from losskit.arena import figures, report

    for name in FIGURES:
        monkeypatch.setattr(report, name, DRAW[name])
    legends = []
    png = figures._png

    def capture(fig):
        legends.append({text.get_text() for ax in fig.axes if ax.get_legend() for text in ax.get_legend().get_texts()})
        return png(fig)

    monkeypatch.setattr(figures, "_png", capture)  # the figures module draws; the report calls it
    results = compare(line, ["0.5*mse + l1", "mse"], out=tmp_path, progress=False)
    composite = results_of(tmp_path)["runs"][0]
    for epoch in composite["epochs"]:
        assert set(epoch["components"]) == {"mse", "l1"}
        assert sum(epoch["components"].values()) == pytest.approx(epoch["train_loss"], rel=1e-6)
    assert results["runs"][1]["epochs"][0]["components"] == {"mse": pytest.approx(results["runs"][1]["epochs"][0]
                                                                                  ["train_loss"])}
    assert {"total", "mse", "l1"} <= legends[0]  # the first figure: training loss per run
    header = (tmp_path / "runs" / report.run_folder("0.5*mse + l1") / "seed-0" / "history.csv").read_text()
    header = header.splitlines()[0]
    assert header.startswith("epoch,train_loss,loss_mse,loss_l1,val_mae")
