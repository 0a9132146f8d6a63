"""Train one model per (loss, seed) on the same data and schedule; checkpoint every epoch; report.

**Seeds.** Every loss runs with every seed. A seed fixes the data the task makes, the initial
weights (the RNG is seeded before the model is built) and the batch order (each epoch's order
comes from ``(seed, epoch)``), the same for every loss, so on one seed the losses are the only
difference between runs, and the report compares each loss with the first (the baseline) by
paired differences over seeds (:mod:`losskit.arena.stats`). A resumed run continues exactly where
the interrupted one would have gone.

**Parallel runs.** The (loss, seed) runs are independent. ``jobs=1`` runs them one after another
in this process; ``jobs=N`` in N worker processes (:mod:`losskit.arena.parallel`,
``concurrent.futures.ProcessPoolExecutor`` with the spawn start method); ``executor="ray"`` as
Ray tasks. Each run computes with the same number of threads (``threads``, 1 by default) however
many run at once, because the number of threads changes the order in which PyTorch sums (a
reduction split over two threads adds in another order), and so the last digits of the
numbers; with it fixed, every executor and every number of jobs gives the same numbers. Under
``torchrun`` each global batch is split evenly over the ranks and DistributedDataParallel
averages the gradients, which for losses that average over their samples equals the
single-process step on the whole batch.

**Files and trust.** ``OUT/results.json`` holds the settings and every run's history;
``OUT/runs/<run folder>/seed-<seed>/`` a run's ``history.csv`` and its checkpoints: ``epoch-NNNN.pt``
(state dicts of the model, the optimizer and the loss, nothing else) and ``checkpoint.json`` (the
run's settings and history, and the SHA-256 of the two newest checkpoint files). A checkpoint is
read only with ``resume=True``, only when its settings match, only when its hash matches, and
only with ``torch.load(weights_only=True)``: a checkpoint file never runs code. A checkpoint that
fails any of these falls back to the one before it, or restarts that run, with a warning. The
same rules hold in every worker process and Ray task: they run the same code.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

import losskit
from losskit.arena.arguments import (  # noqa: F401  (importable from here, as before)
    EXECUTORS,
    MAX_SEEDS,
    RESUME_KEYS,
    _available_devices,
    _check_count,
    _check_lr,
    _check_parallel,
    _check_same_settings,
    _differences,
    _load_saved,
    _previous_comparison,
    _saved_seeds,
    _saved_settings,
    _short_value,
    available_cores,
    check_device,
    check_out,
    parse_seeds,
)
from losskit.arena.checkpoint import (  # noqa: F401  (importable from here, as before)
    CHECKPOINT_FORMAT,
    KEPT_CHECKPOINTS,
    RUN_KEYS,
    CheckpointWarning,
    _checkpoint_index,
    _OtherSettings,
    _read_state,
    _restore,
    _save_checkpoint,
    _sha256,
    _Unusable,
)
from losskit.arena.report import (
    atomic_write,  # noqa: F401  (importable from here, as before)
    run_folder,
    write_report,
    write_results,
)
from losskit.arena.stats import compare_to_baseline, paired_verdict, summarize
from losskit.arena.tasks import Task, get_task

__all__ = ["CheckpointWarning", "Job", "compare", "loss_total_and_components", "parse_seeds", "run_one"]

DIVERGED_SHARE = 0.2  # a run whose non-finite steps exceed this share of its steps so far is stopped
# Modules the arena imports on demand, and the extra that installs them.
ARENA_EXTRA = {"rich": "arena", "matplotlib": "arena", "torchmetrics": "arena", "faster_coco_eval": "arena",
               "sklearn": "arena", "pandas": "arena", "pyarrow": "arena", "PIL": "arena", "ray": "ray",
               "griffe": "arena", "pylatexenc": "arena"}


@dataclass
class _Setup:
    task: Task
    specs: list[str]
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    seeds: list[int]
    device: torch.device
    out: Path
    rank: int
    world: int
    threads: int = 1
    resume: bool = False
    jobs: int = 1
    executor: str = "local"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def config(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "optimizer": self.optimizer,
                "seeds": list(self.seeds), "device": str(self.device), "world_size": self.world,
                "losses": list(self.specs), "task_options": dict(self.task.options), "threads": self.threads,
                "jobs": self.jobs, "executor": self.executor}

    def settings(self) -> dict[str, Any]:
        """What a resumed comparison must share with this one (:data:`RESUME_KEYS`)."""
        return {"task": self.task.name, "task_options": dict(self.task.options), "losses": list(self.specs),
                "seeds": list(self.seeds), "lr": self.lr, "optimizer": self.optimizer,
                "batch_size": self.batch_size, "world_size": self.world, "losskit_version": losskit.__version__}

    def run_settings(self, seed: int) -> dict[str, Any]:
        """What a run's checkpoint must share with the run that reads it (:data:`RUN_KEYS`)."""
        settings = {k: v for k, v in self.settings().items() if k != "seeds"}
        return {**settings, "seed": seed}


@dataclass
class Job:
    """One run: a loss spec and a seed of a comparison (what a worker process or Ray task receives)."""

    setup: _Setup
    spec: str
    seed: int

    @property
    def run_dir(self) -> Path:
        return self.setup.out / "runs" / run_folder(self.spec) / f"seed-{self.seed}"


def loss_total_and_components(result: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """The scalar to minimize and the named components of whatever a loss returned.

    A composite's components are its terms' weighted contributions, which sum to the total.

    Examples:
        >>> import torch, losskit
        >>> out = losskit.build("0.5*mse + l1")(torch.tensor([2.0]), torch.zeros(1))
        >>> total, parts = loss_total_and_components(out)
        >>> float(total), {k: float(v) for k, v in parts.items()}
        (4.0, {'mse': 2.0, 'l1': 2.0})
    """
    from losskit.compose import CompositeResult

    if isinstance(result, CompositeResult):
        return result, dict(result.weighted)
    if hasattr(result, "total") and hasattr(result, "components"):  # DetectionLossResult and the like
        return result.total, dict(result.components)
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


OPTIMIZERS = ("adam", "sgd")


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


def new_run(spec: str, seed: int = 0) -> dict[str, Any]:
    return {"name": spec, "spec": spec, "seed": seed, "status": "running", "error": None, "nonfinite_steps": 0,
            "seconds": 0.0, "epochs": []}


def describe_error(error: BaseException) -> str:
    """One line for a failed run; a missing optional dependency names the extra that installs it.

    Examples:
        >>> describe_error(ModuleNotFoundError("No module named 'torchmetrics'", name="torchmetrics"))
        "torchmetrics is not installed: pip install 'losskit[arena]'"
    """
    if isinstance(error, ModuleNotFoundError) and error.name:
        top = error.name.split(".")[0]
        extra = ARENA_EXTRA.get(top)
        if extra is not None:
            return f"{top} is not installed: pip install 'losskit[{extra}]'"
        return f"{top} is not installed (pip install {top})"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


# --- training ----------------------------------------------------------------------------------


def _steps(job: Job, net: nn.Module, loss_fn: nn.Module, train: Any, epoch: int, share: int):
    """This epoch's loss results, one per optimizer step: over the data set's batches, or from the
    task's own loop (which makes its data as it trains)."""
    setup, task = job.setup, job.setup.task
    if task.train_epoch is not None:
        yield from task.train_epoch(net, loss_fn, epoch, job.seed, setup.device)
        return
    for batch in _batches(num_samples(train, task), setup.batch_size, job.seed, epoch):
        inputs, targets = _to(_take(train, batch[setup.rank * share:(setup.rank + 1) * share], task), setup.device)
        yield loss_fn(net(inputs), targets)


def make_data(job: Job) -> tuple[Any, Any]:
    """The task's data for this job's seed (the global RNG seeded too, for tasks that use it)."""
    torch.manual_seed(job.seed)
    return job.setup.task.make_data(job.seed)


def run_one(job: Job, run: dict[str, Any], data: tuple[Any, Any] | None = None, bar: Any = None,
            stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train and validate one run, filling ``run`` (from :func:`new_run`) with its status and history.

    A failing loss is reported in the run (``failed`` with the reason) and the comparison goes on.
    ``stop()`` is asked before every step: when it says so, the run ends ``interrupted`` after its
    last complete epoch (and checkpoint). KeyboardInterrupt marks the run ``interrupted`` and
    propagates; a checkpoint written with other settings raises ValueError.
    """
    try:
        train, val = data if data is not None else make_data(job)
        _run(job, run, train, val, bar, stop)
    except KeyboardInterrupt:
        run["status"] = "interrupted"
        raise
    except _OtherSettings:
        raise
    except Exception as exc:  # a failing loss is reported, the others still run
        run.update(status="failed", error=describe_error(exc))
    return run


def _run(job: Job, run: dict[str, Any], train: Any, val: Any, bar: Any, stop: Callable[[], bool] | None) -> None:
    """Train and validate one model with one loss, filling ``run`` epoch by epoch (so an interrupted
    run keeps what it did); when resuming, continues from the run's last usable checkpoint."""
    setup = job.setup
    task, device = setup.task, setup.device
    torch.manual_seed(job.seed)
    model = task.make_model().to(device)
    loss_fn = task.make_loss(job.spec).to(device)  # a fresh loss per run: no state carried between runs
    net = nn.parallel.DistributedDataParallel(model) if setup.world > 1 else model
    optimizer = _make_optimizer(setup.optimizer, list(model.parameters()) + list(loss_fn.parameters()), setup.lr)
    if setup.resume:
        saved = _restore(job, model, optimizer, loss_fn)
        if saved is not None:
            run.update(saved, status="running", error=None, seed=job.seed)
    steps_done = sum(e["steps"] for e in run["epochs"])
    share = setup.batch_size // setup.world
    for epoch in range(len(run["epochs"]), setup.epochs):
        started = time.perf_counter()
        sums: dict[str, float] = {}
        steps = finite = 0
        if hasattr(loss_fn, "set_progress"):  # weight schedules follow the fraction of training done
            loss_fn.set_progress(epoch / max(setup.epochs - 1, 1))
        net.train()
        for result in _steps(job, net, loss_fn, train, epoch, share):
            if stop is not None and stop():
                run["status"] = "interrupted"
                return
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
            _save_checkpoint(job, run, model, optimizer, loss_fn)
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


# --- the comparison ---------------------------------------------------------------------------


def _resolve_task(task: str | Task | None, saved: dict[str, Any] | None, options: dict[str, Any]) -> Task:
    """The task object: a registered name (made from the data options when it reads your data), or
    the given Task; when resuming, the saved task and its options fill what is not given."""
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(task, Task):
        if given:
            raise ValueError(f"{', '.join(sorted(given))}: options of a registered task given by name, not of a Task "
                             "object")
        return task.configure() if task.configure is not None else task
    name = task if task is not None else (saved or {}).get("task") or "segmentation"
    if not isinstance(name, str):
        raise ValueError(f"task must be a task name or a Task, got {name!r}")
    saved_options = (saved or {}).get("config", {}).get("task_options") or {}
    if saved is not None and saved.get("task") == name and isinstance(saved_options, dict):
        keys = ("data", "target", "kind")
        given = {**{k: saved_options[k] for k in keys if k in saved_options}, **given}
    return get_task(name, **given)


def compare(task: str | Task | None = None, losses: Sequence[str] | None = None, *, epochs: int | None = None,
            seeds: int | str | Sequence[int] | None = None, seed: int | None = None, optimizer: str | None = None,
            lr: float | None = None, batch_size: int | None = None, out: str | Path = "losskit-compare",
            device: str = "cpu", resume: bool = False, progress: bool = True, jobs: int | None = None,
            threads: int | None = None, executor: str = "local", address: str | None = None,
            data: str | Path | None = None, target: str | None = None, kind: str | None = None) -> dict[str, Any]:
    """Train one model per loss and seed on ``task`` and report; returns the results (also ``out/results.json``).

    Args:
        task: A registered task name (``segmentation``, the default, ``classification``,
            ``regression``, ``detection``, ``rl``, ``tabular``, ``segmentation-folder``) or a
            :class:`~losskit.arena.tasks.Task` for your own model and data.
        losses: Loss specs (``losskit.build`` strings such as ``"0.5*dice + ce"``); the task's
            defaults when ``None``. The first is the baseline the others are compared with.
        epochs, lr, batch_size: Override the task's defaults.
        seeds: A count ``N`` (seeds 0 to N-1), a range ``"A-B"``, or a list; the task's default
            count when ``None``. One seed fixes the data, the initial weights and the batch order
            for every loss.
        seed: One seed only (the same as ``seeds=[seed]``).
        optimizer: ``"adam"`` (the default) or ``"sgd"`` (Nesterov momentum 0.9).
        out: Output folder: ``results.json``, ``report.html``, and per run a CSV and its
            checkpoints. A folder that holds a previous comparison is refused unless ``resume``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:<i>"`` or ``"mps"``, one that exists here.
        resume: Continue the comparison in ``out``: finished runs are kept, unfinished ones
            continue from their last usable checkpoint. Settings left ``None`` are taken from the
            saved comparison; any that differ (task and its data, losses, seeds, lr, optimizer,
            batch size, number of processes, losskit version) are refused. ``epochs`` may be
            raised, and then finished runs train on to the new count (weight schedules follow the
            new count). ``jobs``, ``threads`` and ``executor`` may change.
        progress: Show progress bars (rich).
        jobs: Runs at once, each in its own worker process (``1``: one after another in this
            process). ``None``: on the CPU, as many as the cores allow at ``threads`` each (at
            most the number of runs); on an accelerator, 1. The numbers do not depend on it.
        threads: PyTorch threads of each run (``torch.set_num_threads``); 1 by default, the
            saved value when resuming.
        executor: ``"local"`` (this machine) or ``"ray"``: every run a Ray task on the cluster at
            ``address`` (``None``: ``ray.init()``'s default, a running local cluster or a new
            one). Needs ``pip install 'losskit[ray]'`` and an ``out`` every node can write.
        data, target, kind: For the tasks that read your data: ``tabular`` (``data`` a CSV or
            Parquet file, ``target`` its column, ``kind`` ``"classification"`` or
            ``"regression"``) and ``segmentation-folder`` (``data`` the folder).

    Returns:
        The results dict: task, config, one entry per (loss, seed) run with its per-epoch
        history, ``summary`` (each loss's mean and 95% interval per metric), ``paired`` (each
        loss against the baseline, paired over seeds) and the verdict.

    Raises:
        ValueError: Before anything trains: an unknown task or optimizer, a loss spec that does
            not build, ``epochs``, ``batch_size``, ``jobs`` or ``threads`` below 1, ``lr`` not
            above 0, bad seeds, a device that is not here, an ``out`` that is a file or not
            writable, a previous comparison in ``out`` without ``resume``, settings that differ
            from the resumed one, data the task refuses, a Task that cannot be sent to worker
            processes, or a Ray cluster that cannot be reached.
    """
    device = check_device(device)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):  # the values given, before any file
        if value is not None:
            _check_count(name, value)
    if lr is not None:
        _check_lr(lr)
    if seed is not None and seeds is not None:
        raise ValueError("give seed (one seed) or seeds (several), not both")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a whole number of 0 or more, got {seed!r}")
    given_seeds = parse_seeds(seeds) if seeds is not None else [seed] if seed is not None else None
    _check_parallel(jobs, threads, executor, address)
    out = check_out(out).absolute()  # worker processes and Ray tasks may start in another directory
    saved = _load_saved(out, resume)
    task = _resolve_task(task, saved, {"data": data, "target": target, "kind": kind})
    before = _saved_settings(saved) if saved is not None else {}
    specs = list(losses) if losses else list(before.get("losses") or task.default_losses)
    if len(set(specs)) != len(specs):
        raise ValueError(f"losses are listed twice: {sorted({s for s in specs if specs.count(s) > 1})}")

    def pick(value: Any, key: str, default: Any) -> Any:
        return value if value is not None else saved["config"].get(key, default) if saved is not None else default

    epochs = _check_count("epochs", pick(epochs, "epochs", task.epochs))
    batch_size = _check_count("batch_size", pick(batch_size, "batch_size", task.batch_size))
    lr = _check_lr(pick(lr, "lr", task.lr))
    seeds = given_seeds or parse_seeds(before.get("seeds") or task.seeds)
    threads = _check_count("threads", pick(threads, "threads", 1))
    optimizer = pick(optimizer, "optimizer", "adam")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose 'adam' or 'sgd'")
    try:
        for spec in specs:  # every spec must build before anything trains
            task.make_loss(spec)
    except TypeError as error:  # an option the loss does not take: a bad argument like any other
        raise ValueError(str(error)) from None
    rank, world = _init_distributed(device)
    setup = _Setup(task, specs, epochs, batch_size, lr, optimizer, seeds,
                   torch.device(device if device != "cuda" or world == 1 else f"cuda:{rank}"), out, rank, world,
                   threads=threads, resume=saved is not None, executor=executor)
    if setup.batch_size % world:
        raise ValueError(f"batch_size {setup.batch_size} must divide evenly over {world} processes")
    if world > 1 and ((jobs or 1) > 1 or executor != "local"):
        raise ValueError("under torchrun every run is split over the processes: jobs and executor 'ray' are for "
                         "one process")
    if saved is not None:
        _check_same_settings(saved, setup)
    train, _ = task.make_data(seeds[0])
    if task.train_epoch is None and num_samples(train, task) < setup.batch_size:
        raise ValueError(f"batch_size {setup.batch_size} is larger than the {num_samples(train, task)} training "
                         f"samples of the {task.name} task")
    results = _start(setup, saved)
    pending = [Job(setup, spec, s) for s in seeds for spec in specs if not _done(results, spec, s, epochs)]
    setup.jobs = _resolve_jobs(jobs, setup, len(pending))
    if jobs is None and setup.jobs > 1 and not _picklable(task):
        setup.jobs = 1  # a Task of local functions cannot travel to worker processes: one process, as asked for none
    if setup.jobs > 1 or executor == "ray":
        from losskit.arena import parallel

        runner = parallel.prepare(setup, address)  # checks the task travels and the cluster answers
    else:
        runner = _inline
    results["config"] = setup.config()
    _finish(setup, results, report=False)  # results.json marks the folder as this comparison's before anything trains
    bars = _progress(setup, num_samples(train, task)) if progress and setup.is_main else None

    def done(run: dict[str, Any]) -> None:
        results["runs"] = [r for r in results["runs"] if (r["spec"], _seed_of(r)) != (run["spec"], run["seed"])]
        results["runs"].append(run)
        _finish(setup, results, report=False)

    try:
        with bars or nullcontext():
            runner(pending, done, bars)
    except KeyboardInterrupt:
        results["interrupted"] = True
        _finish(setup, results)
        raise
    _finish(setup, results)
    return results


def _seed_of(run: dict[str, Any]) -> int:
    return int(run.get("seed") or 0)


def _done(results: dict[str, Any], spec: str, seed: int, epochs: int) -> bool:
    """Whether the run of ``spec`` and ``seed`` has nothing left to do (finished its epochs, or diverged)."""
    run = next((r for r in results["runs"] if r["spec"] == spec and _seed_of(r) == seed), None)
    return run is not None and (run["status"] == "diverged" or (
        run["status"] == "finished" and len(run["epochs"]) >= epochs))


def _resolve_jobs(jobs: int | None, setup: _Setup, runs: int) -> int:
    if jobs is not None:
        return max(1, min(jobs, runs))
    if setup.executor == "ray" or setup.device.type != "cpu" or setup.world > 1:
        return 1
    return max(1, min(available_cores() // setup.threads, runs))


def _picklable(task: Task) -> bool:
    try:
        pickle.dumps(task)
    except Exception:  # PicklingError, AttributeError or TypeError for local functions and lambdas
        return False
    return True


def _inline(jobs: list[Job], done: Callable[[dict[str, Any]], None], bars: Any) -> None:
    """The runs one after another in this process, each with ``setup.threads`` threads."""
    if not jobs:
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(jobs[0].setup.threads)
    data: dict[int, Any] = {}
    try:
        for job in jobs:
            if job.seed not in data:
                data = {job.seed: make_data(job)}  # the runs go seed by seed: keep one seed's data
            run = new_run(job.spec, job.seed)
            try:
                run_one(job, run, data[job.seed], bars.run(job.spec, job.seed) if bars is not None else None)
            except KeyboardInterrupt:
                done(run)
                raise
            done(run)
    finally:
        torch.set_num_threads(previous)


def _start(setup: _Setup, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The results to fill: the saved ones when resuming (runs of these specs and seeds only), else new."""
    if saved is not None:
        results = saved
        for run in results.get("runs", []):
            run.setdefault("seed", (_saved_seeds(saved["config"]) or [0])[0])
        results["runs"] = [r for r in results.get("runs", [])
                           if r.get("spec") in setup.specs and _seed_of(r) in setup.seeds]
        results.pop("interrupted", None)
        results["config"] = setup.config()
        return results
    return {"task": setup.task.name, "description": setup.task.description, "config": setup.config(),
            "losskit_version": losskit.__version__, "primary_metric": setup.task.primary_metric,
            "metrics": dict(setup.task.metrics), "runs": [], "verdict": None}


def _finish(setup: _Setup, results: dict[str, Any], report: bool = True) -> None:
    """Order runs (seed by seed, losses as specified), add the statistics and the verdict, and write
    results.json and the run histories; with ``report``, the HTML report too (main process)."""
    order = {spec: i for i, spec in enumerate(setup.specs)}
    seeds = {s: i for i, s in enumerate(setup.seeds)}
    results["runs"].sort(key=lambda r: (seeds.get(_seed_of(r), len(seeds)), order.get(r["spec"], len(order))))
    results["summary"] = summarize(results)
    results["paired"] = compare_to_baseline(results)
    results["verdict"] = " ".join(v for v in (paired_verdict(results),
                                              setup.task.verdict(results) if setup.task.verdict else None) if v)
    results["verdict"] = results["verdict"] or None
    if setup.is_main:
        (write_report if report else write_results)(results, setup.out)


class _Bars:
    """rich progress: one bar per run (one process), or one bar for all runs (worker processes)."""

    def __init__(self, setup: _Setup, samples: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.setup = setup
        self.steps_per_epoch = samples // setup.batch_size
        self.several = len(setup.seeds) > 1
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), transient=False)

    def __enter__(self) -> _Bars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def run(self, spec: str, seed: int) -> _RunBar:
        return _RunBar(self, f"{spec} [seed {seed}]" if self.several else spec)

    def overall(self, runs: int, where: str) -> _OverallBar:
        return _OverallBar(self, runs, where)


class _RunBar:
    def __init__(self, bars: _Bars, label: str) -> None:
        self.bars, self.label, self.metric = bars, label, ""
        total = bars.steps_per_epoch * bars.setup.epochs
        self.id = bars.progress.add_task(f"{label:<24}", total=total)

    def advance(self, loss: float, components: dict[str, Tensor]) -> None:
        parts = " ".join(f"{k} {float(v):.3f}" for k, v in components.items())
        text = f"{self.label:<24} loss {loss:.4f}" + (f" ({parts})" if parts else "") + self.metric
        self.bars.progress.update(self.id, advance=1, description=text)

    def epoch_done(self, epoch: int, metrics: dict[str, float] | None) -> None:
        primary = self.bars.setup.task.primary_metric
        if metrics and primary in metrics:
            self.metric = f"  epoch {epoch} {primary} {metrics[primary]:.3f}"


class _OverallBar:
    """Runs finished so far, and the last one's primary metric."""

    def __init__(self, bars: _Bars, runs: int, where: str) -> None:
        self.bars, self.where = bars, where
        self.id = bars.progress.add_task(f"{runs} runs {where}", total=runs)

    def run_done(self, run: dict[str, Any]) -> None:
        primary = self.bars.setup.task.primary_metric
        last = (run["epochs"][-1].get("val") or {}) if run["epochs"] else {}
        value = f" {primary} {last[primary]:.3f}" if isinstance(last.get(primary), float) else ""
        text = f"{self.where}: {run['spec']} [seed {run['seed']}] {run['status']}{value}"
        self.bars.progress.update(self.id, advance=1, description=text)


def _progress(setup: _Setup, samples: int) -> _Bars:
    return _Bars(setup, samples)
