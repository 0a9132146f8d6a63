"""Replay the segmentation-models-pytorch (SMP 0.6.0) golden vectors in tests/golden/smp/.

The vectors were produced by ``tests/golden/generate_smp_vectors.py`` in a separate environment
(torch 2.14.1, torchvision 0.29.1, SMP 0.6.0); each file names its library, version and exact call.
They live in a subfolder because ``tests/test_golden.py`` checks the top-level folder's manifest.

ASSUMED OPTIONS (the region losses were being written when this file was; adjust here if the
final names differ). SMP's ``DiceLoss`` / ``JaccardLoss`` / ``TverskyLoss`` (``from_logits=True``)
are reproduced, following peers.md 3.7 and the segmentation module's "to reproduce" table, by::

    activation="softmax" (multiclass) | "sigmoid" (binary, multilabel),
    aggregate="batch"          # sums pooled over the batch, one value per class
    smooth_nr=0, smooth_dr=0   # SMP's smooth=0
    eps=1e-7                   # SMP's clamp of the denominator (inactive on these inputs: P > 0)
    absent="zero"              # a class with an empty target scores 0 but counts in the mean
    include_background=True    # SMP scores every channel
    alpha, beta                # same convention as SMP (alpha weighs false positives)

SMP's focal Tversky (``TverskyLoss(gamma=g)``) raises the *class mean* to ``g`` (SMP #734), which
``focal_tversky_loss`` deliberately does not reproduce; the replay uses ``tversky_loss(...) ** g``.
No case skips: a missing or renamed losskit function fails, like any other difference.

The Lovász vectors are float32 (SMP's Lovász cannot run in float64); losskit is run in float64 on
the same float32 values and compared with ``rtol=atol=2e-5``. SMP's calls map to::

    LovaszLoss("multiclass", per_image=p, ignore_index=i) -> lovasz_softmax_loss(x, t, per_image=p, ignore_index=i)
    LovaszLoss("binary", per_image=p)                     -> lovasz_hinge_loss(x, t, per_image=p)
    LovaszLoss("multilabel", per_image=p)                 -> lovasz_hinge_loss(x.reshape(N, 1, -1),
                                                                t.reshape(N, 1, -1), per_image=p)

(SMP's multiclass ``per_image=True`` averages per-image class means; the vector has every class
that occurs at all present in every image, where that equals losskit's mean over units.)

SMP's ``MCCLoss(eps=e)`` (binary, probabilities in, ``e`` added to each confusion count, one
value over the batch) is reproduced by::

    mcc_loss(p, t, activation=None, aggregate="batch", smooth_nr=0, smooth_dr=0, eps=0, smooth_counts=e)

on ordinary and degenerate inputs (an empty target predicted almost empty, a perfect hard
prediction, a full target), where MONAI's convention (losskit's default) differs: 0 for the
perfect prediction, 1 for the empty target.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import losskit

FOLDER = Path(__file__).resolve().parent / "golden" / "smp"
FILES = sorted(FOLDER.glob("smp.*.json"))
REGION = ("dice", "jaccard", "tversky", "focal_tversky")
EXPECTED_FILES = {
    *(f"smp.{loss}.{mode}" for loss in REGION for mode in ("binary", "multiclass", "multilabel")),
    *(f"smp.lovasz.{name}" for name in ("binary", "binary.per_image", "multiclass", "multiclass.ignore",
                                        "multiclass.per_image", "multilabel", "multilabel.per_image")),
    *(f"smp.mcc.{name}" for name in ("binary", "empty", "perfect", "full")),
}
DT = torch.float64

# API: the assumed losskit options that reproduce SMP's region losses (see the module docstring).
SMP_REGION_OPTIONS = {"aggregate": "batch", "smooth_nr": 0.0, "smooth_dr": 0.0, "eps": 1e-7, "absent": "zero",
                      "include_background": True}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _tensors(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = getattr(torch, case["dtype"])
    x = torch.tensor(case["inputs"]["input"], dtype=dtype).to(DT)  # the peer's exact values, in float64
    tdt = case["inputs"]["target_dtype"]
    t = torch.tensor(case["inputs"]["target"], dtype=getattr(torch, tdt))
    return x, (t.to(DT) if t.is_floating_point() else t)


def _lovasz(case: dict, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    options = case["options"]
    per_image = options.get("per_image", False)
    mode = options["mode"]
    if mode == "multiclass":
        return losskit.lovasz_softmax_loss(x, t, per_image=per_image, ignore_index=options.get("ignore_index"))
    if mode == "binary":
        return losskit.lovasz_hinge_loss(x, t, per_image=per_image)
    n = x.shape[0]
    return losskit.lovasz_hinge_loss(x.reshape(n, 1, -1), t.reshape(n, 1, -1), per_image=per_image)


def _mcc(case: dict, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return losskit.mcc_loss(x, t, activation=None, aggregate="batch", smooth_nr=0.0, smooth_dr=0.0, eps=0.0,
                            smooth_counts=case["options"]["eps"])


def _region(loss: str, case: dict, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    options = case["options"]
    activation = "softmax" if options["mode"] == "multiclass" else "sigmoid"
    kwargs = {"activation": activation, **SMP_REGION_OPTIONS}  # API
    if loss in ("tversky", "focal_tversky"):
        kwargs.update(alpha=options["alpha"], beta=options["beta"])
    if loss == "dice":
        return losskit.dice_loss(x, t, **kwargs)
    if loss == "jaccard":
        return losskit.jaccard_loss(x, t, **kwargs)
    value = losskit.tversky_loss(x, t, **kwargs)
    return value ** options["gamma"] if loss == "focal_tversky" else value


def test_manifest():
    assert {p.name.removesuffix(".json") for p in FILES} == EXPECTED_FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_provenance(path: Path):
    case = _load(path)
    src = case["source"]
    assert src["lib"] == "segmentation_models_pytorch" and src["version"] == "0.6.0"
    assert src["torch"] == "2.14.1" and src["call"].startswith("segmentation_models_pytorch.losses.")
    if path.stem.split(".")[1] == "mcc":  # SMP's MCCLoss takes probabilities
        assert case["inputs"]["input_kind"] == "probabilities"
    else:
        assert case["options"]["from_logits"] is True
    value = torch.tensor(case["expected"]["value"])
    grad = torch.tensor(case["expected"]["grad"])
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert grad.shape == torch.tensor(case["inputs"]["input"]).shape


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_replay(path: Path):
    case = _load(path)
    loss = path.stem.split(".")[1]
    x, t = _tensors(case)
    x.requires_grad_(True)
    if loss == "lovasz":
        out = _lovasz(case, x, t)
        tol = 2e-5
    elif loss == "mcc":
        out = _mcc(case, x, t)
        tol = 1e-9
    else:
        out = _region(loss, case, x, t)
        tol = 1e-9
    expected = torch.tensor(case["expected"]["value"], dtype=DT)
    torch.testing.assert_close(out.detach(), expected, rtol=tol, atol=tol)
    (grad,) = torch.autograd.grad(out, x)
    torch.testing.assert_close(grad, torch.tensor(case["expected"]["grad"], dtype=DT), rtol=tol, atol=tol)


def test_smp_mcc_differs_from_the_monai_convention_on_degenerate_inputs():
    # The rows' reason: without smooth_counts (MONAI's MCCLoss, losskit's default) a perfect hard
    # prediction is an exact 0 and an empty target gives 1 - 0 / sqrt(...) = 1.
    perfect, empty = (_load(FOLDER / f"smp.mcc.{name}.json") for name in ("perfect", "empty"))
    x, t = _tensors(perfect)
    assert losskit.mcc_loss(x, t, activation=None, aggregate="batch").item() == 0.0
    assert perfect["expected"]["value"] > 0
    x, t = _tensors(empty)
    assert losskit.mcc_loss(x, t, activation=None, aggregate="batch").item() == 1.0
    assert empty["expected"]["value"] < 1
