"""Handwritten digits (scikit-learn's 8 x 8 digits, offline), an MLP, accuracy, macro F1 and calibration error."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from losskit.arena.tasks.base import Task, batched, register_task, split

# Seeds when none are given: one seed's four runs take about 2 s of CPU time.
CLASSIFICATION_SEEDS = 10


def _digits_data(seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train, val = split(len(x), 500, seed)
    return (x[train], y[train]), (x[val], y[val])


def _digits_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 10))


def _digits_metrics(model: nn.Module, val: tuple[Tensor, Tensor], device: torch.device) -> dict[str, float]:
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_calibration_error,
        multiclass_f1_score,
    )

    x, y = val
    logits = batched(model, x, device)
    probs = logits.softmax(-1)
    return {"accuracy": float(multiclass_accuracy(logits, y, num_classes=10, average="micro")),
            "macro_f1": float(multiclass_f1_score(logits, y, num_classes=10, average="macro")),
            "ece": float(multiclass_calibration_error(probs, y, num_classes=10, n_bins=10))}


register_task(Task(
    name="classification",
    description=("Handwritten digits (scikit-learn's 8 x 8 digits, 1297 training and 500 validation images), "
                 "a one-hidden-layer MLP. Accuracy and macro F1 measure the decisions, the expected "
                 "calibration error (ECE) how far the predicted probabilities are from the observed accuracy."),
    default_losses=("ce", "ce(label_smoothing=0.1)", "softmax_focal(gamma=2.0)", "poly1"),
    make_data=_digits_data,
    make_model=_digits_model,
    metrics={"accuracy": "max", "macro_f1": "max", "ece": "min"},
    primary_metric="accuracy",
    evaluate=_digits_metrics,
    epochs=10,
    batch_size=64,
    lr=3e-3,
    seeds=CLASSIFICATION_SEEDS,
))
