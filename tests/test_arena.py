"""``losskit compare``: the command end to end on each task, resume after kill -9, two processes, errors."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from losskit.arena.runner import compare
from losskit.arena.tasks import TASKS, Task, get_task
from losskit.cli import main, split_specs

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
# its k-th checkpoint is written, which is a kill at a known point of the run.
SCRIPT = """
import os, signal, sys
from losskit.arena import runner, tasks
from tests.test_arena import SUBSET, subset_task
for name in SUBSET:
    tasks.TASKS[name] = subset_task(name)
limit = int(os.environ.get("KILL_AFTER_CHECKPOINTS", "0"))
if limit:
    write, written = runner.atomic_write, []
    def atomic_write(path, data):
        write(path, data)
        written.append(path)
        if path.name == "checkpoint.pt" and len([p for p in written if p.name == "checkpoint.pt"]) == limit:
            os.kill(os.getpid(), signal.SIGKILL)
    runner.atomic_write = atomic_write
from losskit.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def script(tmp_path: Path) -> str:
    path = tmp_path / "run_losskit.py"
    path.write_text(SCRIPT)
    return str(path)


def run_cli(tmp_path: Path, *args: str, timeout: float = 600, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
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
    assert main(["compare", "--task", task, "--losses", losses, "--epochs", "1", "--out", str(tmp_path),
                 "--no-progress"]) == 0
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
    printed = capsys.readouterr().out
    assert all(name in printed for name in split_specs(losses)[:1]) and "report.html" in printed


def test_losses_fall_on_the_default_task(tmp_path):
    """Three epochs of the default comparison (on 96 images): every loss falls, and the verdict is stated."""
    task = dataclasses.replace(subset_task("segmentation"), make_data=lambda seed: tuple(
        tuple(t[:96] for t in part) for part in get_task("segmentation").make_data(seed)))
    results = compare(task, ["ce", "dice"], epochs=3, out=tmp_path, progress=False)
    for run in results["runs"]:
        losses = [e["train_loss"] for e in run["epochs"]]
        assert losses[-1] < losses[0], run["name"]
    assert results["verdict"].startswith("On this data Dice")


@pytest.mark.slow
def test_resume_after_kill_reaches_the_same_numbers(tmp_path):
    args = ["compare", "--task", "classification", "--losses", "ce,poly1", "--epochs", "4", "--no-progress"]
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
    args = ["--task", "classification", "--losses", "ce", "--epochs", "2", "--batch-size", "64", "--no-progress"]
    single = run_cli(tmp_path, "compare", *args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
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
                make_loss=make_loss, epochs=3, batch_size=16, lr=0.05)


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
