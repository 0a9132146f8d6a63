"""Generate golden vectors for the region and Lovász losses from segmentation-models-pytorch (SMP).

Run ONLY in the separate peer environment (SMP needs torchvision, see tests/golden/README.md)::

    /tmp/peer-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 segmentation-models-pytorch==0.6.0
    /tmp/peer-venv/bin/python tests/golden/generate_smp_vectors.py      # from the repository root

It writes ``tests/golden/smp/smp.<loss>.<mode>.json``: a subfolder, because ``tests/test_golden.py``
checks that the top-level ``*.json`` files are exactly the box generator's output. Each file holds
``source`` (lib, version, torch, the exact call), ``dtype``, ``inputs`` (input logits, target and
its dtype), ``options`` (the SMP constructor arguments) and ``expected`` (the loss value and the
gradient of the loss with respect to the logits). ``tests/test_golden_smp.py`` replays them.
SMP's ``MCCLoss`` (binary only) takes probabilities, not logits: its files hold probabilities as
the input (``"inputs": {"input_kind": "probabilities"}``) and the gradient with respect to them, on ordinary
and on degenerate inputs (an empty target predicted empty, a perfect hard prediction, a full
target), where the ``eps`` it adds to each confusion count decides the value.

Inputs come from Python's ``random.Random`` with fixed seeds, rounded to 3 decimals, so reruns are
byte-identical. Everything runs in float64 on the CPU, except SMP's Lovász loss: its Jaccard
weights are computed with ``.float()`` and ``torch.dot`` refuses float64 errors against float32
weights, so the Lovász files are made in float32 (``"dtype": "float32"``).

Nothing at module level imports a peer: pytest's ``--doctest-modules`` imports this file.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "smp"
N, C, H, W = 2, 4, 4, 5
IGNORE = 255


def _logits(rng: random.Random, shape: tuple[int, ...]) -> list:
    if len(shape) == 1:
        return [round(rng.gauss(0.0, 2.0), 3) for _ in range(shape[0])]
    return [_logits(rng, shape[1:]) for _ in range(shape[0])]


def _multiclass_target(rng: random.Random, *, absent: int | None, ignore: float, all_present: bool) -> list:
    """(N, H, W) class indices; class ``absent`` never occurs; optional ignored pixels."""
    classes = [c for c in range(C) if c != absent]
    target = [[[rng.choice(classes) for _ in range(W)] for _ in range(H)] for _ in range(N)]
    for n in range(N):
        if all_present:  # every kept class in every image (first row), never ignored
            for i, c in enumerate(classes):
                target[n][0][i] = c
        for y in range(1 if all_present else 0, H):
            for x in range(W):
                if rng.random() < ignore:
                    target[n][y][x] = IGNORE
    return target


def _binary_target(rng: random.Random, channels: int, *, empty_channel: int | None) -> list:
    return [[[[0.0 if c == empty_channel else float(rng.random() < 0.4) for _ in range(W)] for _ in range(H)]
              for c in range(channels)] for _ in range(N)]


def main() -> int:
    import segmentation_models_pytorch as smp
    import torch
    from segmentation_models_pytorch import losses

    OUT.mkdir(exist_ok=True)

    def emit(name: str, cls: str, options: dict, logits: list, target: list, target_dtype: str, dtype: str,
             input_kind: str = "logits") -> None:
        torch_dtype = getattr(torch, dtype)
        x = torch.tensor(logits, dtype=torch_dtype, requires_grad=True)
        t = torch.tensor(target, dtype=getattr(torch, target_dtype) if target_dtype != "float" else torch_dtype)
        loss_fn = getattr(losses, cls)(**options)
        value = loss_fn(x, t)
        (grad,) = torch.autograd.grad(value, x)
        args = ", ".join(f"{k}={v!r}" for k, v in options.items())
        inputs = {"input": logits, "target": target, "target_dtype": dtype if target_dtype == "float" else target_dtype}
        if input_kind != "logits":
            inputs["input_kind"] = input_kind
        record = {
            "source": {"lib": "segmentation_models_pytorch", "version": smp.__version__,
                       "torch": torch.__version__.split("+")[0], "torch_build": torch.__version__,
                       "call": f"segmentation_models_pytorch.losses.{cls}({args})(input, target)"},
            "dtype": dtype,
            "options": options,
            "inputs": inputs,
            "expected": {"value": value.item(), "grad": grad.tolist()},
        }
        path = OUT / f"smp.{name}.json"
        path.write_text(json.dumps(record, indent=None, separators=(",", ":")) + "\n")
        print(f"{path.name}: {value.item():.6f}")

    def inputs(seed: int, mode: str, **kw):
        rng = random.Random(seed)
        if mode == "binary":
            return _logits(rng, (N, 1, H, W)), _binary_target(rng, 1, empty_channel=None), "float"
        if mode == "multilabel":
            return _logits(rng, (N, C, H, W)), _binary_target(rng, C, empty_channel=2), "float"
        target = _multiclass_target(rng, absent=kw.get("absent", 2), ignore=kw.get("ignore", 0.0),
                                    all_present=kw.get("all_present", False))
        return _logits(rng, (N, C, H, W)), target, "int64"

    region = {
        "dice": ("DiceLoss", {}),
        "jaccard": ("JaccardLoss", {}),
        "tversky": ("TverskyLoss", {"alpha": 0.3, "beta": 0.7}),
        "focal_tversky": ("TverskyLoss", {"alpha": 0.3, "beta": 0.7, "gamma": 2.0}),
    }
    for seed, (name, (cls, extra)) in enumerate(region.items()):
        for offset, mode in enumerate(("binary", "multiclass", "multilabel")):
            logits, target, tdt = inputs(100 + 10 * seed + offset, mode)
            emit(f"{name}.{mode}", cls, {"mode": mode, "from_logits": True, **extra}, logits, target, tdt, "float64")

    lovasz = [
        ("binary", "binary", {}, {}),
        ("binary.per_image", "binary", {"per_image": True}, {}),
        ("multiclass", "multiclass", {}, {}),
        ("multiclass.ignore", "multiclass", {"ignore_index": IGNORE}, {"ignore": 0.25}),
        # Every kept class in every image: SMP's mean of per-image class means equals losskit's unit mean.
        ("multiclass.per_image", "multiclass", {"per_image": True}, {"all_present": True}),
        ("multilabel", "multilabel", {}, {}),
        ("multilabel.per_image", "multilabel", {"per_image": True}, {}),
    ]
    for offset, (name, mode, extra, kw) in enumerate(lovasz):
        logits, target, tdt = inputs(200 + offset, mode, **kw)
        emit(f"lovasz.{name}", "LovaszLoss", {"mode": mode, "from_logits": True, **extra}, logits, target, tdt,
             "float32")

    for name, probabilities, target in _mcc_cases():
        emit(f"mcc.{name}", "MCCLoss", {"eps": 1e-5}, probabilities, target, "float", "float64",
             input_kind="probabilities")
    return 0


def _mcc_cases() -> list[tuple[str, list, list]]:
    """(name, probabilities (N, 1, H, W), binary target (N, 1, H, W)) for SMP's MCCLoss."""
    rng = random.Random(300)

    def grid(value) -> list:
        return [[[[value(n, y, x) for x in range(W)] for y in range(H)]] for n in range(N)]

    target = grid(lambda n, y, x: float(rng.random() < 0.4))
    typical = grid(lambda n, y, x: round(rng.uniform(0.02, 0.98), 3))
    near_zero = grid(lambda n, y, x: round(rng.uniform(0.0, 0.05), 3))
    near_one = grid(lambda n, y, x: round(rng.uniform(0.95, 1.0), 3))
    return [
        ("binary", typical, target),
        ("empty", near_zero, grid(lambda n, y, x: 0.0)),  # no foreground, predicted (almost) none
        ("perfect", target, target),  # a hard prediction equal to the target
        ("full", near_one, grid(lambda n, y, x: 1.0)),  # foreground everywhere
    ]


if __name__ == "__main__":
    sys.exit(main())
