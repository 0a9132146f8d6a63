"""What a task is (:class:`Task`), the registry of tasks, and helpers the tasks share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import losskit
from losskit._core.checks import did_you_mean

__all__ = ["TASKS", "Task", "build_loss", "get_task", "register_task"]


def build_loss(spec: str) -> nn.Module:
    """The default way a task turns a spec into a loss: ``losskit.build(spec)``."""
    return losskit.build(spec)


@dataclass
class Task:
    """What a comparison trains and measures.

    A task is sent to worker processes (``jobs > 1``) by pickling, so its functions should be
    defined at module level (or be :func:`functools.partial` objects of such functions); Ray
    tasks use cloudpickle, which also takes lambdas and closures.

    Attributes:
        name: The task's name on the command line.
        description: One paragraph for the report.
        default_losses: Loss specs compared when none are given; the first is the baseline the
            others are compared with.
        make_data: ``seed -> (train, val)``, each a tuple of tensors indexed by sample (or a
            list of samples with ``collate``). The same seed must give the same data.
        make_model: A fresh model (the caller seeds the RNG first).
        metrics: Validation metric name -> ``"max"`` or ``"min"`` (which way is better).
        primary_metric: The metric the report ranks, correlates and draws the verdict by.
        evaluate: ``(model, val, device) -> {metric: value}``.
        make_loss: ``spec -> loss module``; by default ``losskit.build(spec)``.
        collate: ``samples -> (inputs, targets)`` for data that are not plain tensors.
        verdict: ``results -> sentence or None``: what the comparison says about a question the
            task asks, beyond the paired comparison of the primary metric that every report has.
        train_epoch: For tasks that make their own data while training (reinforcement learning):
            ``(model, loss, epoch, seed, device)`` -> an iterator of loss results, one per
            optimizer step; the runner steps the optimizer after each. ``None`` for data sets.
        steps_per_epoch: Optimizer steps per epoch of ``train_epoch`` (for the progress bar).
        epochs, batch_size, lr: Defaults of a run.
        seeds: How many seeds (0, 1, ...) a comparison runs when none are given.
        options: The settings that made this task from the user's data (file, target column,
            kind, the data's SHA-256); JSON values, saved with the results and compared on resume.
        configure: For tasks that need the user's data (``tabular``, ``segmentation-folder``):
            ``(**options) -> Task``, the task for those options. ``None`` for the others.
    """

    name: str
    description: str
    default_losses: tuple[str, ...]
    make_data: Callable[[int], tuple[Any, Any]]
    make_model: Callable[[], nn.Module]
    metrics: dict[str, str]
    primary_metric: str
    evaluate: Callable[[nn.Module, Any, torch.device], dict[str, float]]
    make_loss: Callable[[str], nn.Module] = build_loss
    collate: Callable[[Sequence[Any]], tuple[Any, Any]] | None = None
    verdict: Callable[[dict], str | None] | None = None
    train_epoch: Callable[..., Any] | None = None
    steps_per_epoch: int | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-3
    seeds: int = 3
    options: dict[str, Any] = field(default_factory=dict)
    configure: Callable[..., Task] | None = None


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(name: str, **options: Any) -> Task:
    """The registered task ``name``; for a task that reads your data (``tabular``,
    ``segmentation-folder``), the task made from ``options`` (``data=``, ``target=``, ``kind=``).

    Raises:
        ValueError: An unknown name (with the closest), options for a task that takes none, or
            options (and data) the task refuses.
    """
    if name not in TASKS:
        hint = did_you_mean(name, TASKS, 1) or f"; tasks: {', '.join(sorted(TASKS))}"
        raise ValueError(f"unknown task {name!r}{hint}")
    task = TASKS[name]
    given = {k: v for k, v in options.items() if v is not None}
    if task.configure is not None:
        return task.configure(**given)
    if given:
        takes = " and ".join(sorted(n for n, t in TASKS.items() if t.configure is not None))
        raise ValueError(f"{', '.join(sorted(given))}: options of the {takes} tasks only; the {name} task brings its "
                         "own data")
    return task


def needs_data(name: str, usage: str) -> Callable[..., Any]:
    """A stand-in for the functions of a task that has no data yet: it says how to give some."""
    return _NeedsData(name, usage)


@dataclass(frozen=True)
class _NeedsData:
    name: str
    usage: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(f"the {self.name} task reads your data: {self.usage}")


def batched(model: nn.Module, inputs: Tensor, device: torch.device, size: int = 256) -> Tensor:
    """``model(inputs)`` in batches of ``size``, on ``device``, gathered on the CPU."""
    return torch.cat([model(inputs[i:i + size].to(device)).cpu() for i in range(0, len(inputs), size)])


def split(n: int, val: int, seed: int) -> tuple[Tensor, Tensor]:
    """Training and validation indices: a permutation of ``range(n)`` drawn from ``seed``, ``val`` held out."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val:], order[:val]
