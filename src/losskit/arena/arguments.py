"""The arguments of :func:`losskit.arena.runner.compare`, checked before anything trains (device,
output folder, seeds, counts, the parallel settings), and on ``--resume`` the comparison saved in
the output folder, which must have the same settings (:data:`RESUME_KEYS`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from losskit.arena.runner import _Setup

# What a resumed comparison must share with the saved one; only "epochs" may grow.
RESUME_KEYS = ("task", "task_options", "losses", "seeds", "lr", "optimizer", "batch_size", "world_size",
               "losskit_version")
MAX_SEEDS = 1000
EXECUTORS = ("local", "ray")


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


def parse_seeds(value: object) -> list[int]:
    """The seeds of a comparison: a count ``N`` (seeds 0 to N-1), a range ``"A-B"`` (both included), a
    comma-separated list, or a sequence of whole numbers; each 0 or more, none twice.

    Examples:
        >>> parse_seeds(3), parse_seeds("2-4"), parse_seeds("7,1"), parse_seeds([5])
        ([0, 1, 2], [2, 3, 4], [7, 1], [5])
    """
    def whole(item: object) -> int:
        if isinstance(item, str) and item.strip().isdigit():
            return int(item)
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ValueError(f"seeds must be whole numbers of 0 or more, got {item!r}")
        return item

    if isinstance(value, str):
        text = value.strip()
        if "-" in text[1:]:
            low, _, high = text.partition("-")
            seeds = list(range(whole(low), whole(high) + 1))
            if not seeds:
                raise ValueError(f"seeds {text!r}: the range A-B needs A <= B")
        elif "," in text:
            seeds = [whole(part) for part in text.split(",")]
        else:
            seeds = list(range(_check_count("seeds", whole(text))))
    elif isinstance(value, int) and not isinstance(value, bool):
        seeds = list(range(_check_count("seeds", value)))
    elif isinstance(value, Sequence) and value:
        seeds = [whole(item) for item in value]
    else:
        raise ValueError(f"seeds must be a count, a range 'A-B', or a list of whole numbers, got {value!r}")
    if len(seeds) > MAX_SEEDS:
        raise ValueError(f"seeds: {len(seeds)} seeds is more than {MAX_SEEDS}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds are listed twice: {sorted({s for s in seeds if seeds.count(s) > 1})}")
    return seeds


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check_parallel(jobs: object, threads: object, executor: object, address: object) -> None:
    if jobs is not None:
        _check_count("jobs", jobs)
    if threads is not None:
        _check_count("threads", threads)
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    if address is not None and executor != "ray":
        raise ValueError("address is the Ray cluster's, for executor 'ray' only")


def _previous_comparison(out: Path) -> str | None:
    """What in ``out`` shows a comparison was run there (results or checkpoints), or ``None``."""
    if (out / "results.json").exists():
        return "results.json"
    runs = out / "runs"
    if runs.is_dir() and (any(runs.rglob("checkpoint.json")) or any(runs.rglob("*.pt"))):
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


def _saved_seeds(config: dict[str, Any]) -> Any:
    return config.get("seeds") if "seeds" in config else [config["seed"]] if "seed" in config else None


def _saved_settings(saved: dict[str, Any]) -> dict[str, Any]:
    config = saved["config"]
    return {"task": saved.get("task"), "task_options": config.get("task_options", {}),
            "losses": config.get("losses"), "seeds": _saved_seeds(config), "lr": config.get("lr"),
            "optimizer": config.get("optimizer"), "batch_size": config.get("batch_size"),
            "world_size": config.get("world_size"), "losskit_version": saved.get("losskit_version")}


def _short_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + "..." + text[-12:]


def _differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key old -> new`` for each setting that differs (the order of losses and seeds may change)."""
    differ = []
    for key in RESUME_KEYS:
        a, b = before.get(key), now[key]
        if key == "task_options" and isinstance(a, dict):
            differ += [f"{k} {_short_value(a.get(k))} -> {_short_value(b.get(k))}" for k in sorted({*a, *b})
                       if a.get(k) != b.get(k)]
        elif key in ("losses", "seeds") and isinstance(a, list) and sorted(map(str, a)) == sorted(map(str, b)):
            continue
        elif a != b:
            differ.append(f"{key} {_short_value(a)} -> {_short_value(b)}")
    return differ


def _check_same_settings(saved: dict[str, Any], setup: _Setup) -> None:
    """``--resume`` continues the saved comparison only: the same settings, and at least as many epochs."""
    differ = _differences(_saved_settings(saved), setup.settings())
    if differ:
        raise ValueError(f"--resume: these settings differ from the comparison in {setup.out}: {'; '.join(differ)} "
                         "(only --epochs may be raised; start a new comparison with another --out)")
    saved_epochs = saved["config"].get("epochs")
    if isinstance(saved_epochs, int) and setup.epochs < saved_epochs:
        raise ValueError(f"--resume: --epochs {setup.epochs} is fewer than the {saved_epochs} epochs of the comparison "
                         f"in {setup.out}; --epochs may only be raised")
