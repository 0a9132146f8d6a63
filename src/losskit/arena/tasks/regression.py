"""scikit-learn's diabetes data (offline) with gross outliers in the training targets, an MLP, MAE, RMSE and R^2."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from losskit.arena.tasks.base import Task, batched, register_task, split

# Seeds when none are given: one seed's five runs take about 4 s of CPU time.
REGRESSION_SEEDS = 10


def _diabetes_data(seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    train, val = split(len(x), 100, seed)
    y_train = y[train].clone()
    # 10% of the training targets become gross outliers; the validation targets stay clean.
    gen = torch.Generator().manual_seed(seed + 1)
    hit = torch.randperm(len(train), generator=gen)[: len(train) // 10]
    y_train[hit] += 6.0 + 4.0 * torch.rand(len(hit), generator=gen)
    return (x[train], y_train[:, None]), (x[val], y[val][:, None])


def _diabetes_model() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 32), nn.SiLU(), nn.Linear(32, 1))


def _diabetes_metrics(model: nn.Module, val: tuple[Tensor, Tensor], device: torch.device) -> dict[str, float]:
    from torchmetrics.functional import mean_absolute_error, mean_squared_error, r2_score

    x, y = val
    predicted = batched(model, x, device)
    return {"mae": float(mean_absolute_error(predicted, y)),
            "rmse": float(mean_squared_error(predicted, y, squared=False)),
            "r2": float(r2_score(predicted.flatten(), y.flatten()))}


register_task(Task(
    name="regression",
    description=("scikit-learn's diabetes data (342 training and 100 validation patients, standardized), "
                 "with 10% of the training targets turned into gross outliers (+6 to +10 standard "
                 "deviations); the validation targets are clean. A one-hidden-layer MLP."),
    default_losses=("mse", "huber", "l1", "log_cosh", "quantile"),
    make_data=_diabetes_data,
    make_model=_diabetes_model,
    metrics={"mae": "min", "rmse": "min", "r2": "max"},
    primary_metric="mae",
    evaluate=_diabetes_metrics,
    epochs=30,
    batch_size=32,
    lr=3e-3,
    seeds=REGRESSION_SEEDS,
))
