"""Train one model per loss on the same data, seed and schedule; checkpoint every epoch; report.

Every run starts from the same initial weights (the RNG is seeded before the model is built) and
sees the same batches in the same order (each epoch's order comes from ``(seed, epoch)``), so the
losses are the only difference between runs, and a resumed run continues exactly where the
interrupted one would have gone. Under ``torchrun`` each global batch is split evenly over the
ranks and DistributedDataParallel averages the gradients, which for losses that average over
their samples equals the single-process step on the whole batch.

**Files and trust.** ``OUT/results.json`` holds the settings and every run's history;
``OUT/runs/<run folder>/`` a run's ``history.csv`` and its checkpoints: ``epoch-NNNN.pt`` (state
dicts of the model, the optimizer and the loss, nothing else) and ``checkpoint.json`` (the run's
settings and history, and the SHA-256 of the two newest checkpoint files). A checkpoint is read
only with ``resume=True``, only when its settings match, only when its hash matches, and only
with ``torch.load(weights_only=True)``: a checkpoint file never runs code. A checkpoint that
fails any of these falls back to the one before it, or restarts that run, with a warning.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

import losskit
from losskit.arena.report import atomic_write, run_folder, write_report
from losskit.arena.tasks import Task, get_task

__all__ = ["CheckpointWarning", "compare", "loss_total_and_components"]

DIVERGED_SHARE = 0.2  # a run whose non-finite steps exceed this share of its steps so far is stopped
CHECKPOINT_FORMAT = 1
KEPT_CHECKPOINTS = 2  # the newest and the one before it, to fall back to
# What a resumed comparison must share with the saved one; only "epochs" may grow.
RESUME_KEYS = ("task", "losses", "seed", "lr", "optimizer", "batch_size", "world_size", "losskit_version")
# Modules the arena imports on demand, and the extra that installs them.
ARENA_EXTRA = {"rich": "arena", "matplotlib": "arena", "torchmetrics": "arena", "faster_coco_eval": "arena",
               "sklearn": "arena"}


class CheckpointWarning(UserWarning):
    """A checkpoint could not be used (truncated, altered, or not plain tensors); the run fell
    back to the checkpoint before it, or restarted."""


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
    resume: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def config(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "optimizer": self.optimizer,
                "seed": self.seed, "device": str(self.device), "world_size": self.world, "losses": list(self.specs)}

    def settings(self) -> dict[str, Any]:
        """What a resumed comparison must share with this one (:data:`RESUME_KEYS`)."""
        return {"task": self.task.name, "losses": list(self.specs), "seed": self.seed, "lr": self.lr,
                "optimizer": self.optimizer, "batch_size": self.batch_size, "world_size": self.world,
                "losskit_version": losskit.__version__}


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


def new_run(spec: str) -> dict[str, Any]:
    return {"name": spec, "spec": spec, "status": "running", "error": None, "nonfinite_steps": 0, "seconds": 0.0,
            "epochs": []}


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


# --- checkpoints -----------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Unusable(Exception):
    """Why a checkpoint file cannot be used."""


class _OtherSettings(ValueError):
    """A checkpoint written by a comparison with other settings: resuming stops, nothing trains on."""


def _read_state(path: Path, expected_sha: str) -> dict[str, Any]:
    """A checkpoint's state dicts: the file must hash to what ``checkpoint.json`` recorded, and
    hold tensors and plain containers only (``torch.load(weights_only=True)``)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise _Unusable(f"it cannot be read ({error.strerror or error})") from None
    if _sha256(data) != expected_sha:
        raise _Unusable("its SHA-256 differs from the one checkpoint.json recorded (truncated or altered)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle.UnpicklingError for objects other than tensors, RuntimeError if corrupt
        first = (str(error).strip().splitlines() or [""])[0]
        raise _Unusable("torch.load(weights_only=True) refused it: it holds more than tensors and plain containers "
                        f"({type(error).__name__}: {first[:160]})") from None
    if not isinstance(state, dict) or set(state) != {"model", "optimizer", "loss"}:
        raise _Unusable("it does not hold the model, optimizer and loss state dicts")
    return state


def _checkpoint_index(run_dir: Path, quiet: bool = False) -> dict[str, Any] | None:
    """``checkpoint.json`` of a run, or ``None`` when there is none or it is unreadable (with a warning)."""
    path = run_dir / "checkpoint.json"
    if not path.exists():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        problem = None if isinstance(index, dict) and index.get("format") == CHECKPOINT_FORMAT else (
            "it is not a checkpoint index this losskit writes")
    except (OSError, ValueError) as error:
        problem = f"it cannot be read ({error})"
    if problem is None:
        return index
    if not quiet:
        warnings.warn(f"{path} is not used: {problem}; the run restarts", CheckpointWarning, stacklevel=3)
    return None


def _restore(setup: _Setup, run_dir: Path, spec: str, model: nn.Module, optimizer: torch.optim.Optimizer,
             loss_fn: nn.Module) -> dict[str, Any] | None:
    """Load the newest usable checkpoint of this run into the model, optimizer and loss; return
    the run's history saved with it, or ``None`` (nothing usable: the run starts from epoch 0)."""
    index = _checkpoint_index(run_dir)
    if index is None:
        return None
    saved = index.get("settings") if isinstance(index.get("settings"), dict) else {}
    differ = [k for k in RESUME_KEYS if saved.get(k) != setup.settings()[k]] + (
        ["spec"] if index.get("spec") != spec else [])
    if differ:
        raise _OtherSettings(f"--resume: the checkpoint index {run_dir / 'checkpoint.json'} was written with other "
                             f"settings ({', '.join(differ)}); start a new comparison with another --out")
    initial = copy.deepcopy((model.state_dict(), optimizer.state_dict(), loss_fn.state_dict()))
    entries = index.get("checkpoints") if isinstance(index.get("checkpoints"), list) else []
    paths = [run_dir / Path(str(e.get("file", "") if isinstance(e, dict) else "")).name for e in entries]
    for position, (entry, path) in enumerate(zip(entries, paths, strict=True)):
        try:
            if not isinstance(entry, dict) or not isinstance(entry.get("run"), dict) or not isinstance(
                    entry["run"].get("epochs"), list):
                raise _Unusable("its entry in checkpoint.json is malformed")
            state = _read_state(path, str(entry.get("sha256")))
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            loss_fn.load_state_dict(state["loss"])
            return entry["run"]
        except Exception as error:  # whatever is wrong with a file, it is not used
            model.load_state_dict(initial[0])
            optimizer.load_state_dict(initial[1])
            loss_fn.load_state_dict(initial[2])
            then = (f"falling back to {paths[position + 1].name}" if position + 1 < len(paths) else
                    "the run restarts from epoch 0")
            warnings.warn(f"checkpoint {path} is not used: {error}; {then}", CheckpointWarning, stacklevel=3)
    return None


def _save_checkpoint(setup: _Setup, run_dir: Path, spec: str, run: dict[str, Any], model: nn.Module,
                     optimizer: torch.optim.Optimizer, loss_fn: nn.Module) -> None:
    """Write this epoch's state dicts, then the index that points to them and to the previous
    ones (each file atomically, the index last), then drop files the index no longer names."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "loss": loss_fn.state_dict()},
               buffer)
    data = buffer.getvalue()
    name = f"epoch-{len(run['epochs']):04d}.pt"
    atomic_write(run_dir / name, data)
    previous = (_checkpoint_index(run_dir, quiet=True) or {}).get("checkpoints", [])
    earlier = [e for e in previous if isinstance(e, dict) and isinstance(e.get("run"), dict)
               and len(e["run"].get("epochs", [])) < len(run["epochs"])]  # never a later one of an abandoned run
    entries = [{"file": name, "sha256": _sha256(data), "run": copy.deepcopy(run)}, *earlier[:KEPT_CHECKPOINTS - 1]]
    index = {"format": CHECKPOINT_FORMAT, "spec": spec, "settings": setup.settings(), "checkpoints": entries}
    atomic_write(run_dir / "checkpoint.json", json.dumps(index, indent=1, allow_nan=True).encode("utf-8"))
    kept = {e["file"] for e in entries}
    for path in run_dir.glob("epoch-*.pt"):
        if path.name not in kept:
            path.unlink(missing_ok=True)


# --- training ----------------------------------------------------------------------------------


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
    run keeps what it did); when resuming, continues from the run's last usable checkpoint."""
    spec = run["spec"]
    task, device = setup.task, setup.device
    run_dir = setup.out / "runs" / run_folder(spec)  # where the report writes the run's history too
    torch.manual_seed(setup.seed)
    model = task.make_model().to(device)
    loss_fn = loss_fn.to(device)
    net = nn.parallel.DistributedDataParallel(model) if setup.world > 1 else model
    optimizer = _make_optimizer(setup.optimizer, list(model.parameters()) + list(loss_fn.parameters()), setup.lr)
    if setup.resume:
        saved = _restore(setup, run_dir, spec, model, optimizer, loss_fn)
        if saved is not None:
            run.update(saved, status="running", error=None)
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
            _save_checkpoint(setup, run_dir, spec, run, model, optimizer, loss_fn)
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


# --- arguments ---------------------------------------------------------------------------------


def _available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: object) -> str:
    """``device`` if it exists here (``cpu``, ``cuda`` or ``cuda:<i>`` with a CUDA device, ``mps``),
    else a ValueError listing the devices that do."""
    here = _available_devices()
    if not isinstance(device, str) or device.strip() not in here:
        raise ValueError(f"device {device!r} is not available here; devices here: {', '.join(here)}")
    return device.strip()


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    return value


def _check_lr(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"lr must be a finite number greater than 0, got {value!r}")
    return float(value)


def check_out(out: str | Path) -> Path:
    """The output folder: created if missing, and refused (ValueError) when it is a file or cannot
    be written to, before anything trains."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"out {str(path)!r} is a file; --out names a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"out {str(path)!r} is not writable: {error.strerror or error}") from None
    return path


def _previous_comparison(out: Path) -> str | None:
    """What in ``out`` shows a comparison was run there (results or checkpoints), or ``None``."""
    if (out / "results.json").exists():
        return "results.json"
    runs = out / "runs"
    if runs.is_dir() and (any(runs.glob("*/checkpoint.json")) or any(runs.glob("*/*.pt"))):
        return "checkpoints under runs/"
    return None


def _load_saved(out: Path, resume: bool) -> dict[str, Any] | None:
    """The comparison saved in ``out`` (when resuming); refuses to mix a new comparison into an old one."""
    found = _previous_comparison(out)
    if not resume:
        if found is not None:
            raise ValueError(f"{out} holds a previous comparison ({found}): continue it with --resume, or choose "
                             "another --out (nothing there is read without --resume)")
        return None
    path = out / "results.json"
    if not path.exists():
        raise ValueError(f"--resume: {out} holds no comparison to resume (no results.json)")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"--resume: {path} cannot be read ({error}); start a new comparison with another "
                         "--out") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise ValueError(f"--resume: {path} is not the results of a losskit comparison")
    return saved


def _saved_settings(saved: dict[str, Any]) -> dict[str, Any]:
    config = saved["config"]
    return {"task": saved.get("task"), "losses": config.get("losses"), "seed": config.get("seed"),
            "lr": config.get("lr"), "optimizer": config.get("optimizer"), "batch_size": config.get("batch_size"),
            "world_size": config.get("world_size"), "losskit_version": saved.get("losskit_version")}


def _check_same_settings(saved: dict[str, Any], setup: _Setup) -> None:
    """``--resume`` continues the saved comparison only: the same settings, and at least as many epochs."""
    before, now = _saved_settings(saved), setup.settings()
    same = {k: (sorted(before[k]) == sorted(now[k]) if k == "losses" and isinstance(before[k], list) else
                before[k] == now[k]) for k in RESUME_KEYS}
    differ = [f"{k} {before[k]!r} -> {now[k]!r}" for k in RESUME_KEYS if not same[k]]
    if differ:
        raise ValueError(f"--resume: these settings differ from the comparison in {setup.out}: {'; '.join(differ)} "
                         "(only --epochs may be raised; start a new comparison with another --out)")
    saved_epochs = saved["config"].get("epochs")
    if isinstance(saved_epochs, int) and setup.epochs < saved_epochs:
        raise ValueError(f"--resume: --epochs {setup.epochs} is fewer than the {saved_epochs} epochs of the comparison "
                         f"in {setup.out}; --epochs may only be raised")


# --- the comparison ---------------------------------------------------------------------------


def compare(task: str | Task | None = None, losses: Sequence[str] | None = None, *, epochs: int | None = None,
            seed: int | None = None, optimizer: str | None = None, lr: float | None = None,
            batch_size: int | None = None, out: str | Path = "losskit-compare", device: str = "cpu",
            resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train one model per loss on ``task`` and report; returns the results (also ``out/results.json``).

    Args:
        task: A registered task name (``segmentation``, the default, ``classification``,
            ``regression``, ``detection``, ``rl``) or a :class:`~losskit.arena.tasks.Task` for
            your own model and data.
        losses: Loss specs (``losskit.build`` strings such as ``"0.5*dice + ce"``); the task's
            defaults when ``None``.
        epochs, lr, batch_size: Override the task's defaults.
        seed: Seeds the model initialization and the batch order (the same for every loss); 0 by default.
        optimizer: ``"adam"`` (the default) or ``"sgd"`` (Nesterov momentum 0.9).
        out: Output folder: ``results.json``, ``report.html``, and per run a CSV and its
            checkpoints. A folder that holds a previous comparison is refused unless ``resume``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:<i>"`` or ``"mps"``, one that exists here.
        resume: Continue the comparison in ``out``: finished runs are kept, unfinished ones
            continue from their last usable checkpoint. Settings left ``None`` are taken from the
            saved comparison; any that differ (task, losses, seed, lr, optimizer, batch size,
            number of processes, losskit version) are refused. ``epochs`` may be raised, and then
            finished runs train on to the new count (weight schedules follow the new count).
        progress: Show progress bars (rich).

    Returns:
        The results dict (task, config, one entry per run with its per-epoch history, the verdict).

    Raises:
        ValueError: Before anything trains: an unknown task or optimizer, a loss spec that does
            not build, ``epochs`` or ``batch_size`` below 1, ``lr`` not above 0, a device that is
            not here, an ``out`` that is a file or not writable, a previous comparison in ``out``
            without ``resume``, or settings that differ from the resumed one.
    """
    device = check_device(device)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):  # the values given, before any file
        if value is not None:
            _check_count(name, value)
    if lr is not None:
        _check_lr(lr)
    out = check_out(out)
    saved = _load_saved(out, resume)
    before = _saved_settings(saved) if saved is not None else {}
    task = task if task is not None else before.get("task") or "segmentation"
    task = get_task(task) if isinstance(task, str) else task
    specs = list(losses) if losses else list(before.get("losses") or task.default_losses)
    if len(set(specs)) != len(specs):
        raise ValueError(f"losses are listed twice: {sorted({s for s in specs if specs.count(s) > 1})}")

    def pick(value: Any, key: str, default: Any) -> Any:
        return value if value is not None else saved["config"].get(key, default) if saved is not None else default

    epochs = _check_count("epochs", pick(epochs, "epochs", task.epochs))
    batch_size = _check_count("batch_size", pick(batch_size, "batch_size", task.batch_size))
    lr = _check_lr(pick(lr, "lr", task.lr))
    seed = pick(seed, "seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be a whole number, got {seed!r}")
    optimizer = pick(optimizer, "optimizer", "adam")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose 'adam' or 'sgd'")
    try:
        built = {spec: task.make_loss(spec) for spec in specs}  # every spec must build before anything trains
    except TypeError as error:  # an option the loss does not take: a bad argument like any other
        raise ValueError(str(error)) from None
    rank, world = _init_distributed(device)
    setup = _Setup(task, specs, epochs, batch_size, lr, optimizer, seed,
                   torch.device(device if device != "cuda" or world == 1 else f"cuda:{rank}"), out, rank, world,
                   resume=saved is not None)
    if setup.batch_size % world:
        raise ValueError(f"batch_size {setup.batch_size} must divide evenly over {world} processes")
    if saved is not None:
        _check_same_settings(saved, setup)
    train, val = task.make_data(seed)
    if task.train_epoch is None and num_samples(train, task) < setup.batch_size:
        raise ValueError(f"batch_size {setup.batch_size} is larger than the {num_samples(train, task)} training "
                         f"samples of the {task.name} task")
    results = _start(setup, saved)
    _finish(setup, results)  # results.json marks the folder as this comparison's before anything trains
    bars = _progress(setup, num_samples(train, task)) if progress and setup.is_main else None
    try:
        with bars or nullcontext():
            for spec in specs:
                done = next((r for r in results["runs"] if r["spec"] == spec), None)
                if done is not None and (done["status"] == "diverged" or (
                        done["status"] == "finished" and len(done["epochs"]) >= setup.epochs)):
                    continue
                bar = bars.run(spec) if bars is not None else None
                run = new_run(spec)
                results["runs"] = [r for r in results["runs"] if r["spec"] != spec] + [run]
                try:
                    _run(setup, run, built[spec], train, val, bar)
                except KeyboardInterrupt:
                    run["status"] = "interrupted"
                    raise
                except _OtherSettings:
                    raise
                except Exception as exc:  # a failing loss is reported, the others still run
                    run.update(status="failed", error=describe_error(exc))
                _finish(setup, results)
    except KeyboardInterrupt:
        results["interrupted"] = True
        _finish(setup, results)
        raise
    return results


def _start(setup: _Setup, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The results to fill: the saved ones when resuming (runs of these specs only), else new."""
    if saved is not None:
        results = saved
        results["runs"] = [r for r in results.get("runs", []) if r.get("spec") in setup.specs]
        results.pop("interrupted", None)
        results["config"] = setup.config()
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
