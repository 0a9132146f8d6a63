"""A run's checkpoints: ``epoch-NNNN.pt`` (state dicts only) and ``checkpoint.json`` (the run's
settings and history, and the SHA-256 of the two newest checkpoint files); writing them each
epoch, and reading the newest usable one back on resume (see :mod:`losskit.arena.runner`,
"Files and trust").
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from losskit.arena.report import atomic_write

if TYPE_CHECKING:
    from losskit.arena.runner import Job

CHECKPOINT_FORMAT = 1
KEPT_CHECKPOINTS = 2  # the newest and the one before it, to fall back to
# What a run's checkpoint must share with the run that reads it.
RUN_KEYS = ("task", "task_options", "losses", "seed", "lr", "optimizer", "batch_size", "world_size",
            "losskit_version")


class CheckpointWarning(UserWarning):
    """A checkpoint could not be used (truncated, altered, or not plain tensors); the run fell
    back to the checkpoint before it, or restarted."""


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


def _restore(job: Job, model: nn.Module, optimizer: torch.optim.Optimizer,
             loss_fn: nn.Module) -> dict[str, Any] | None:
    """Load the newest usable checkpoint of this run into the model, optimizer and loss; return
    the run's history saved with it, or ``None`` (nothing usable: the run starts from epoch 0)."""
    run_dir = job.run_dir
    index = _checkpoint_index(run_dir)
    if index is None:
        return None
    saved = index.get("settings") if isinstance(index.get("settings"), dict) else {}
    expected = job.setup.run_settings(job.seed)
    differ = [k for k in RUN_KEYS if saved.get(k) != expected[k]] + (
        ["spec"] if index.get("spec") != job.spec else [])
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


def _save_checkpoint(job: Job, run: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                     loss_fn: nn.Module) -> None:
    """Write this epoch's state dicts, then the index that points to them and to the previous
    ones (each file atomically, the index last), then drop files the index no longer names."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "loss": loss_fn.state_dict()},
               buffer)
    data = buffer.getvalue()
    run_dir = job.run_dir
    name = f"epoch-{len(run['epochs']):04d}.pt"
    atomic_write(run_dir / name, data)
    previous = (_checkpoint_index(run_dir, quiet=True) or {}).get("checkpoints", [])
    earlier = [e for e in previous if isinstance(e, dict) and isinstance(e.get("run"), dict)
               and len(e["run"].get("epochs", [])) < len(run["epochs"])]  # never a later one of an abandoned run
    entries = [{"file": name, "sha256": _sha256(data), "run": copy.deepcopy(run)}, *earlier[:KEPT_CHECKPOINTS - 1]]
    index = {"format": CHECKPOINT_FORMAT, "spec": job.spec, "settings": job.setup.run_settings(job.seed),
             "checkpoints": entries}
    atomic_write(run_dir / "checkpoint.json", json.dumps(index, indent=1, allow_nan=True).encode("utf-8"))
    kept = {e["file"] for e in entries}
    for path in run_dir.glob("epoch-*.pt"):
        if path.name not in kept:
            path.unlink(missing_ok=True)
