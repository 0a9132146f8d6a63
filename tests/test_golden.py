"""Replay the peer golden vectors in tests/golden/ against losskit (no peer installed).

The vectors were produced by torchvision 0.29.1 and Ultralytics 8.4.x on torch 2.14.1 by
``tests/golden/generate_box_vectors.py`` (see tests/golden/README.md); each JSON file names its
library, version and the exact call.

Each comparison goes through one adapter below that calls the losskit API. Lines marked
``# API:`` are where the planned losskit signature is assumed: adjust them there if the
implementation settles on other names or options. A comparison never skips: a missing module or
function (a rename, say) fails it, like any other difference.

Tolerances. The peers add eps (1e-7) to denominators (union, enclosing area, squared diagonal,
CIoU alpha; Ultralytics' xyxy mode also adds eps to both heights), losskit may use a different or
dtype-dependent eps. On the boxes here (sides 5-60) those differences are below 1e-8, so values
and gradients are compared with ``atol=rtol=1e-6`` in float64. Exceptions, each documented where
it applies: ProbIoU of coinciding boxes (eps inside a square root: 1e-3), and Ultralytics'
varifocal loss (its BCE runs in float32 even for float64 input: rtol 1e-5). Gradients are compared
only on the rows listed in ``grad_rows`` (no min/max ties, no zero-size box), where the gradient
is unique.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "golden"
FILES = sorted(GOLDEN.glob("*.json"))
DT = torch.float64

# Every file the generator writes; a missing or renamed file fails test_manifest.
EXPECTED_FILES = {
    *(f"torchvision.{n}" for n in ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou",
                                   "generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss",
                                   "sigmoid_focal_loss.soft", "sigmoid_focal_loss.hard"]),
    *(f"torchvision.box_convert.{a}_to_{b}" for a in ["xyxy", "xywh", "cxcywh"] for b in ["xyxy", "xywh", "cxcywh"]
      if a != b),
    *(f"ultralytics.bbox_iou.{k}.{f}" for k in ["iou", "giou", "diou", "ciou"] for f in ["xyxy", "cxcywh"]),
    "ultralytics.probiou",
    "ultralytics.varifocal_loss.class_defaults",
    "ultralytics.varifocal_loss.rtdetr",
    "ultralytics.distribution_focal_loss",
    "ultralytics.bbox2dist.unclamped",
    "ultralytics.bbox2dist.reg_max15",
    "ultralytics.dist2bbox.xyxy",
    "ultralytics.dist2bbox.cxcywh",
}

ATOL = RTOL = 1e-6


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def losskit_fn(path: str) -> Callable:
    """``"losskit.boxes.box_iou"`` -> that function; a missing module or name fails the test."""
    module_name, _, attr = path.rpartition(".")
    module = importlib.import_module(module_name)
    assert hasattr(module, attr), f"{path} does not exist, and golden vectors call it"
    return getattr(module, attr)


def tensor(data, *, grad: bool = False) -> torch.Tensor:
    return torch.tensor(data, dtype=DT, requires_grad=grad)


def grad_of(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
    return g


def assert_close(actual, expected, *, what: str, atol: float = ATOL, rtol: float = RTOL) -> None:
    expected = expected if isinstance(expected, torch.Tensor) else tensor(expected)
    torch.testing.assert_close(actual.detach(), expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def check_rows_grad(actual_grad, case, *, what: str, key: str = "expected_grad", atol=ATOL, rtol=RTOL) -> None:
    rows = case["grad_rows"]
    assert rows, "a golden file with gradients must have some tie-free rows"
    assert_close(actual_grad[rows], tensor(case[key])[rows], what=f"{what} gradient on rows {rows}",
                 atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------------------------
# Adapters: one per peer op. The planned losskit API is marked "# API:".
# ----------------------------------------------------------------------------------------------

TV_PAIRWISE_KIND = {"torchvision.box_iou": "iou", "torchvision.generalized_box_iou": "giou",
                    "torchvision.distance_box_iou": "diou", "torchvision.complete_box_iou": "ciou"}


def check_tv_pairwise(case: dict) -> None:
    box_iou = losskit_fn("losskit.boxes.box_iou")  # API
    b1, b2 = tensor(case["inputs"]["boxes1"], grad=True), tensor(case["inputs"]["boxes2"])
    kind = TV_PAIRWISE_KIND[case["op"]]
    out = box_iou(b1, b2, kind=kind, aligned=False, fmt="xyxy")  # API
    assert out.shape == (b1.shape[0], b2.shape[0])
    assert_close(out, case["expected"], what=f"box_iou(kind={kind!r}, aligned=False)")
    check_rows_grad(grad_of(out, b1), case, what=f"box_iou(kind={kind!r}, aligned=False)")


TV_LOSS = {"torchvision.generalized_box_iou_loss": "giou_loss",
           "torchvision.distance_box_iou_loss": "diou_loss",
           "torchvision.complete_box_iou_loss": "ciou_loss"}


def check_tv_loss(case: dict) -> None:
    name = TV_LOSS[case["op"]]
    loss_fn = losskit_fn(f"losskit.{name}")  # API: losskit.giou_loss / diou_loss / ciou_loss
    pred, target = tensor(case["inputs"]["boxes1"], grad=True), tensor(case["inputs"]["boxes2"])
    out = loss_fn(pred, target, reduction="none")  # API: xyxy boxes, one loss per box
    assert out.shape == (pred.shape[0],)
    assert_close(out, case["expected"], what=name)
    check_rows_grad(grad_of(out, pred), case, what=name)


def check_tv_box_convert(case: dict) -> None:
    box_convert = losskit_fn("losskit.boxes.box_convert")  # API
    out = box_convert(tensor(case["inputs"]["boxes"]), case["in_fmt"], case["out_fmt"])  # API: torchvision's
    # format names (xywh = corner x, corner y, w, h; cxcywh = centre)
    assert_close(out, case["expected"], what=f"box_convert {case['in_fmt']} -> {case['out_fmt']}", atol=1e-9)


def check_tv_focal(case: dict) -> None:
    focal = losskit_fn("losskit.sigmoid_focal_loss")
    x, t = tensor(case["inputs"]["inputs"], grad=True), tensor(case["inputs"]["targets"])
    out = focal(x, t, alpha=case["kwargs"]["alpha"], gamma=case["kwargs"]["gamma"], reduction="none")
    # Same formula in float64 on both sides (losskit evaluates it in log space): tight tolerances.
    assert_close(out, case["expected"], what="sigmoid_focal_loss", atol=1e-12, rtol=1e-9)
    assert_close(grad_of(out, x), case["expected_grad"], what="sigmoid_focal_loss gradient", atol=1e-12, rtol=1e-9)


def check_ul_bbox_iou(case: dict) -> None:
    box_iou = losskit_fn("losskit.boxes.box_iou")  # API
    b1, b2 = tensor(case["inputs"]["box1"], grad=True), tensor(case["inputs"]["box2"])
    kind, fmt = case["kind"], case["fmt"]  # fmt: "xyxy" or "cxcywh" (Ultralytics' xywh=True)
    out = box_iou(b1, b2, kind=kind, aligned=True, fmt=fmt)  # API
    assert out.shape == (b1.shape[0],)
    what = f"box_iou(kind={kind!r}, aligned=True, fmt={fmt!r}) vs Ultralytics bbox_iou"
    assert_close(out, case["expected"], what=what)
    check_rows_grad(grad_of(out, b1), case, what=what)


def check_ul_probiou(case: dict) -> None:
    probiou = losskit_fn("losskit.boxes.probiou")  # API
    b1, b2 = tensor(case["inputs"]["obb1"], grad=True), tensor(case["inputs"]["obb2"])
    out = probiou(b1, b2, aligned=True)  # API: xywhr boxes, angle in radians
    assert out.shape == (b1.shape[0],)
    sensitive = case["eps_sensitive_rows"]
    regular = [i for i in range(b1.shape[0]) if i not in sensitive]
    assert_close(out[regular], tensor(case["expected"])[regular], what="probiou")
    # Coinciding boxes: Ultralytics' sqrt(1 - exp(-bd) + eps) leaves 1 - sqrt(2e-7) = 0.99955.
    assert_close(out[sensitive], tensor(case["expected"])[sensitive], what="probiou (coinciding boxes)", atol=1e-3)
    check_rows_grad(grad_of(out, b1), case, what="probiou", atol=1e-5, rtol=1e-5)


def check_ul_varifocal(case: dict) -> None:
    vfl = losskit_fn("losskit.varifocal_loss")
    x = tensor(case["inputs"]["pred_score"], grad=True)
    q, label = tensor(case["inputs"]["gt_score"]), tensor(case["inputs"]["label"])
    kw = case["kwargs"]
    out = vfl(x, q, alpha=kw["alpha"], gamma=kw["gamma"], positives="label", label=label,  # API
               reduction="none")
    assert out.shape == x.shape
    # Ultralytics' BCE runs in float32 even for float64 input: float32 rounding, rtol 1e-5.
    tol = {"atol": 1e-6, "rtol": 1e-5}
    assert_close(out, case["expected"], what="varifocal_loss (elementwise)", **tol)
    assert_close(grad_of(out, x), case["expected_grad"], what="varifocal_loss gradient (elementwise)", **tol)
    reduced = out.mean(1).sum()  # Ultralytics' own reduction: mean over queries, sum over batch and classes
    assert_close(reduced, torch.tensor(case["expected_reduced"], dtype=DT), what="varifocal_loss .mean(1).sum()",
                 **tol)
    assert_close(grad_of(reduced, x), case["expected_reduced_grad"], what="varifocal_loss .mean(1).sum() gradient",
                 **tol)


def check_ul_dfl(case: dict) -> None:
    dfl = losskit_fn("losskit.distribution_focal_loss")
    reg_max, margin = case["kwargs"]["reg_max"], case["kwargs"]["clamp_margin"]
    target = tensor(case["inputs"]["target"])  # (N, 4)
    n = target.shape[0]
    per_box, per_side = tensor(case["expected"]), tensor(case["expected_per_side"])

    # Form 1: (N, 4, reg_max) logits with (N, 4) targets.
    logits = tensor(case["inputs"]["pred_dist"]).reshape(n, 4, reg_max).requires_grad_()
    out = dfl(logits, target.clone(), clamp_margin=margin, reduction="none")  # API
    _check_dfl_output(out, logits, case, per_box, per_side, n, form="(N, 4, 16)")

    # Form 2: (M, reg_max) logits with (M,) targets, one side per row.
    logits = tensor(case["inputs"]["pred_dist"]).requires_grad_()
    out = dfl(logits, target.reshape(-1).clone(), clamp_margin=margin, reduction="none")  # API
    assert out.numel() == 4 * n, f"(M, 16) form: expected one loss per row, got shape {tuple(out.shape)}"
    assert_close(out.reshape(n, 4), per_side, what="distribution_focal_loss (M, 16) per side")
    assert_close(grad_of(out, logits), case["expected_per_side_grad"], what="distribution_focal_loss (M, 16) grad")


def _check_dfl_output(out, logits, case, per_box, per_side, n, *, form) -> None:
    # API: "none" may return one loss per side (N, 4) or per box (N,), Ultralytics' mean over the sides.
    grad = grad_of(out, logits).reshape(-1, logits.shape[-1])
    if out.numel() == 4 * n:
        assert_close(out.reshape(n, 4), per_side, what=f"distribution_focal_loss {form} per side")
        assert_close(grad, case["expected_per_side_grad"], what=f"distribution_focal_loss {form} per-side grad")
        assert_close(out.reshape(n, 4).mean(-1), per_box, what=f"distribution_focal_loss {form} mean over sides")
    elif out.numel() == n:
        assert_close(out.reshape(n), per_box, what=f"distribution_focal_loss {form} per box")
        assert_close(grad, case["expected_grad"], what=f"distribution_focal_loss {form} per-box grad")
    else:
        pytest.fail(f"distribution_focal_loss {form}: 'none' returned shape {tuple(out.shape)}, expected (N, 4) "
                    f"or (N,) with N={n}")


def check_ul_bbox2dist(case: dict) -> None:
    to_dist = losskit_fn("losskit.boxes.box_to_distance")  # API: name and signature not settled yet
    reg_max = case["kwargs"]["reg_max"]
    max_distance = None if reg_max is None else reg_max - 0.01  # Ultralytics clamps to [0, reg_max - 0.01]
    out = to_dist(tensor(case["inputs"]["anchor_points"]), tensor(case["inputs"]["bbox"]),  # API
               max_distance=max_distance)
    assert_close(out, case["expected"], what=f"box_to_distance(max_distance={max_distance})", atol=1e-9)


def check_ul_dist2bbox(case: dict) -> None:
    to_box = losskit_fn("losskit.boxes.distance_to_box")  # API: name and signature not settled yet
    out = to_box(tensor(case["inputs"]["anchor_points"]), tensor(case["inputs"]["distance"]),  # API
               fmt=case["fmt"])
    assert_close(out, case["expected"], what=f"distance_to_box(fmt={case['fmt']!r})", atol=1e-9)


ADAPTERS: dict[str, Callable[[dict], None]] = {
    **dict.fromkeys(TV_PAIRWISE_KIND, check_tv_pairwise),
    **dict.fromkeys(TV_LOSS, check_tv_loss),
    "torchvision.box_convert": check_tv_box_convert,
    "torchvision.sigmoid_focal_loss": check_tv_focal,
    "ultralytics.bbox_iou": check_ul_bbox_iou,
    "ultralytics.probiou": check_ul_probiou,
    "ultralytics.varifocal_loss": check_ul_varifocal,
    "ultralytics.distribution_focal_loss": check_ul_dfl,
    "ultralytics.bbox2dist": check_ul_bbox2dist,
    "ultralytics.dist2bbox": check_ul_dist2bbox,
}


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_manifest():
    """The generator's full output is here, and nothing else."""
    assert {p.name.removesuffix(".json") for p in FILES} == EXPECTED_FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_provenance_and_shape(path: Path):
    """Each file names its peer, version and call; holds finite numbers; its op has an adapter."""
    case = _load(path)
    src = case["source"]
    assert src["lib"] in ("torchvision", "ultralytics")
    assert src["torch"] == "2.14.1"
    if src["lib"] == "torchvision":
        assert src["version"] == "0.29.1"
    else:
        assert src["version"].startswith("8.4.")
    assert src["call"] and case["op"] in ADAPTERS and case["dtype"] == "float64"
    expected = tensor(case["expected"])
    assert expected.numel() > 0 and torch.isfinite(expected).all()
    if "expected_grad" in case:
        assert torch.isfinite(tensor(case["expected_grad"])).all()
    first_input = tensor(next(iter(case["inputs"].values())))
    if "expected_grad" in case:
        assert tensor(case["expected_grad"]).shape == first_input.shape
    if "grad_rows" in case:
        assert set(case["grad_rows"]) <= set(range(first_input.shape[0]))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_losskit_matches_peer(path: Path):
    case = _load(path)
    ADAPTERS[case["op"]](case)
