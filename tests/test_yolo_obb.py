"""The oriented-box YOLO criterion (losskit.detection.YOLOOBBLoss): hand-worked values, properties, precision
and bad input. Parity with Ultralytics is in tests/test_golden_yolo_obb.py."""

from __future__ import annotations

import math

import pytest
import torch

import losskit
from losskit.boxes import normalize_angle
from losskit.detection import (
    AnchorGrid,
    RotatedTaskAlignedAssigner,
    YOLOOBBLoss,
    rotated_box_to_distance,
    rotated_distance_to_box,
)
from losskit.detection.obb import ANGLE_LOW

STRIDES = (8.0, 16.0)
SIZES = ((8, 8), (4, 4))  # a 64 x 64 image


def maps(seed: int = 0, reg_max: int = 16, num_classes: int = 3, batch: int = 2, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in SIZES:
        box = torch.randn(batch, 4 * reg_max, h, w, generator=g)
        if reg_max == 1:
            box = box.abs() * 2 + 0.5
        angle = (torch.rand(batch, 1, h, w, generator=g) - 0.25) * math.pi
        cls = torch.randn(batch, num_classes, h, w, generator=g) - 2
        out.append(torch.cat([box, angle, cls], 1).to(dtype).requires_grad_())
    return out


def targets(angle_shift: float = 0.0):
    bboxes = torch.tensor([[0.5, 0.5, 0.5, 0.25, 0.3], [0.3, 0.6, 0.3, 0.2, -0.5], [0.7, 0.3, 0.4, 0.1, 1.2],
                           [0.5, 0.5, 0.6, 0.3, 2.0]])
    bboxes[:, 4] += angle_shift
    return {"batch_idx": torch.tensor([0.0, 0.0, 0.0, 1.0]), "cls": torch.tensor([[0.0], [2.0], [1.0], [1.0]]),
            "bboxes": bboxes}


def criterion(**kwargs) -> YOLOOBBLoss:
    return YOLOOBBLoss(3, strides=STRIDES, **kwargs)


# --- geometry -----------------------------------------------------------------------------------


def test_distance_round_trip_and_hand_values():
    # A 4 x 2 box turned a quarter turn about (0, 1): from the origin, 1 to its left/top sides, 3 to the right.
    box = torch.tensor([[0.0, 1.0, 4.0, 2.0, math.pi / 2]], dtype=torch.float64)
    origin = torch.zeros(1, 2, dtype=torch.float64)
    distance = rotated_box_to_distance(origin, box)
    torch.testing.assert_close(distance, torch.tensor([[1.0, 1.0, 3.0, 1.0]], dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    points = torch.rand(50, 2, generator=g, dtype=torch.float64) * 10
    d = torch.rand(50, 4, generator=g, dtype=torch.float64) * 5
    angle = torch.rand(50, 1, generator=g, dtype=torch.float64) * 6 - 3
    torch.testing.assert_close(rotated_box_to_distance(points, rotated_distance_to_box(points, d, angle)), d)


def test_normalize_angle_keeps_the_rectangle():
    angles = torch.tensor([-3.0, -0.785, 0.0, 1.0, 2.35, 2.36, 7.0], dtype=torch.float64)
    out = normalize_angle(angles, low=ANGLE_LOW)
    assert bool(((out >= -math.pi / 4) & (out < 3 * math.pi / 4)).all())
    turns = (angles - out) / math.pi
    torch.testing.assert_close(turns, turns.round())  # whole half turns: the same rectangle
    inside = torch.tensor([-0.785, 0.0, 1.0, 2.35])
    assert torch.equal(normalize_angle(inside, low=ANGLE_LOW), inside)  # in range: bit for bit


def test_rotated_candidates_closed_rectangle_and_stal():
    grid = AnchorGrid(sizes=((4, 4),), strides=(8.0,))  # points at 4, 12, 20, 28 px
    # A 16 x 4 box turned 90 degrees about (12, 16): it covers x in [10, 14], y in [8, 24] -> anchors
    # (12, 12) and (12, 20), indices 5 and 9. Ends exactly on y = 8 and 24 hold no anchor.
    box = torch.tensor([[12.0, 16.0, 16.0, 4.0, math.pi / 2]])
    gt, anchor = RotatedTaskAlignedAssigner(num_classes=1).candidates(grid, box)
    assert anchor.tolist() == [5, 9]
    # Edges are included: a 16 x 8 box at (12, 16), angle 0, spans x in [4, 20], y in [12, 20]: anchors at
    # x = 4, 12, 20 on rows y = 12 and 20 (six, the edges included).
    box = torch.tensor([[12.0, 16.0, 16.0, 8.0, 0.0]])
    _, anchor = RotatedTaskAlignedAssigner(num_classes=1).candidates(grid, box)
    assert anchor.tolist() == [4, 5, 6, 8, 9, 10]
    # STAL: a 2 x 2 box at (14, 14) has no anchor inside; widened to 16 x 16 it spans [6, 22] in x and y,
    # which holds x, y in {12, 20}: anchors 5, 6, 9, 10.
    tiny = torch.tensor([[14.0, 14.0, 2.0, 2.0, 0.0]])
    assert len(RotatedTaskAlignedAssigner(num_classes=1).candidates(grid, tiny)[0]) == 0
    _, anchor = RotatedTaskAlignedAssigner(num_classes=1, small_object_size=16).candidates(grid, tiny)
    assert anchor.tolist() == [5, 6, 9, 10]


def test_dense_points_agree_with_the_grid():
    grid = AnchorGrid(sizes=((8, 8), (4, 4)), strides=(8.0, 16.0))
    points, strides = grid.points()
    g = torch.Generator().manual_seed(3)
    boxes = torch.cat([torch.rand(20, 2, generator=g) * 64, torch.rand(20, 2, generator=g) * 40 + 2,
                       torch.rand(20, 1, generator=g) * 3], 1)
    assigner = RotatedTaskAlignedAssigner(num_classes=1, small_object_size=16)
    by_grid = assigner.candidates(grid, boxes)
    by_points = assigner.candidates(points * strides, boxes)
    assert torch.equal(by_grid[0], by_points[0]) and torch.equal(by_grid[1], by_points[1])


# --- the loss -----------------------------------------------------------------------------------


def test_angle_term_hand_value():
    # One object, one foreground anchor (topk=1): the angle term is sin^2(2 * dtheta) * exp(-ln^2(w/h)/9)
    # times the anchor's target score over the normalizer max(1, score) = 1 (score < 1), times the gain.
    crit = criterion(topk=1, box=0.0, cls=0.0, dfl=0.0, angle=1.0, small_object_size=None)
    m = [torch.zeros(1, 64 + 1 + 3, 8, 8), torch.zeros(1, 68, 4, 4)]
    for level in m:
        level[:, 64] = 0.1  # every predicted angle 0.1 rad
    t = {"batch_idx": torch.tensor([0.0]), "cls": torch.tensor([0.0]),
         "bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.25, 0.6]])}  # 32 x 16 px, angle 0.6
    out = crit(m, t)
    fg = out.assignment.fg_mask
    assert int(fg.sum()) == 1
    score = out.assignment.target_scores[fg].item()
    expected = math.sin(2 * (0.1 - 0.6)) ** 2 * math.exp(-math.log(2) ** 2 / 9) * score
    assert out.components["angle"].item() == pytest.approx(expected, rel=1e-5)
    # dtheta is wrapped to a half turn: 0.1 + pi predicts the same line.
    for level in m:
        level[:, 64] = 0.1 + math.pi
    assert crit(m, t).components["angle"].item() == pytest.approx(expected, rel=1e-4)


def test_components_sum_and_per_image():
    out = criterion()(maps(), targets())
    assert list(out.components) == ["box", "cls", "dfl", "angle"]
    torch.testing.assert_close(sum(out.components.values()), out.total)
    torch.testing.assert_close(out.per_image.sum(), out.total)
    assert out.per_image_components.shape == (2, 4)
    assert out.assignment.target_boxes.shape[-1] == 5


def test_angles_a_half_turn_apart_give_the_same_loss():
    a = criterion()(maps(), targets())
    b = criterion()(maps(), targets(angle_shift=math.pi))
    c = criterion()(maps(), targets(angle_shift=-2 * math.pi))
    for other in (b, c):
        torch.testing.assert_close(other.total, a.total, rtol=1e-5, atol=0)
        assert torch.equal(other.assignment.fg_mask, a.assignment.fg_mask)


def test_component_gradients_are_separate():
    # Each component's backward is that component's own gradient: compare with a criterion whose other gains are 0.
    m = maps(seed=4)
    full = criterion()(m, targets())
    got = torch.autograd.grad(full.components["angle"], m)
    only = criterion(box=0.0, cls=0.0, dfl=0.0)(m, targets())
    want = torch.autograd.grad(only.total, m)
    for g1, g2 in zip(got, want, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-9)
    assert any(bool(g[:, 64].abs().sum() > 0) for g in got)  # the angle channel learns
    assert all(bool(g[:, :64].abs().sum() == 0) for g in got)  # the angle term does not touch the distances


@pytest.mark.parametrize("reg_max", [16, 1])
def test_float32_matches_float64(reg_max):
    m32 = maps(seed=5, reg_max=reg_max)
    m64 = [x.detach().double().requires_grad_() for x in m32]
    crit = criterion(reg_max=reg_max)
    out32, out64 = crit(m32, targets()), crit(m64, targets())
    assert torch.equal(out32.assignment.fg_mask, out64.assignment.fg_mask)
    torch.testing.assert_close(out32.total.double(), out64.total, rtol=1e-6, atol=0)
    for name in out32.components:
        torch.testing.assert_close(out32.components[name].double(), out64.components[name], rtol=2e-6, atol=1e-9)
    g32 = torch.autograd.grad(out32.total, m32)
    g64 = torch.autograd.grad(out64.total, m64)
    for a, b in zip(g32, g64, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-7)


def test_half_maps_are_computed_in_float32():
    m = maps(seed=6, dtype=torch.float16)
    out = criterion()(m, targets())
    ref = criterion()([x.detach().float() for x in m], targets())
    assert out.total.dtype == torch.float16
    torch.testing.assert_close(out.total.float(), ref.total, rtol=1e-3, atol=0)
    out.total.backward()
    assert all(bool(torch.isfinite(x.grad).all()) for x in m)


def test_end_to_end_branches_and_progress():
    crit = criterion(reg_max=1, end2end=True)
    preds = {"one2many": maps(seed=7, reg_max=1), "one2one": maps(seed=8, reg_max=1)}
    out = crit(preds, targets())
    assert list(out.components) == ["box", "cls", "l1", "angle"]
    expected = 0.8 * out.branches["one2many"].total + 0.2 * out.branches["one2one"].total
    torch.testing.assert_close(out.total, expected, rtol=1e-6, atol=0)
    fg = out.branches["one2one"].assignment.fg_mask
    assert int(fg.sum()) == 4  # one anchor per object
    crit.set_progress(1.0)
    later = crit(preds, targets())
    torch.testing.assert_close(later.total, 0.1 * out.branches["one2many"].total + 0.9 * out.branches["one2one"].total,
                               rtol=1e-6, atol=0)


def test_small_objects_are_left_out_and_rows_kept():
    t = targets()
    t["bboxes"] = torch.cat([torch.tensor([[0.2, 0.2, 0.02, 0.3, 0.0]]), t["bboxes"]])  # 1.28 px wide: left out
    t["batch_idx"] = torch.cat([torch.tensor([0.0]), t["batch_idx"]])
    t["cls"] = torch.cat([torch.tensor([[1.0]]), t["cls"]])
    with_tiny = criterion()(maps(), t)
    without = criterion()(maps(), targets())
    torch.testing.assert_close(with_tiny.total, without.total, rtol=1e-6, atol=0)
    rows = with_tiny.assignment.target_gt
    assert torch.equal(rows[rows >= 0], without.assignment.target_gt[rows >= 0] + 1)  # rows of the caller's table
    kept = criterion(min_size=0.0)(maps(), t)
    assert bool((kept.assignment.target_gt == 0).any())


def test_no_objects_gives_the_classification_term_only():
    empty = {"batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 5)}
    m = maps()
    out = criterion()(m, empty)
    assert out.components["box"].item() == out.components["angle"].item() == out.components["dfl"].item() == 0.0
    # BCE against all-zero targets, summed and divided by max(1, 0) = 1, times the gain 0.5.
    expected = sum(torch.nn.functional.softplus(x.detach()[:, 65:].double()).sum() for x in m) * 0.5
    assert out.components["cls"].item() == pytest.approx(expected.item(), rel=1e-6)
    out.total.backward()


def test_config_round_trip_and_registry():
    crit = criterion(reg_max=1, end2end=True, angle=2.0, min_size=0.0)
    cfg = crit.get_config()
    assert "overlap" not in cfg and cfg["angle"] == 2.0 and cfg["min_size"] == 0.0
    assert YOLOOBBLoss(**cfg).get_config() == cfg
    built = losskit.get({"class": "losskit.detection.obb.YOLOOBBLoss", "num_classes": 3})
    assert isinstance(built, YOLOOBBLoss)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("row", "column", "value", "message"), [
    (2, 2, -0.1, r"negative width or height \(row 2:"),
    (1, 4, float("nan"), r"angle is not finite \(radians expected\) \(row 1:"),
    (3, 4, float("inf"), r"angle is not finite \(radians expected\) \(row 3:"),
    (0, 0, float("nan"), r"centre or size is not finite \(row 0:"),
])
def test_bad_targets_name_the_row(row, column, value, message):
    t = targets()
    t["bboxes"][row, column] = value
    with pytest.raises(ValueError, match=message):
        criterion()(maps(), t)


def test_bad_shapes():
    t = targets()
    t["bboxes"] = t["bboxes"][:, :4]
    with pytest.raises(ValueError, match=r"targets\['bboxes'\] must have shape \(M, 5\)"):
        criterion()(maps(), t)
    wrong = [x[:, 1:] for x in maps()]  # one channel short
    with pytest.raises(ValueError, match=r"preds\[0\] must be a \(B, 4 \* reg_max \+ 1 \+ num_classes = 68"):
        criterion()(wrong, targets())
    with pytest.raises(ValueError, match="angle_aspect_scale"):
        criterion(angle_aspect_scale=0.0)
