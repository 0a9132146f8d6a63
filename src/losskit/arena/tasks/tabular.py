"""Your table: a CSV or Parquet file, one target column, an MLP; classification or regression.

``losskit compare --task tabular --data FILE.csv --target COLUMN [--kind classification|regression]``.

**Reading.** pandas reads the file (``.csv``, ``.tsv``, ``.parquet`` / ``.pq`` with pyarrow).
Every column other than the target is a feature: numeric and boolean columns are standardized
with the training split's mean and standard deviation (a missing value becomes that mean, 0 after
standardizing); any other column is categorical and one-hot encoded over the categories seen in
the file (a missing value is a category of its own). A categorical column with more than
:data:`MAX_CATEGORIES` distinct values is refused: one-hot encoding an identifier helps no model.

**Kind.** Without ``kind``, a target that is not numeric, is boolean, or holds whole numbers with at
most :data:`MAX_CLASSES` distinct values is a classification target; any other numeric target is
a regression target. Classification maps the target's distinct values, sorted, to classes
0..K-1; regression standardizes the target for training (losses such as Huber then see residuals
in standard deviations) and reports the metrics in the target's own units.

**Split.** Each seed draws its own training / validation split (a fifth of the rows, at least
one, held out), the same for every loss of that seed; the seed also sets the initial weights
and the batch order.

**Model and metrics.** Two hidden layers of 64 units with SiLU. Classification: accuracy, macro
F1 and the expected calibration error (10 bins); regression: MAE, RMSE and R^2.

Every problem with the file is a one-line ``ValueError`` before anything trains: a file that
cannot be read, no rows, a missing column (with the columns there are), a target with missing
values, a non-numeric target for regression, a target with one class.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from losskit._core.checks import did_you_mean
from losskit.arena.tasks.base import Task, batched, needs_data, register_task

__all__ = ["MAX_CATEGORIES", "MAX_CLASSES", "Table", "read_table", "tabular_task"]

MAX_CLASSES = 32  # an integer target with at most this many distinct values is taken as classes
MAX_CATEGORIES = 100  # a text column with more distinct values is refused rather than one-hot encoded
VAL_FRACTION = 0.2
KINDS = ("classification", "regression")
USAGE = "--data FILE.csv|FILE.parquet --target COLUMN [--kind classification|regression]"


@dataclass
class Table:
    """A table made ready for the MLP: raw features (numeric columns first, then one-hot columns),
    the target, and what the columns were."""

    features: Tensor  # (rows, numeric + one-hot columns), float32; NaN where a numeric value is missing
    numeric: int  # how many of the feature columns are numeric (standardized per split)
    target: Tensor  # class indices (long) or values (float32)
    kind: str
    classes: list[str]  # the class of each index (classification)
    columns: list[str]  # the feature columns of the file
    encoded: list[str]  # the name of each feature column after one-hot encoding


def _read_frame(path: Path):
    import pandas as pd

    suffix = path.suffix.lower()
    if not path.is_file():
        raise ValueError(f"data {str(path)!r} is not a file")
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except (ValueError, OSError, UnicodeDecodeError) as error:  # pandas' and pyarrow's parse errors are ValueErrors
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"data {path.name!r} cannot be read as {suffix[1:]}: {first[:200]}") from None
    raise ValueError(f"data {path.name!r}: expected a .csv, .tsv or .parquet file")


def _is_numeric(series) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _infer_kind(target) -> str:
    import pandas as pd

    if not _is_numeric(target) or pd.api.types.is_bool_dtype(target):
        return "classification"
    values = target.to_numpy(dtype="float64")
    whole = bool((values == values.round()).all())
    return "classification" if whole and target.nunique() <= MAX_CLASSES else "regression"


def read_table(path: str | Path, target: str, kind: str | None = None) -> Table:
    """Read ``path`` and prepare it for the MLP; every problem is a one-line ValueError naming it."""
    import pandas as pd

    path = Path(path)
    frame = _read_frame(path)
    if frame.shape[0] == 0:
        raise ValueError(f"data {path.name!r} has no rows")
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if target not in columns:
        same_letters = [c for c in columns if c.lower() == target.lower()]
        hint = f"; did you mean {same_letters[0]!r}?" if same_letters else did_you_mean(target, columns, 1)
        shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
        raise ValueError(f"target column {target!r} is not in {path.name}{hint} (columns: {shown})")
    if frame.shape[0] < 2:
        raise ValueError(f"data {path.name!r} has {frame.shape[0]} row; a training and a validation split need 2")
    y = frame[target]
    missing = int(y.isna().sum())
    if missing:
        raise ValueError(f"target column {target!r} has {missing} missing value(s); drop or fill those rows")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be 'classification' or 'regression', got {kind!r}")
    kind = kind or _infer_kind(y)
    if kind == "regression" and not _is_numeric(y):
        example = next(iter(v for v in y if not isinstance(v, (int, float))), y.iloc[0])
        raise ValueError(f"target column {target!r} is not numeric (dtype {y.dtype}, e.g. {str(example)[:40]!r}); "
                         "regression needs numbers (or use --kind classification)")
    if kind == "regression":
        target_values = torch.tensor(y.to_numpy(dtype="float64"), dtype=torch.float32)
        if not torch.isfinite(target_values).all():
            raise ValueError(f"target column {target!r} holds infinite values")
        classes: list[str] = []
    else:
        codes, uniques = pd.factorize(y, sort=True)
        classes = [str(u) for u in uniques]
        if len(classes) < 2:
            raise ValueError(f"target column {target!r} holds one class only ({classes[0]!r}): nothing to classify")
        target_values = torch.tensor(codes, dtype=torch.long)
    features = [c for c in columns if c != target]
    if not features:
        raise ValueError(f"data {path.name!r} has no column besides the target {target!r}")
    numeric = [c for c in features if _is_numeric(frame[c]) or pd.api.types.is_bool_dtype(frame[c])]
    categorical = [c for c in features if c not in numeric]
    for column in categorical:
        count = frame[column].nunique(dropna=True)
        if count > MAX_CATEGORIES:
            raise ValueError(f"column {column!r} holds {count} distinct text values (more than {MAX_CATEGORIES}); "
                             "drop it or encode it as numbers")
    numbers = frame[numeric].astype("float64").to_numpy() if numeric else None
    if numbers is not None and not (abs(numbers[~pd.isna(numbers)]) < math.inf).all():
        raise ValueError(f"data {path.name!r} holds infinite values in a numeric column")
    onehot = pd.get_dummies(frame[categorical].astype("string"), dummy_na=True, dtype="float32",
                            prefix_sep="=") if categorical else None
    if onehot is not None:  # a missing-value column that is never used adds nothing
        onehot = onehot.loc[:, onehot.any(axis=0)]
    parts = [torch.tensor(numbers, dtype=torch.float32)] if numbers is not None else []
    parts += [torch.tensor(onehot.to_numpy(), dtype=torch.float32)] if onehot is not None else []
    encoded = numeric + ([str(c) for c in onehot.columns] if onehot is not None else [])
    return Table(torch.cat(parts, 1), len(numeric), target_values, kind, classes, features, encoded)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tabular_data(table: Table, seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """This seed's split, standardized with the training rows' statistics."""
    n = len(table.target)
    n_val = max(1, round(VAL_FRACTION * n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train, val = order[n_val:], order[:n_val]
    x = table.features.clone()
    numeric = x[:, :table.numeric]
    seen = ~numeric[train].isnan()
    count = seen.sum(0).clamp(min=1)
    mean = torch.where(seen, numeric[train], 0.0).sum(0) / count
    var = torch.where(seen, (numeric[train] - mean) ** 2, 0.0).sum(0) / count
    std = var.sqrt().where(var > 0, torch.ones_like(var))
    x[:, :table.numeric] = ((numeric - mean) / std).nan_to_num(nan=0.0)  # a missing value: the training mean
    y = table.target
    if table.kind == "regression":
        y = y[:, None]
    return (x[train], y[train]), (x[val], y[val])


class _MLP(nn.Sequential):
    def __init__(self, inputs: int, outputs: int, width: int = 64) -> None:
        super().__init__(nn.Linear(inputs, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                         nn.Linear(width, outputs))


def _classification_metrics(classes: int, model: nn.Module, val: tuple[Tensor, Tensor],
                            device: torch.device) -> dict[str, float]:
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_calibration_error,
        multiclass_f1_score,
    )

    x, y = val
    logits = batched(model, x, device)
    return {"accuracy": float(multiclass_accuracy(logits, y, num_classes=classes, average="micro")),
            "macro_f1": float(multiclass_f1_score(logits, y, num_classes=classes, average="macro")),
            "ece": float(multiclass_calibration_error(logits.softmax(-1), y, num_classes=classes, n_bins=10))}


def _regression_metrics(mean: float, std: float, model: nn.Module, val: tuple[Tensor, Tensor],
                        device: torch.device) -> dict[str, float]:
    x, y = val
    predicted = batched(model, x, device).double() * std + mean
    truth = y.double() * std + mean
    error = predicted - truth
    total = ((truth - truth.mean()) ** 2).sum()
    r2 = 1 - (error**2).sum() / total if total > 0 else torch.tensor(math.nan)
    return {"mae": float(error.abs().mean()), "rmse": float(error.pow(2).mean().sqrt()), "r2": float(r2)}


def _scaled_target(table: Table) -> tuple[Table, float, float]:
    """The table with its regression target standardized over all rows (the scale of the residuals
    the losses see; the metrics are reported in the target's own units)."""
    y = table.target.double()
    mean, std = float(y.mean()), float(y.std()) if len(y) > 1 else 1.0
    std = std if std > 0 and math.isfinite(std) else 1.0
    scaled = Table(table.features, table.numeric, ((y - mean) / std).float(), table.kind, table.classes,
                   table.columns, table.encoded)
    return scaled, mean, std


def _mlp(inputs: int, outputs: int) -> nn.Module:
    return _MLP(inputs, outputs)


def tabular_task(data: str | Path | None = None, target: str | None = None, kind: str | None = None) -> Task:
    """The tabular task for the file ``data`` and its column ``target`` (see the module docstring).

    Raises:
        ValueError: ``data`` or ``target`` missing, or any problem with the file (one line).
    """
    if data is None or target is None:
        raise ValueError(f"the tabular task needs {'--data' if data is None else '--target'}: {USAGE}")
    path = Path(data).expanduser().resolve()
    table = read_table(path, str(target), kind)
    rows, width = table.features.shape
    n_train = rows - max(1, round(VAL_FRACTION * rows))
    common = {"data": str(path), "target": str(target), "kind": table.kind, "data_sha256": _file_sha256(path)}
    described = (f"{path.name}: {rows} rows, {len(table.columns)} feature columns ({table.numeric} numeric, "
                 f"{width - table.numeric} one-hot), target {target!r}")
    if table.kind == "classification":
        shown = ", ".join(table.classes[:10]) + (", ..." if len(table.classes) > 10 else "")
        return Task(
            name="tabular",
            description=(f"{described}, classification into {len(table.classes)} classes ({shown}). Each seed "
                         f"holds out its own fifth of the rows for validation. An MLP with two hidden layers "
                         "of 64 units; accuracy, macro F1 and expected calibration error."),
            default_losses=("ce", "ce(label_smoothing=0.1)", "softmax_focal(gamma=2.0)", "poly1"),
            make_data=functools.partial(_tabular_data, table),
            make_model=functools.partial(_mlp, width, len(table.classes)),
            metrics={"accuracy": "max", "macro_f1": "max", "ece": "min"},
            primary_metric="accuracy",
            evaluate=functools.partial(_classification_metrics, len(table.classes)),
            epochs=20, batch_size=min(64, n_train), lr=3e-3, seeds=5, options=common)
    scaled, mean, std = _scaled_target(table)
    return Task(
        name="tabular",
        description=(f"{described}, regression (the target is standardized for training: mean {mean:.4g}, "
                     f"standard deviation {std:.4g}; the metrics are in its own units). Each seed holds out its "
                     "own fifth of the rows for validation. An MLP with two hidden layers of 64 units; MAE, "
                     "RMSE and R^2."),
        default_losses=("mse", "huber", "l1", "log_cosh"),
        make_data=functools.partial(_tabular_data, scaled),
        make_model=functools.partial(_mlp, width, 1),
        metrics={"mae": "min", "rmse": "min", "r2": "max"},
        primary_metric="mae",
        evaluate=functools.partial(_regression_metrics, mean, std),
        epochs=20, batch_size=min(64, n_train), lr=3e-3, seeds=5, options=common)


_placeholder = needs_data("tabular", USAGE)
register_task(Task(
    name="tabular",
    description="Your table (CSV or Parquet): an MLP on its columns, classification or regression of one column.",
    default_losses=(),
    make_data=_placeholder,
    make_model=_placeholder,
    metrics={},
    primary_metric="",
    evaluate=_placeholder,
    configure=tabular_task,
))
