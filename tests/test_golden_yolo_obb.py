"""Replay the Ultralytics 8.4.190 oriented-box (OBB) golden vectors in tests/golden/yolo_obb/ (no peer installed).

``tests/golden/generate_yolo_obb_vectors.py`` ran ``ultralytics.utils.loss.v8OBBLoss`` (DFL head, and
YOLO26's ``reg_max=1`` head with its L1 term and raw angles) and ``E2ELoss(model, v8OBBLoss)`` on fixed
cases with torch 2.14.1 on the CPU, in float32, and stored the maps, the targets, the loss items, the
returned total, the assigner's outputs and the gradient of the total with respect to every map.

Each case is replayed through ``losskit.detection.YOLOOBBLoss`` twice: with ``dense_topk=True``
(Ultralytics' top-k over each object's dense row of anchors) and with the defaults. ProbIoU is
positive for every candidate, so a metric-0 top-k pick never lies inside its object and both rules
give the same assignment here (the generator's ``zero_score_fg`` is 0 in every case; checked).

Tolerances (float32, as Ultralytics ran): total and components ``rtol=1e-5`` (the parity target);
gradients ``rtol=1e-4, atol=1e-6`` of entries up to ~1 (sums in another order, and losskit's ProbIoU
is computed by a different, cancellation-free formula); foreground mask, labels and gt rows exact;
target scores ``rtol=5e-5``; target boxes ``atol=1e-4`` px (see the constants for why).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from losskit.detection import YOLOOBBLoss

FOLDER = Path(__file__).resolve().parent / "golden" / "yolo_obb"
FILES = sorted(FOLDER.glob("*.pt"))
EXPECTED_CASES = {"obb_v8_typical", "obb_v8_empty", "obb_v8_no_objects", "obb_v8_tiny", "obb_v8_crowded", "obb26_l1",
                  "obb26_e2e", "obb26_e2e_crowded"}
MODES = {"ultralytics": {"dense_topk": True}, "default": {}}
CASE_MODES = [pytest.param(p, m, id=f"{p.stem}-{m}") for p in FILES for m in MODES]
TOL_LOSS = {"rtol": 1e-5, "atol": 1e-7}
TOL_GRAD = {"rtol": 1e-4, "atol": 1e-6}
# Ultralytics' ProbIoU adds eps = 1e-7 to the covariance determinants and inside the Hellinger square
# root; losskit.boxes.probiou does not. For objects of 2-3 px (grid units of 0.25 at stride 8, determinants
# near 1e-3) that moves the box term's angle gradient by up to 2.5e-6 (measured: 2.47e-6 on entries of ~5e-3).
TOL_GRAD_TINY = {"rtol": 1e-4, "atol": 5e-6}
# Alignment metrics are ProbIoU^6: the eps inside Ultralytics' square root moves ProbIoU by ~5e-7 relative,
# the soft target scores by up to 6 times that (measured: 1.8e-5 on 2 of 2688 anchors of the crowded case).
TOL_SCORE = {"rtol": 5e-5, "atol": 1e-6}


@functools.cache
def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def criterion(case: dict, mode: str) -> YOLOOBBLoss:
    cfg = case["config"]
    return YOLOOBBLoss(cfg["num_classes"], strides=tuple(cfg["strides"]), reg_max=cfg["reg_max"], box=cfg["box"],
                       cls=cfg["cls"], dfl=cfg["dfl"], angle=cfg["angle"], end2end=cfg["end2end"], **MODES[mode])


def leaves(case: dict):
    feats = case["feats"]
    if isinstance(feats, dict):
        return {k: [m.float().requires_grad_() for m in v] for k, v in feats.items()}
    return [m.float().requires_grad_() for m in feats]


def flat(maps) -> list:
    return maps["one2many"] + maps["one2one"] if isinstance(maps, dict) else maps


@functools.cache
def replay(path: Path, mode: str):
    case = load(path)
    maps = leaves(case)
    out = criterion(case, mode)(maps, case["batch"])
    num_images = flat(maps)[0].shape[0]
    grads = torch.autograd.grad(out.total * num_images, flat(maps))  # Ultralytics returns the loss times B
    return out, grads


def ultralytics_rows(case: dict, branch: dict) -> torch.Tensor:
    """Ultralytics' per-image padded gt index as rows of the caller's table (``-1`` off the foreground):
    it indexes each image's objects after leaving out those with a side under 2 px."""
    batch, (h, w) = case["batch"], case["config"]["imgsz"]
    b = batch["bboxes"]
    kept = ((b[:, 2] * float(w) >= 2) & (b[:, 3] * float(h) >= 2)).nonzero().squeeze(1)
    image = batch["batch_idx"].long()[kept]
    num_images = branch["fg_mask"].shape[0]
    first = torch.zeros(num_images + 1, dtype=torch.long).index_add_(0, image + 1, torch.ones_like(image)).cumsum(0)
    gt_idx = branch["target_gt_idx"]
    flat_row = first[:num_images, None] + gt_idx
    rows = kept[flat_row.clamp(max=max(len(kept) - 1, 0))] if len(kept) else flat_row
    return torch.where(branch["fg_mask"], rows, -1)


def test_manifest_and_provenance():
    assert {p.stem for p in FILES} == EXPECTED_CASES
    for path in FILES:
        source = load(path)["source"]
        assert source["lib"] == "ultralytics" and source["version"] == "8.4.190" and source["torch"] == "2.14.1"
        assert source["generator"] == "tests/golden/generate_yolo_obb_vectors.py"
        for counts in load(path)["diagnostics"].values():
            assert counts["zero_score_fg"] == 0 and counts["topk_boundary_ties"] == 0


@pytest.mark.parametrize(("path", "mode"), CASE_MODES)
def test_loss_matches_ultralytics(path, mode):
    case = load(path)
    out, _ = replay(path, mode)
    expected = case["expected"]
    num_images = flat(case["feats"])[0].shape[0]
    torch.testing.assert_close(out.total * num_images, expected["total"], **TOL_LOSS)
    results = out.branches or {"one2many": out}
    for name, branch in expected["branches"].items():
        got = torch.stack(list(results[name].components.values()))
        torch.testing.assert_close(got, branch["loss_items"], **TOL_LOSS)
        assert list(results[name].components) == ["box", "cls", "dfl" if case["config"]["reg_max"] > 1 else "l1",
                                                  "angle"]
    torch.testing.assert_close(out.per_image.sum(), out.total, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("path", "mode"), CASE_MODES)
def test_assignment_matches_ultralytics(path, mode):
    case = load(path)
    out, _ = replay(path, mode)
    results = out.branches or {"one2many": out}
    for name, branch in case["expected"]["branches"].items():
        a = results[name].assignment
        fg = branch["fg_mask"]
        assert torch.equal(a.fg_mask, fg), f"{name}: foreground differs at {(a.fg_mask != fg).nonzero()[:5].tolist()}"
        assert torch.equal(a.target_gt, ultralytics_rows(case, branch))
        assert torch.equal(a.target_labels[fg], branch["target_labels"][fg])
        torch.testing.assert_close(a.target_scores, branch["target_scores"], **TOL_SCORE)
        torch.testing.assert_close(a.target_boxes[fg], branch["target_boxes"][fg], rtol=0.0, atol=1e-4)


@pytest.mark.parametrize(("path", "mode"), CASE_MODES)
def test_gradients_match_ultralytics(path, mode):
    case = load(path)
    _, grads = replay(path, mode)
    expected = case["expected"]["grads"]
    tol = TOL_GRAD_TINY if path.stem == "obb_v8_tiny" else TOL_GRAD
    for i, (got, want) in enumerate(zip(grads, flat(expected), strict=True)):
        torch.testing.assert_close(got, want, **tol)
        error = (got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)
        assert error <= 1e-5, f"gradient {i}: {error:.2e} of its norm"
