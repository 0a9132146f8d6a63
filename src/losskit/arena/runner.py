"""Train one model per loss on the same data, seed and schedule; checkpoint every epoch; report.

Every run starts from the same initial weights (the RNG is seeded before the model is built) and
sees the same batches in the same order (each epoch's order comes from ``(seed, epoch)``), so the
losses are the only difference between runs, and a resumed run continues exactly where the
interrupted one would have gone. Under ``torchrun`` each global batch is split evenly over the
ranks and DistributedDataParallel averages the gradients, which for losses that average over
their samples equals the single-process step on the whole batch.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

import losskit
from losskit.arena.report import atomic_write, safe_name, write_report
from losskit.arena.tasks import Task, get_task

__all__ = ["compare", "loss_total_and_components"]

DIVERGED_SHARE = 0.2  # a run whose non-finite steps exceed this share of its steps so far is stopped


@dataclass
class _Setup:
    task: Task
    specs: list[str]
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    seed: int
    device: torch.device
    out: Path
    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def config(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "optimizer": self.optimizer,
                "seed": self.seed, "device": str(self.device), "world_size": self.world}


def loss_total_and_components(result: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """The scalar to minimize and the named components of whatever a loss returned."""
    if hasattr(result, "total") and hasattr(result, "components"):  # DetectionLossResult and the like
        return result.total, dict(result.components)
    components = getattr(result, "components", None)
    if isinstance(components, dict):
        return result, {name: value.get("weighted", value) if isinstance(value, dict) else value
                        for name, value in components.items()}
    return result, {}


def _batches(n: int, size: int, seed: int, epoch: int) -> list[Tensor]:
    """This epoch's batches of sample indices (the incomplete last batch is dropped)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return [order[i:i + size] for i in range(0, n - size + 1, size)]


def num_samples(data: Any, task: Task) -> int:
    if task.train_epoch is not None:
        return (task.steps_per_epoch or 1) * task.batch_size  # for the progress bar only
    return len(data) if task.collate is not None else len(data[0])


def _take(data: Any, index: Tensor, task: Task) -> tuple[Any, Any]:
    if task.collate is not None:
        return task.collate([data[i] for i in index.tolist()])
    inputs, targets = data
    return inputs[index], targets[index]


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adam' or 'sgd'")


def _all_finite(value: Tensor, setup: _Setup) -> bool:
    finite = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if setup.world > 1:  # every rank must skip the same steps, or DDP's collectives go out of step
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def _mean_over_ranks(values: dict[str, float], setup: _Setup) -> dict[str, float]:
    if setup.world == 1 or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(values, (t / setup.world).tolist(), strict=True))


def new_run(spec: str) -> dict[str, Any]:
    return {"name": spec, "spec": spec, "status": "running", "error": None, "nonfinite_steps": 0, "seconds": 0.0,
            "epochs": []}


def _steps(setup: _Setup, net: nn.Module, loss_fn: nn.Module, train: Any, epoch: int, share: int):
    """This epoch's loss results, one per optimizer step: over the data set's batches, or from the
    task's own loop (which makes its data as it trains)."""
    task = setup.task
    if task.train_epoch is not None:
        yield from task.train_epoch(net, loss_fn, epoch, setup.seed, setup.device)
        return
    for batch in _batches(num_samples(train, task), setup.batch_size, setup.seed, epoch):
        inputs, targets = _to(_take(train, batch[setup.rank * share:(setup.rank + 1) * share], task), setup.device)
        yield loss_fn(net(inputs), targets)


def _run(setup: _Setup, run: dict[str, Any], loss_fn: nn.Module, train: Any, val: Any, bar: Any) -> None:
    """Train and validate one model with one loss, filling ``run`` epoch by epoch (so an interrupted
    run keeps what it did); resumes from the run's checkpoint if there is one."""
    spec = run["spec"]
    task, device = setup.task, setup.device
    run_dir = setup.out / "runs" / safe_name(spec)  # where the report writes the run's history too
    checkpoint = run_dir / "checkpoint.pt"
    torch.manual_seed(setup.seed)
    model = task.make_model().to(device)
    loss_fn = loss_fn.to(device)
    net = nn.parallel.DistributedDataParallel(model) if setup.world > 1 else model
    optimizer = _make_optimizer(setup.optimizer, list(model.parameters()) + list(loss_fn.parameters()), setup.lr)
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loss_fn.load_state_dict(state["loss"])
        run.update(state["run"])
    steps_done = sum(e["steps"] for e in run["epochs"])
    share = setup.batch_size // setup.world
    for epoch in range(len(run["epochs"]), setup.epochs):
        started = time.perf_counter()
        sums: dict[str, float] = {}
        steps = finite = 0
        if hasattr(loss_fn, "set_progress"):  # weight schedules follow the fraction of training done
            loss_fn.set_progress(epoch / max(setup.epochs - 1, 1))
        net.train()
        for result in _steps(setup, net, loss_fn, train, epoch, share):
            total, components = loss_total_and_components(result)
            steps += 1
            if not _all_finite(total, setup):
                run["nonfinite_steps"] += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            finite += 1
            for name, value in {"total": total, **components}.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            if bar is not None:
                bar.advance(float(total.detach()), components)
        means = _mean_over_ranks({k: v / max(finite, 1) for k, v in sums.items()}, setup)
        steps_done += steps
        diverged = run["nonfinite_steps"] > DIVERGED_SHARE * max(steps_done, 1) or not sums
        model.eval()
        with torch.no_grad():
            val_metrics = None if diverged else task.evaluate(model, val, device)
        seconds = time.perf_counter() - started
        run["seconds"] += seconds
        run["epochs"].append({"epoch": epoch + 1, "train_loss": means.get("total", math.nan),
                              "components": {k: v for k, v in means.items() if k != "total"},
                              "val": val_metrics, "seconds": seconds, "steps": steps})
        if bar is not None:
            bar.epoch_done(epoch + 1, val_metrics)
        if diverged:
            run["status"] = "diverged"
            break
        if setup.is_main:
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "loss": loss_fn.state_dict(), "run": run}, buffer)
            atomic_write(checkpoint, buffer.getvalue())
        if setup.world > 1:
            dist.barrier()
    if run["status"] == "running":
        run["status"] = "finished"


def _init_distributed(device: str) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def compare(task: str | Task = "segmentation", losses: Sequence[str] | None = None, *, epochs: int | None = None,
            seed: int = 0, optimizer: str = "adam", lr: float | None = None, batch_size: int | None = None,
            out: str | Path = "losskit-compare", device: str = "cpu", resume: bool = False, progress: bool = True,
            ) -> dict[str, Any]:
    """Train one model per loss on ``task`` and report; returns the results (also ``out/results.json``).

    Args:
        task: A registered task name (``segmentation``, ``classification``, ``regression``,
            ``detection``) or a :class:`~losskit.arena.tasks.Task` for your own model and data.
        losses: Loss specs (``losskit.build`` strings such as ``"0.5*dice + ce"``); the task's
            defaults when ``None``.
        epochs, lr, batch_size: Override the task's defaults.
        seed: Seeds the model initialization and the batch order (the same for every loss).
        optimizer: ``"adam"`` or ``"sgd"`` (Nesterov momentum 0.9).
        out: Output folder: ``results.json``, ``report.html``, and per run a CSV and a checkpoint.
        device: ``"cpu"`` or a CUDA device.
        resume: Continue an interrupted comparison from ``out``: finished runs are kept, unfinished
            ones continue from their last epoch's checkpoint.
        progress: Show progress bars (rich).

    Returns:
        The results dict (task, config, one entry per run with its per-epoch history, the verdict).

    Raises:
        ValueError: An unknown task or optimizer, or a loss spec that does not build.
    """
    task = get_task(task) if isinstance(task, str) else task
    specs = list(losses) if losses else list(task.default_losses)
    if len(set(specs)) != len(specs):
        raise ValueError(f"losses are listed twice: {sorted({s for s in specs if specs.count(s) > 1})}")
    built = {spec: task.make_loss(spec) for spec in specs}  # every spec must build before anything trains
    _make_optimizer(optimizer, [nn.Parameter(torch.zeros(1))], 1e-3)
    rank, world = _init_distributed(device)
    setup = _Setup(task, specs, epochs or task.epochs, batch_size or task.batch_size, lr or task.lr, optimizer, seed,
                   torch.device(device if device != "cuda" or world == 1 else f"cuda:{rank}"), Path(out), rank, world)
    if setup.batch_size % world:
        raise ValueError(f"batch_size {setup.batch_size} must divide evenly over {world} processes")
    results = _load_or_start(setup, resume)
    train, val = task.make_data(seed)
    bars = _progress(setup, num_samples(train, task)) if progress and setup.is_main else None
    try:
        with bars or nullcontext():
            for spec in specs:
                done = next((r for r in results["runs"] if r["spec"] == spec), None)
                if done is not None and done["status"] in ("finished", "diverged"):
                    continue
                bar = bars.run(spec) if bars is not None else None
                run = new_run(spec)
                results["runs"] = [r for r in results["runs"] if r["spec"] != spec] + [run]
                try:
                    _run(setup, run, built[spec], train, val, bar)
                except KeyboardInterrupt:
                    run["status"] = "interrupted"
                    raise
                except Exception as exc:  # a failing loss is reported, the others still run
                    run.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                _finish(setup, results)
    except KeyboardInterrupt:
        results["interrupted"] = True
        _finish(setup, results)
        raise
    return results


def _load_or_start(setup: _Setup, resume: bool) -> dict[str, Any]:
    path = setup.out / "results.json"
    if resume and path.exists():
        results = json.loads(path.read_text())
        if results.get("task") != setup.task.name:
            raise ValueError(f"--resume: {path} holds a {results.get('task')!r} comparison, not {setup.task.name!r}")
        results["runs"] = [r for r in results["runs"] if r["spec"] in setup.specs]
        results.pop("interrupted", None)
        return results
    return {"task": setup.task.name, "description": setup.task.description, "config": setup.config(),
            "losskit_version": losskit.__version__, "primary_metric": setup.task.primary_metric,
            "metrics": dict(setup.task.metrics), "runs": [], "verdict": None}


def _finish(setup: _Setup, results: dict[str, Any]) -> None:
    """Order runs as specified, add the verdict, and write results.json and the report (main process)."""
    order = {spec: i for i, spec in enumerate(setup.specs)}
    results["runs"].sort(key=lambda r: order.get(r["spec"], len(order)))
    results["verdict"] = setup.task.verdict(results) if setup.task.verdict else None
    if setup.is_main:
        write_report(results, setup.out)


class _Bars:
    """rich progress: one bar per run, its description showing the live loss and its components."""

    def __init__(self, setup: _Setup, samples: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.setup = setup
        self.steps_per_epoch = samples // setup.batch_size
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), transient=False)

    def __enter__(self) -> _Bars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def run(self, spec: str) -> _RunBar:
        return _RunBar(self, spec)


class _RunBar:
    def __init__(self, bars: _Bars, spec: str) -> None:
        self.bars, self.spec, self.metric = bars, spec, ""
        total = bars.steps_per_epoch * bars.setup.epochs
        self.id = bars.progress.add_task(f"{spec:<24}", total=total)

    def advance(self, loss: float, components: dict[str, Tensor]) -> None:
        parts = " ".join(f"{k} {float(v):.3f}" for k, v in components.items())
        text = f"{self.spec:<24} loss {loss:.4f}" + (f" ({parts})" if parts else "") + self.metric
        self.bars.progress.update(self.id, advance=1, description=text)

    def epoch_done(self, epoch: int, metrics: dict[str, float] | None) -> None:
        primary = self.bars.setup.task.primary_metric
        if metrics and primary in metrics:
            self.metric = f"  epoch {epoch} {primary} {metrics[primary]:.3f}"


def _progress(setup: _Setup, samples: int) -> _Bars:
    return _Bars(setup, samples)
