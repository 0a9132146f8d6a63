"""The YOLO criterion (losskit.detection) against a dense float64 reference, hand-worked values and properties.

``tests/reference_yolo.py`` is written from the formulas with loops: a dense task-aligned
assigner (TOOD metric with YOLOv8's clamped CIoU, YOLOv8's conflict rule, YOLO26's STAL and
``topk2``) and the loss terms (CIoU, DFL or L1, BCE) differentiated by plain autograd.

Why not ``torch.autograd.gradcheck``: the assignment and the target scores are functions of the
predictions (scores and decoded boxes), but every TAL implementation computes them under
``no_grad`` and treats them as constants; the loss is piecewise in them (a small move can change
which anchors are foreground), so finite differences of the whole criterion do not equal its
gradient. The gradient is instead compared with the reference's autograd gradient with the
assignment held fixed, which is exactly what the criterion's backward claims to compute.
"""

from __future__ import annotations

import math

import pytest
import torch

from losskit.boxes import box_iou
from losskit.detection import (
    AnchorGrid,
    TaskAlignedAssigner,
    YOLOLoss,
    bbox2dist,
    dfl_decode,
    dist2bbox,
    make_anchors,
    one_to_many_weight,
)
from tests import reference_yolo as ref

LN2, LN3 = math.log(2), math.log(3)
GRID = AnchorGrid(sizes=((8, 8), (4, 4), (2, 2)), strides=(8.0, 16.0, 32.0))  # a 64 x 64 image, 84 anchors
STRIDES = (8.0, 16.0, 32.0)
LOSS_SIZES = ((6, 8), (3, 4), (2, 2))  # a 48 x 64 (H x W) image: not square, so W and H cannot be swapped


def close(actual, expected, rtol=1e-7, atol=1e-9):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=rtol, atol=atol)


def t64(values):
    return torch.tensor(values, dtype=torch.float64)


def pixel_points(grid=GRID, dtype=torch.float64):
    points, strides = grid.points(dtype=dtype)
    return points * strides


# --- anchors ------------------------------------------------------------------------------------


def test_make_anchors_hand_values():
    # Level 0: 2 rows x 3 columns at stride 8, row by row (y outer, x inner); level 1: one cell.
    points, strides = make_anchors([(2, 3), (1, 1)], strides=[8, 16])
    assert points.tolist() == [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5], [1.5, 1.5], [2.5, 1.5], [0.5, 0.5]]
    assert strides.shape == (7, 1) and strides.flatten().tolist() == [8.0] * 6 + [16.0]
    points, _ = make_anchors([(1, 2)], strides=[4], offset=0.0)
    assert points.tolist() == [[0.0, 0.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="one entry per level"):
        make_anchors([(2, 2)], strides=[8, 16])
    with pytest.raises(ValueError, match="H, W >= 1"):
        make_anchors([(0, 2)], strides=[8])


def test_make_anchors_follow_flatten_order_and_map_dtype():
    # A map whose channels hold each cell's own (x, y): flatten(2) lists cells in the anchors' order.
    maps = []
    for h, w in ((3, 5), (2, 1)):
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
        maps.append(torch.stack((xs, ys))[None])
    points, strides = make_anchors(maps, strides=[8, 16])
    assert points.dtype == torch.float64 and strides.dtype == torch.float64
    expected = torch.cat([m.flatten(2)[0].T for m in maps]) + 0.5
    assert torch.equal(points, expected)
    grid = AnchorGrid(sizes=((3, 5), (2, 1)), strides=(8.0, 16.0))
    assert grid.num_anchors == 17 and grid.level_starts == [0, 15]
    assert torch.equal(grid.points(dtype=torch.float64)[0], points)


def test_dfl_decode_hand_values():
    assert torch.equal(dfl_decode(torch.zeros(2, 64), reg_max=16), torch.full((2, 4), 7.5))  # uniform: mean 7.5
    # softmax([0, ln 2, ln 3]) = [1, 2, 3] / 6 -> mean (0 + 2 + 6) / 6 = 4 / 3, on every side
    logits = t64([0.0, LN2, LN3]).repeat(4)
    close(dfl_decode(logits, reg_max=3), [4 / 3] * 4)
    raw = torch.randn(3, 4)
    assert dfl_decode(raw, reg_max=1) is raw  # direct regression: distances as given
    with pytest.raises(ValueError, match="4 \\* reg_max"):
        dfl_decode(torch.zeros(2, 63), reg_max=16)


def test_dist2bbox_bbox2dist_round_trip_and_clamp(gen):
    points = torch.rand(20, 2, generator=gen, dtype=torch.float64) * 10
    dist = torch.rand(20, 4, generator=gen, dtype=torch.float64) * 5
    close(bbox2dist(points, dist2bbox(points, dist)), dist, rtol=1e-12, atol=1e-12)
    # point (4.5, 2.5), box (3.5, 0.5, 7.5, 3.0): ltrb (1, 2, 3, 0.5)
    close(bbox2dist(t64([[4.5, 2.5]]), t64([[3.5, 0.5, 7.5, 3.0]])), [[1.0, 2.0, 3.0, 0.5]])
    # point (10, 2.5) right of that box: l = 6.5 -> clamped to 5, r = -2.5 -> 0, t = 2, b = 0.5
    close(bbox2dist(t64([[10.0, 2.5]]), t64([[3.5, 0.5, 7.5, 3.0]]), max_distance=5.0), [[5.0, 2.0, 0.0, 0.5]])


# --- AnchorGrid.inside --------------------------------------------------------------------------


def brute_force_inside(grid, boxes, eps):
    """Every point tested against every box, listed level by level, then box, then anchor."""
    points, strides = grid.points(dtype=boxes.dtype)
    p = points * strides
    box_out, anchor_out = [], []
    for (h, w), start in zip(grid.sizes, grid.level_starts, strict=True):
        for i in range(len(boxes)):
            x1, y1, x2, y2 = boxes[i]
            for a in range(start, start + h * w):
                if p[a, 0] - x1 > eps and p[a, 1] - y1 > eps and x2 - p[a, 0] > eps and y2 - p[a, 1] > eps:
                    box_out.append(i)
                    anchor_out.append(a)
    return box_out, anchor_out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [1e-9, 0.0, 0.5])
def test_anchor_grid_inside_equals_brute_force(gen, dtype, eps):
    grid = AnchorGrid(sizes=((6, 10), (3, 5)), strides=(8.0, 16.0))  # 48 x 80 px, not square
    random_boxes = torch.rand(12, 4, generator=gen, dtype=torch.float64) * t64([100, 70, 100, 70]) - 10
    random_boxes = torch.cat((torch.minimum(random_boxes[:, :2], random_boxes[:, 2:]),
                              torch.maximum(random_boxes[:, :2], random_boxes[:, 2:])), -1)
    special = t64([
        [4.0, 4.0, 20.0, 20.0],  # edges exactly on cell centres (4, 12, 20 at stride 8): only 12 is inside
        [12.0, 12.0, 12.0, 12.0],  # zero size, on a centre
        [12.0 - 1e-10, 4.0, 28.0, 28.0],  # 1e-10 past a centre: inside only with eps < 1e-10
        [8.0, 8.0, 24.0, 40.0],  # exactly on stride-16 centres (8, 24, 40) and between stride-8 ones
        [-30.0, -30.0, 13.0, 13.0],  # partly outside (top left)
        [70.0, 40.0, 200.0, 100.0],  # partly outside (bottom right)
        [-50.0, 10.0, -5.0, 30.0],  # entirely outside (left)
        [90.0, 60.0, 120.0, 90.0],  # entirely outside (bottom right)
        [-100.0, -100.0, 300.0, 300.0],  # covers everything
        [0.0, 0.0, 80.0, 48.0],  # exactly the image
    ])
    boxes = torch.cat((special, random_boxes)).to(dtype)
    box, anchor = grid.inside(boxes, eps)
    expected_box, expected_anchor = brute_force_inside(grid, boxes, eps)
    assert box.tolist() == expected_box
    assert anchor.tolist() == expected_anchor
    # the hand-worked first row: x, y in {12} at stride 8 -> anchor 1 * 10 + 1; at stride 16 the
    # centres are 8, 24: neither strictly inside [4, 20] x [4, 20]... 8 is: 8 - 4 > eps, 20 - 8 > eps
    first = anchor[box == 0].tolist()
    assert first == ([11, 60] if eps < 4 else [])


def test_anchor_grid_inside_empty():
    box, anchor = GRID.inside(torch.zeros(0, 4), 1e-9)
    assert box.shape == (0,) and anchor.shape == (0,)


# --- the assigner -------------------------------------------------------------------------------


def random_predictions(gen, num_images, num_classes, grid=GRID):
    """Probabilities in (0.05, 0.95) and predicted boxes around each anchor (0.3 to 1.8 strides per side)."""
    a = grid.num_anchors
    points, strides = grid.points(dtype=torch.float64)
    scores = torch.rand(num_images, a, num_classes, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    dist = (torch.rand(num_images, a, 4, generator=gen, dtype=torch.float64) * 1.5 + 0.3) * strides
    p = points * strides
    return scores, torch.cat((p - dist[..., :2], p + dist[..., 2:]), -1)


def random_objects(gen, batch_idx, num_classes, size=64.0, low=6.0, high=40.0):
    m = len(batch_idx)
    centre = torch.rand(m, 2, generator=gen, dtype=torch.float64) * size
    wh = torch.rand(m, 2, generator=gen, dtype=torch.float64) * (high - low) + low
    boxes = torch.cat((centre - wh / 2, centre + wh / 2), -1).clamp(0, size)
    labels = torch.randint(num_classes, (m,), generator=gen)
    return boxes, labels, torch.as_tensor(batch_idx)


def assigner_case(seed, num_classes=3):
    """3 images (image 1 has none): random objects, a shifted copy of object 0 (forced conflicts),
    a tiny object (fewer candidates than topk), a large object overlapping everything in image 2."""
    gen = torch.Generator().manual_seed(seed)
    scores, pred_boxes = random_predictions(gen, 3, num_classes)
    boxes, labels, idx = random_objects(gen, [0, 0, 2, 0, 2, 2], num_classes)
    extra = torch.stack((boxes[0] + t64([2.0, -1.0, 3.0, 1.0]),  # overlaps object 0
                         t64([26.0, 26.0, 34.0, 34.0]),  # 8 px: one stride-8 centre (28, 28), no other
                         t64([4.0, 4.0, 60.0, 58.0])))  # large, image 2
    boxes = torch.cat((boxes, extra.clamp(0, 64)))
    labels = torch.cat((labels, torch.tensor([int(labels[0]), 1, 2])))
    idx = torch.cat((idx, torch.tensor([0, 0, 2])))
    return scores, pred_boxes, boxes, labels, idx


def assert_same_assignment(out, expected, rtol=1e-9):
    fg, target_gt, target_scores = expected
    assert torch.equal(out.fg_mask, fg)
    assert torch.equal(out.target_gt, target_gt)
    close(out.target_scores.double(), target_scores, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("topk2", [None, 1])
@pytest.mark.parametrize("stal", [None, 16.0])
@pytest.mark.parametrize("anchors", ["grid", "points"])
def test_assigner_matches_reference(seed, topk2, stal, anchors):
    scores, pred_boxes, boxes, labels, idx = assigner_case(seed)
    topk = 4  # small, so that topk binds for large objects and conflicts are common
    assigner = TaskAlignedAssigner(topk=topk, num_classes=3, topk2=topk2, small_object_size=stal)
    out = assigner(scores, pred_boxes, GRID if anchors == "grid" else pixel_points(), boxes, labels, idx)
    expected = ref.assign(scores, pred_boxes, pixel_points(), boxes, labels, idx, topk=topk, topk2=topk2,
                          small_object_size=stal)
    assert_same_assignment(out, expected)
    fg = out.fg_mask
    assert not fg[1].any()  # image 1 has no objects
    assert torch.equal(out.target_labels[fg], labels[out.target_gt[fg]])
    assert (out.target_labels[~fg] == 3).all()
    assert torch.equal(out.target_boxes[fg], boxes[out.target_gt[fg]])
    dense = out.dense_scores(3)
    assert torch.equal(dense.sum(-1), out.target_scores) and dense.shape == (3, GRID.num_anchors, 3)


@pytest.mark.parametrize("seed", range(2))
def test_assigner_with_iou_overlap_matches_reference(seed):
    """TOOD's overlap (plain IoU) instead of YOLOv8's clamped CIoU."""
    scores, pred_boxes, boxes, labels, idx = assigner_case(seed)
    out = TaskAlignedAssigner(topk=4, num_classes=3, overlap="iou")(scores, pred_boxes, GRID, boxes, labels, idx)
    assert_same_assignment(out, ref.assign(scores, pred_boxes, pixel_points(), boxes, labels, idx, topk=4,
                                           overlap="iou"))
    ciou_out = TaskAlignedAssigner(topk=4, num_classes=3)(scores, pred_boxes, GRID, boxes, labels, idx)
    assert not torch.equal(out.target_scores, ciou_out.target_scores)  # the option changes something


def test_assigner_cases_exercise_conflicts_and_small_objects():
    """The random cases above are not vacuous: some anchor is kept by two objects, and the tiny
    object has fewer candidates than topk without STAL and more with it."""
    scores, pred_boxes, boxes, labels, idx = assigner_case(0)
    assigner = TaskAlignedAssigner(topk=4, num_classes=3)
    gt, anchor = assigner.candidates(GRID, boxes)
    assert anchor[gt == 7].tolist() == [3 * 8 + 3]  # the point (28, 28)
    assert int((TaskAlignedAssigner(topk=4, num_classes=3, small_object_size=16.0).candidates(GRID, boxes)[0] == 7)
               .sum()) > int((gt == 7).sum())
    # a conflict: run without resolution (topk per object only) in the reference and count claims
    fg, _, _ = ref.assign(scores, pred_boxes, pixel_points(), boxes, labels, idx, topk=4)
    kept_total = 0
    for g in range(len(boxes)):
        sub = ref.assign(scores, pred_boxes, pixel_points(), boxes[g:g + 1], labels[g:g + 1], idx[g:g + 1], topk=4)
        kept_total += int(sub[0].sum())
    assert kept_total > int(fg.sum())  # some anchor was claimed twice


def test_assigner_ties_go_to_lower_anchor_and_first_object():
    # 4 x 4 grid, stride 8; every predicted box is 12 px square about its point; uniform scores.
    # Object [2, 2, 14, 14] holds the points (4, 4), (12, 4), (4, 12), (12, 12) = anchors 0, 1, 4, 5,
    # all at the same distance from its centre (8, 8): exact ties, the lower anchors win.
    # Anchor 0's box [-2, -2, 10, 10]: inter 8 x 8 = 64, union 144 + 144 - 64 = 224, rho^2 = 4^2 + 4^2
    # = 32, c^2 = 16^2 + 16^2 = 512, v = 0 -> u = CIoU = 64 / 224 - 32 / 512 = 0.22321, t = 0.5^0.5 u^6
    # = 8.74e-5; each tied anchor's target is t max_u / (max_t + eps) = u t / (t + 1e-9) = 0.22321.
    grid = AnchorGrid(sizes=((4, 4),), strides=(8.0,))
    points = pixel_points(grid)
    pred_boxes = torch.cat((points - 6, points + 6), -1)[None]
    scores = torch.full((1, 16, 2), 0.5, dtype=torch.float64)
    box = t64([[2.0, 2.0, 14.0, 14.0]])
    assigner = TaskAlignedAssigner(topk=3, num_classes=2)
    out = assigner(scores, pred_boxes, grid, box, torch.tensor([1]), torch.tensor([0]))
    assert out.fg_mask[0].nonzero().flatten().tolist() == [0, 1, 4]
    u = 64 / 224 - 32 / 512
    t = 0.5**0.5 * u**6
    close(out.target_scores[0, [0, 1, 4]], [u * t / (t + 1e-9)] * 3)
    assert_same_assignment(out, ref.assign(scores, pred_boxes, points, box, torch.tensor([1]), torch.tensor([0]),
                                           topk=3))
    # The same object twice (rows 0 and 1, another class for row 1): every kept anchor is
    # contested with equal overlaps; the first row of the table takes them all.
    two = box.repeat(2, 1)
    out = assigner(scores, pred_boxes, grid, two, torch.tensor([1, 0]), torch.tensor([0, 0]))
    assert out.target_gt[0, out.fg_mask[0]].tolist() == [0, 0, 0]
    assert out.target_labels[0, [0, 1, 4]].tolist() == [1, 1, 1]


def test_assigner_candidate_rules():
    # An object between anchor points gets nothing; a zero metric is never foreground.
    grid = AnchorGrid(sizes=((4, 4),), strides=(8.0,))
    points = pixel_points(grid)
    pred_boxes = torch.cat((points - 6, points + 6), -1)[None]
    scores = torch.full((1, 16, 1), 0.5, dtype=torch.float64)
    between = t64([[5.0, 5.0, 11.0, 11.0]])  # no centre (4, 12, ...) strictly inside
    one = torch.tensor([0])
    assert not TaskAlignedAssigner(topk=3, num_classes=1)(scores, pred_boxes, grid, between, one, one).fg_mask.any()
    # STAL widens the 6 px box to 16 px about (8, 8): [0, 0, 16, 16] holds anchors 0, 1, 4, 5
    stal = TaskAlignedAssigner(topk=10, num_classes=1, small_object_size=16.0)
    gt, anchor = stal.candidates(grid, between)
    assert anchor.tolist() == [0, 1, 4, 5]
    # predicted boxes far from the object: CIoU < 0 -> u = 0 -> t = 0 -> background
    far = pred_boxes + 100.0
    assert not TaskAlignedAssigner(topk=3, num_classes=1)(scores, far, grid, t64([[0.0, 0.0, 30.0, 30.0]]), one,
                                                         one).fg_mask.any()


def test_assigner_topk2_keeps_best_anchor_of_each_object():
    for seed in range(3):
        scores, pred_boxes, boxes, labels, idx = assigner_case(seed)
        many = TaskAlignedAssigner(topk=7, num_classes=3, small_object_size=16.0)(
            scores, pred_boxes, GRID, boxes, labels, idx)
        one = TaskAlignedAssigner(topk=7, num_classes=3, small_object_size=16.0, topk2=1)(
            scores, pred_boxes, GRID, boxes, labels, idx)
        for g in range(len(boxes)):
            mine = many.fg_mask & (many.target_gt == g)
            kept = one.fg_mask & (one.target_gt == g)
            assert int(kept.sum()) == (1 if mine.any() else 0)
            if mine.any():
                b, a = kept.nonzero()[0].tolist()
                best = many.alignment[mine].max()
                assert many.alignment[b, a] == best and mine[b, a]
                assert (many.alignment[b, :a][mine[b, :a]] < best).all()  # ties: the lower anchor
                # alone, its target is t u / (t + eps): its own overlap u
                u = ref.ciou(pred_boxes[b, a], boxes[g]).clamp(min=0)
                close(one.target_scores[b, a], u * best / (best + 1e-9), rtol=1e-9)


def test_assigner_batch_permutation_and_determinism():
    scores, pred_boxes, boxes, labels, idx = assigner_case(5)
    assigner = TaskAlignedAssigner(topk=4, num_classes=3, small_object_size=16.0)
    out = assigner(scores, pred_boxes, GRID, boxes, labels, idx)
    again = assigner(scores, pred_boxes, GRID, boxes, labels, idx)
    for name in ("fg_mask", "target_gt", "target_labels", "target_boxes", "target_scores", "alignment"):
        assert torch.equal(getattr(out, name), getattr(again, name))
    perm = torch.tensor([2, 0, 1])  # new image i is old image perm[i]
    new_idx = torch.argsort(perm)[idx]
    moved = assigner(scores[perm], pred_boxes[perm], GRID, boxes, labels, new_idx)
    for name in ("fg_mask", "target_gt", "target_scores", "target_boxes"):
        assert torch.equal(getattr(moved, name), getattr(out, name)[perm])


def test_assigner_without_objects():
    scores, pred_boxes, *_ = assigner_case(0)
    out = TaskAlignedAssigner(topk=4, num_classes=3, topk2=1, small_object_size=16.0)(
        scores, pred_boxes, GRID, torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long))
    assert out.fg_mask.shape == (3, GRID.num_anchors) and not out.fg_mask.any()
    assert (out.target_gt == -1).all() and (out.target_scores == 0).all() and (out.target_labels == 3).all()


def test_assigner_many_tiny_objects_matches_reference():
    # 2000 objects of 1 to 5 px in one 256 x 256 image: STAL makes each reach ~4 anchors and they
    # fight over them everywhere.
    gen = torch.Generator().manual_seed(7)
    grid = AnchorGrid(sizes=((32, 32), (16, 16), (8, 8)), strides=STRIDES)
    scores, pred_boxes = random_predictions(gen, 1, 4, grid)
    boxes, labels, idx = random_objects(gen, [0] * 2000, 4, size=256.0, low=1.0, high=5.0)
    assigner = TaskAlignedAssigner(topk=10, num_classes=4, small_object_size=16.0)
    out = assigner(scores, pred_boxes, grid, boxes, labels, idx)
    assert out.fg_mask.sum() > 500
    assert_same_assignment(out, ref.assign(scores, pred_boxes, pixel_points(grid), boxes, labels, idx, topk=10,
                                           small_object_size=16.0))


def crowded_case(seed, count=60, high=12.0, num_images=2):
    """``count`` objects of 2 to ``high`` px per image on the 64 x 64 grid (84 anchors): most have fewer
    than 10 positive candidates, so a dense top-10 takes metric-0 anchors, and those collide."""
    gen = torch.Generator().manual_seed(seed)
    scores, pred_boxes = random_predictions(gen, num_images, 3)
    images = sorted(list(range(num_images)) * count)
    boxes, labels, idx = random_objects(gen, images, 3, low=2.0, high=high)
    return scores, pred_boxes, boxes, labels, idx


# (seed, objects per image, largest side): metric-0 foreground, anchors given to an image's first object
# that is no candidate there (seeds 0, 2), and a metric-0 pick that moves an anchor's target (the last).
CROWDED = [(0, 60, 12.0), (2, 60, 12.0), (4, 100, 40.0)]


def dense_topk_counts(out, scores, pred_boxes, boxes, labels, idx, topk=10, stal=16.0):
    """Metric-0 foreground anchors, and anchors given to an object they are no candidate of."""
    zero_fg = int((out.fg_mask & (out.target_scores == 0)).sum())
    gt, anchor = TaskAlignedAssigner(topk, 3, small_object_size=stal).candidates(GRID, boxes)
    pairs = set(zip(gt.tolist(), anchor.tolist(), strict=True))
    assigned = out.fg_mask.nonzero().tolist()
    outside = sum((int(out.target_gt[b, a]), a) not in pairs for b, a in assigned)
    return zero_fg, outside


@pytest.mark.parametrize("crowd", CROWDED, ids=str)
@pytest.mark.parametrize("topk2", [None, 1])
@pytest.mark.parametrize("stal", [None, 16.0])
def test_assigner_dense_topk_matches_reference(crowd, topk2, stal):
    """Ultralytics' selection (torch.topk over each object's dense row of anchors) against the reference's
    dense rule, in crowded scenes where metric-0 picks reach the foreground and collide."""
    scores, pred_boxes, boxes, labels, idx = crowded_case(*crowd)
    out = TaskAlignedAssigner(topk=10, num_classes=3, topk2=topk2, small_object_size=stal, dense_topk=True)(
        scores, pred_boxes, GRID, boxes, labels, idx)
    expected = ref.assign(scores, pred_boxes, pixel_points(), boxes, labels, idx, topk=10, topk2=topk2,
                          small_object_size=stal, dense_topk=True)
    assert_same_assignment(out, expected)
    assert torch.equal(out.target_boxes[out.fg_mask], boxes[out.target_gt[out.fg_mask]])


def test_dense_topk_cases_exercise_metric_zero_picks():
    """The crowded cases are not vacuous: metric-0 foreground and anchors given, through a collision of
    metric-0 picks, to an image's first object that is no candidate there; the default rule has neither,
    and dense_topk changes the scores somewhere."""
    zero_fg = outside = changed = 0
    for crowd in CROWDED:
        case = crowded_case(*crowd)
        dense = TaskAlignedAssigner(topk=10, num_classes=3, small_object_size=16.0, dense_topk=True)(*case[:2], GRID,
                                                                                                     *case[2:])
        default = TaskAlignedAssigner(topk=10, num_classes=3, small_object_size=16.0)(*case[:2], GRID, *case[2:])
        counts = dense_topk_counts(dense, *case)
        zero_fg, outside = zero_fg + counts[0], outside + counts[1]
        assert dense_topk_counts(default, *case) == (0, 0)
        changed += not torch.equal(dense.target_scores, default.target_scores)
    assert zero_fg > 0 and outside > 0 and changed > 0


def test_dense_topk_equals_default_without_metric_zero_picks():
    """Every object with at least topk positive candidates and no ties: the two selections agree."""
    scores, pred_boxes, boxes, labels, idx = assigner_case(1)
    big = (boxes[:, 2:] - boxes[:, :2]).min(-1).values >= 24  # 3 x 3 stride-8 centres at least
    args = (scores, pred_boxes, GRID, boxes[big], labels[big], idx[big])
    default = TaskAlignedAssigner(topk=4, num_classes=3)(*args)
    assert int(big.sum()) >= 3 and default.fg_mask.any()
    assert not (default.fg_mask & (default.target_scores == 0)).any()
    dense = TaskAlignedAssigner(topk=4, num_classes=3, dense_topk=True)(*args)
    assert_same_assignment(dense, (default.fg_mask, default.target_gt, default.target_scores.double()))


def test_dense_topk_chunking_does_not_change_the_picks():
    """Rows built a few objects at a time pick what one (objects, anchors) torch.topk picks."""
    from losskit.detection.assigner import _DenseRows

    scores, pred_boxes, boxes, labels, idx = crowded_case(0, count=200, num_images=1)
    gt, anchor = TaskAlignedAssigner(10, 3, small_object_size=16.0).candidates(GRID, boxes)
    value = torch.rand(len(gt), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    value[::3] = 0.0  # many metric-0 candidates
    whole = _DenseRows(gt, anchor, len(boxes), GRID.num_anchors, chunk_elements=1 << 30).top(value, 10)
    chunked = _DenseRows(gt, anchor, len(boxes), GRID.num_anchors, chunk_elements=5 * GRID.num_anchors).top(value, 10)
    assert torch.equal(whole, chunked) and int(whole.sum()) > 0
    rows = torch.zeros(len(boxes), GRID.num_anchors, dtype=torch.float64)
    rows[gt, anchor] = value
    picked = torch.zeros_like(rows, dtype=torch.bool).scatter_(1, rows.topk(10, dim=-1).indices, True)
    assert torch.equal(whole, picked[gt, anchor])


# --- YOLOLoss against the reference -------------------------------------------------------------


def make_maps(gen, reg_max, num_classes, num_images=2, sizes=LOSS_SIZES, dtype=torch.float64):
    maps = []
    for h, w in sizes:
        box = torch.randn(num_images, 4 * reg_max, h, w, generator=gen, dtype=torch.float64)
        if reg_max == 1:  # direct distances: positive, 0.5 to 2.5 cells
            box = torch.rand(num_images, 4, h, w, generator=gen, dtype=torch.float64) * 2 + 0.5
        cls = torch.randn(num_images, num_classes, h, w, generator=gen, dtype=torch.float64) * 1.5
        maps.append(torch.cat((box, cls), 1).to(dtype).requires_grad_())
    return maps


def make_targets(gen, num_classes, num_images=2, m=6):
    """Normalized cx, cy, w, h objects; one reaches outside the image (clipped), one overlaps object 0."""
    centre = torch.rand(m, 2, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    wh = torch.rand(m, 2, generator=gen, dtype=torch.float64) * 0.4 + 0.15
    bboxes = torch.cat((centre, wh), -1)
    bboxes = torch.cat((bboxes, bboxes[:1] + t64([[0.03, 0.02, 0.02, -0.03]]), t64([[0.05, 0.5, 0.4, 0.5]])))
    cls = torch.randint(num_classes, (m + 2,), generator=gen).double()
    batch_idx = torch.cat((torch.randint(num_images, (m,), generator=gen), torch.tensor([0, num_images - 1])))
    batch_idx[0] = 0
    return {"batch_idx": batch_idx.double(), "cls": cls[:, None], "bboxes": bboxes}


def reference_branch(maps, targets, *, reg_max, num_classes, topk, topk2=None, small_object_size=16.0,
                     class_weights=None, strides=STRIDES, clip=True):
    """Reference assignment from the maps, then the reference loss on fresh float64 leaves."""
    scores, pred_boxes, points = ref.dense_predictions(maps, strides, reg_max)
    h, w = maps[0].shape[2:]
    gt = ref.targets_to_pixels(targets["bboxes"], (w * strides[0], h * strides[0]), clip)
    labels, idx = targets["cls"].reshape(-1).long(), targets["batch_idx"].long()
    assignment = ref.assign(scores, pred_boxes, points, gt, labels, idx, topk=topk, topk2=topk2,
                            small_object_size=small_object_size)
    leaves = [m.detach().double().clone().requires_grad_() for m in maps]
    per_image = ref.yolo_loss(leaves, strides, gt, labels, *assignment, reg_max=reg_max, num_classes=num_classes,
                              class_weights=class_weights)
    return per_image, leaves, assignment


def compare_gradients(out_per_image, maps, ref_per_image, leaves, weights, rtol=1e-6):
    """d(sum weights * per_image_components)/d maps: the criterion's backward vs reference autograd."""
    ours = torch.autograd.grad((out_per_image * weights).sum(), maps, retain_graph=True)
    theirs = torch.autograd.grad((ref_per_image * weights).sum(), leaves, retain_graph=True)
    for a, b in zip(ours, theirs, strict=True):
        close(a, b, rtol=rtol, atol=1e-11)


@pytest.mark.parametrize(("reg_max", "class_weights", "seed"),
                         [(4, None, 0), (4, None, 1), (16, None, 2), (1, None, 3), (4, [0.5, 2.0, 1.0], 4),
                          (1, [0.0, 1.5, 0.7], 5)])
def test_yolo_loss_matches_reference(reg_max, class_weights, seed):
    gen = torch.Generator().manual_seed(seed)
    maps = make_maps(gen, reg_max, 3)
    targets = make_targets(gen, 3)
    criterion = YOLOLoss(3, strides=STRIDES, reg_max=reg_max, class_weights=class_weights)
    out = criterion(maps, targets)
    expected, leaves, assignment = reference_branch(maps, targets, reg_max=reg_max, num_classes=3, topk=10,
                                                    class_weights=class_weights)
    assert_same_assignment(out.assignment, assignment)
    assert out.assignment.fg_mask.sum() > 5  # the comparison covers foreground terms
    assert list(out.components) == ["box", "cls", "dfl" if reg_max > 1 else "l1"]
    close(out.per_image_components, expected, rtol=1e-6)
    close(torch.stack(list(out.components.values())), expected.sum(0), rtol=1e-6)
    close(out.total, expected.sum(), rtol=1e-6)
    weights = torch.rand(2, 3, generator=gen, dtype=torch.float64) + 0.5  # each image and component
    compare_gradients(out.per_image_components, maps, expected, leaves, weights)
    compare_gradients(out.per_image_components, maps, expected, leaves, torch.ones(2, 3, dtype=torch.float64))


def test_yolo_loss_end2end_matches_reference():
    gen = torch.Generator().manual_seed(11)
    preds = {"one2many": make_maps(gen, 1, 3), "one2one": make_maps(gen, 1, 3)}
    targets = make_targets(gen, 3)
    criterion = YOLOLoss(3, strides=STRIDES, reg_max=1, end2end=True)
    criterion.set_progress(0.3)
    w = one_to_many_weight(0.3)
    assert w == pytest.approx(0.59)  # 0.1 + 0.7 * (1 - 0.3)
    out = criterion(preds, targets)
    o2m, leaves_m, assign_m = reference_branch(preds["one2many"], targets, reg_max=1, num_classes=3, topk=10)
    o2o, leaves_o, assign_o = reference_branch(preds["one2one"], targets, reg_max=1, num_classes=3, topk=7, topk2=1)
    assert_same_assignment(out.assignment, assign_o)  # the one-to-one branch's assignment
    assert_same_assignment(out.branches["one2many"].assignment, assign_m)
    close(out.branches["one2many"].per_image_components, o2m, rtol=1e-6)
    close(out.branches["one2one"].per_image_components, o2o, rtol=1e-6)
    expected = w * o2m + (1 - w) * o2o
    close(out.per_image_components, expected, rtol=1e-6)
    close(out.total, expected.sum(), rtol=1e-6)
    weights = torch.rand(2, 3, generator=gen, dtype=torch.float64) + 0.5
    maps = preds["one2many"] + preds["one2one"]
    ours = torch.autograd.grad((out.per_image_components * weights).sum(), maps)
    theirs = torch.autograd.grad((expected * weights).sum(), leaves_m + leaves_o)
    for a, b in zip(ours, theirs, strict=True):
        close(a, b, rtol=1e-6, atol=1e-11)


def test_yolo_loss_sums_and_scale_by_batch():
    gen = torch.Generator().manual_seed(3)
    maps = make_maps(gen, 4, 3, num_images=3)
    targets = make_targets(gen, 3, num_images=3)
    out = YOLOLoss(3, reg_max=4)(maps, targets)
    per = out.per_image_components
    assert per.shape == (3, 3) and out.per_image.shape == (3,)
    close(per.sum(0), torch.stack(list(out.components.values())), rtol=1e-12)
    close(out.per_image, per.sum(1), rtol=1e-12)
    close(out.per_image.sum(), out.total, rtol=1e-12)
    close(sum(out.components.values()), out.total, rtol=1e-12)
    items = out.items()
    assert list(items) == ["box", "cls", "dfl"] and items["cls"] == pytest.approx(out.components["cls"].item())
    scaled = YOLOLoss(3, reg_max=4, scale_by_batch=True)(maps, targets)
    close(scaled.total, 3 * out.total, rtol=1e-12)
    close(scaled.per_image_components, 3 * per, rtol=1e-12)
    (g,) = torch.autograd.grad(out.total, maps[0])
    (g3,) = torch.autograd.grad(scaled.total, maps[0])
    close(g3, 3 * g, rtol=1e-12, atol=1e-15)


# --- progress, state and config -----------------------------------------------------------------


def test_progress_weights_and_state_dict():
    assert (one_to_many_weight(0.0), one_to_many_weight(0.5), one_to_many_weight(1.0)) == (0.8, 0.45, 0.1)
    assert one_to_many_weight(-1.0) == 0.8 and one_to_many_weight(2.0) == 0.1  # clamped to [0, 1]
    criterion = YOLOLoss(3, end2end=True)
    assert criterion.branch_weights == pytest.approx({"one2many": 0.8, "one2one": 0.2})
    criterion.set_progress(1.0)
    assert criterion.branch_weights == pytest.approx({"one2many": 0.1, "one2one": 0.9})
    assert YOLOLoss(3).branch_weights == {"one2many": 1.0}
    criterion.set_progress(0.37)
    fresh = YOLOLoss(3, end2end=True)
    fresh.load_state_dict(criterion.state_dict())
    assert fresh.progress == 0.37
    assert fresh.branch_weights["one2many"] == pytest.approx(0.1 + 0.7 * 0.63)


def test_get_config_round_trip():
    for kwargs in ({}, {"reg_max": 1, "end2end": True, "class_weights": [1.0, 2.0, 0.5], "small_object_size": None},
                   {"strides": (4, 8), "topk": 13, "scale_by_batch": True, "overlap": "iou"}):
        cfg = YOLOLoss(3, **kwargs).get_config()
        rebuilt = YOLOLoss(**cfg)
        assert rebuilt.get_config() == cfg
        assert (rebuilt.class_weights is None) == (kwargs.get("class_weights") is None)
    assert YOLOLoss(3).get_config()["small_object_size"] == 16.0  # "auto": the second stride


# --- errors and clipping ------------------------------------------------------------------------


def one_object(bbox=(0.5, 0.5, 0.3, 0.3), cls=0.0, batch_idx=0.0):
    return {"batch_idx": torch.tensor([batch_idx]), "cls": torch.tensor([cls]), "bboxes": torch.tensor([list(bbox)])}


@pytest.mark.parametrize(("targets", "message"), [
    (one_object(bbox=(0.5, float("nan"), 0.3, 0.3)), "not finite"),
    (one_object(bbox=(0.5, 0.5, -0.1, 0.3)), "negative width"),
    (one_object(bbox=(1.3, 0.5, 0.2, 0.2)), "entirely outside"),
    (one_object(bbox=(0.5, -0.2, 0.2, 0.3)), "entirely outside"),
    (one_object(cls=3.0), "class is not an integer in \\[0, 3\\)"),
    (one_object(cls=-1.0), "class is not an integer"),
    (one_object(cls=1.5), "class is not an integer"),
    (one_object(batch_idx=2.0), "batch_idx is not an integer in \\[0, 2\\)"),
    (one_object(batch_idx=0.5), "batch_idx is not an integer"),
    ({"cls": torch.zeros(1), "bboxes": torch.zeros(1, 4)}, "batch_idx"),
    ({"batch_idx": torch.zeros(1), "cls": torch.zeros(1), "bboxes": torch.zeros(1, 5)}, "bboxes"),
    ({"batch_idx": torch.zeros(1), "cls": torch.zeros(2), "bboxes": torch.zeros(1, 4)}, "cls"),
])
def test_target_errors(targets, message):
    maps = make_maps(torch.Generator().manual_seed(0), 2, 3, sizes=((4, 4), (2, 2), (1, 1)))
    with pytest.raises(ValueError, match=message):
        YOLOLoss(3, reg_max=2)(maps, targets)


def test_prediction_errors():
    gen = torch.Generator().manual_seed(0)
    maps = make_maps(gen, 2, 3, sizes=((4, 4), (2, 2), (1, 1)))
    targets = one_object()
    with pytest.raises(ValueError, match="4 \\* reg_max \\+ num_classes = 12"):
        YOLOLoss(4, reg_max=2)(maps, targets)  # 8 + 3 channels where 8 + 4 are expected
    with pytest.raises(ValueError, match="list of 3 feature maps"):
        YOLOLoss(3, reg_max=2)(maps[:2], targets)
    with pytest.raises(ValueError, match="end2end=True"):
        YOLOLoss(3, reg_max=2)({"one2many": maps, "one2one": maps}, targets)
    with pytest.raises(ValueError, match="one2one"):
        YOLOLoss(3, reg_max=2, end2end=True)(maps, targets)
    with pytest.raises(ValueError, match="batch size"):
        YOLOLoss(3, reg_max=2)([maps[0], maps[1][:1], maps[2]], targets)
    with pytest.raises(ValueError, match="class_weights"):
        YOLOLoss(3, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="reg_max"):
        YOLOLoss(3, reg_max=0)


def test_boxes_partly_outside_are_clipped():
    # Object 0: cx 0.05, w 0.4 of a 64 px wide image -> x from -9.6 to 16 px -> clipped to [0, 16];
    # cy 0.9, h 0.4 of 48 px -> y from 33.6 to 52.8 -> [33.6, 48].
    gen = torch.Generator().manual_seed(1)
    maps = make_maps(gen, 4, 3)
    targets = {"batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([1.0, 2.0]),
               "bboxes": torch.tensor([[0.05, 0.9, 0.4, 0.4], [0.98, 0.02, 0.3, 0.3]], dtype=torch.float64)}
    out = YOLOLoss(3, reg_max=4)(maps, targets)
    a = out.assignment
    assert (a.target_gt == 0).any() and (a.target_gt == 1).any()
    close(a.target_boxes[a.target_gt == 0], t64([0.0, 33.6, 16.0, 48.0]).expand(int((a.target_gt == 0).sum()), 4))
    fg_boxes = a.target_boxes[a.fg_mask]
    assert (fg_boxes >= 0).all() and (fg_boxes[:, [0, 2]] <= 64).all() and (fg_boxes[:, [1, 3]] <= 48).all()


@pytest.mark.parametrize("reg_max", [4, 1])
def test_unclipped_boxes_match_reference(reg_max):
    """clip_boxes=False (Ultralytics' criterion): the boxes as given, e.g. object 0 of the test above is
    [-9.6, 33.6, 16, 52.8] px; values and gradients against the reference on the unclipped boxes."""
    gen = torch.Generator().manual_seed(1)
    maps = make_maps(gen, reg_max, 3)
    targets = {"batch_idx": torch.tensor([0.0, 1.0, 1.0]), "cls": torch.tensor([1.0, 2.0, 0.0]),
               "bboxes": torch.tensor([[0.05, 0.9, 0.4, 0.4], [0.98, 0.02, 0.3, 0.3], [0.5, 0.5, 0.4, 0.5]],
                                      dtype=torch.float64)}
    out = YOLOLoss(3, reg_max=reg_max, clip_boxes=False)(maps, targets)
    a = out.assignment
    close(a.target_boxes[a.target_gt == 0], t64([-9.6, 33.6, 16.0, 52.8]).expand(int((a.target_gt == 0).sum()), 4))
    expected, leaves, assignment = reference_branch(maps, targets, reg_max=reg_max, num_classes=3, topk=10,
                                                    clip=False)
    assert_same_assignment(a, assignment)
    close(out.per_image_components, expected, rtol=1e-6)
    compare_gradients(out.per_image_components, maps, expected, leaves, torch.ones(2, 3, dtype=torch.float64))
    clipped = YOLOLoss(3, reg_max=reg_max)(maps, targets)
    assert not torch.allclose(clipped.per_image_components[:, 0], out.per_image_components[:, 0])


# --- dtypes and edge cases ----------------------------------------------------------------------


# --- accuracy where users train: float32 and half maps against float64 on the same values ----------

# Budget (relative): float32, 1e-6 on the total and on each component, 1e-4 on the gradient norm. The
# terms are float32 roundings of smooth functions (~1e-7), and the per-image sums over foreground
# anchors are accumulated in float64, so nothing grows with the number of objects; without that, a
# thousand objects in one image cost about 3e-6. Half maps are computed in float32 and the results
# rounded once to the input dtype: the budget adds that rounding, 2^-11 (float16) or 2^-8 (bfloat16),
# to the value and to each gradient entry.
ACCURACY_BUDGET = {torch.float32: (1e-6, 1e-4), torch.float16: (2.0**-11 + 1e-6, 2.0**-11 + 1e-4),
                   torch.bfloat16: (2.0**-8 + 1e-6, 2.0**-8 + 1e-4)}


def scene(seed, *, image=320, objects=(1, 30), sides=(8.0, 160.0), clusters=0, num_images=2, num_classes=20,
          reg_max=16):
    """Float64 head maps (class logits N(-4, 1), box logits N(0, 1) or distances 0.5-4.5 cells) and targets:
    objects per image uniform in ``objects``, sides uniform in ``sides`` px; with ``clusters``, centres
    about that many cluster centres (sd 6% of the image), as in a crowd; boxes kept inside the image."""
    gen = torch.Generator().manual_seed(seed)
    maps = []
    for stride in STRIDES:
        side = image // int(stride)
        box = (torch.randn(num_images, 4 * reg_max, side, side, generator=gen, dtype=torch.float64) if reg_max > 1
               else torch.rand(num_images, 4, side, side, generator=gen, dtype=torch.float64) * 4 + 0.5)
        cls = torch.randn(num_images, num_classes, side, side, generator=gen, dtype=torch.float64) - 4
        maps.append(torch.cat((box, cls), 1))
    counts = torch.randint(objects[0], objects[1] + 1, (num_images,), generator=gen)
    m = int(counts.sum())
    wh = sides[0] + torch.rand(m, 2, generator=gen, dtype=torch.float64) * (sides[1] - sides[0])
    if clusters:
        centres = torch.rand(clusters, 2, generator=gen, dtype=torch.float64) * image
        xy = centres[torch.randint(clusters, (m,), generator=gen)]
        xy = xy + torch.randn(m, 2, generator=gen, dtype=torch.float64) * 0.06 * image
    else:
        xy = torch.rand(m, 2, generator=gen, dtype=torch.float64) * image
    xy = torch.maximum(torch.minimum(xy, image - wh / 2), wh / 2)
    targets = {"batch_idx": torch.repeat_interleave(torch.arange(num_images), counts).double(),
               "cls": torch.randint(num_classes, (m, 1), generator=gen).double(),
               "bboxes": torch.cat((xy, wh), 1) / image}
    return maps, targets


ACCURACY_SCENES = {
    "typical": dict(seed=1),
    "crowded": dict(seed=2, objects=(1200, 1200), sides=(4.0, 40.0), clusters=25, num_images=1),
    "crowded-l1": dict(seed=3, objects=(600, 600), sides=(4.0, 40.0), clusters=25, reg_max=1),
}


def relative_errors(criterion, maps, targets, dtype):
    """Relative errors of the total, each component and the gradient norm in ``dtype`` against float64 on
    the same values, and whether both assigned the same anchors."""
    low = [m.to(dtype).requires_grad_() for m in maps]
    exact = [m.detach().to(dtype).double().requires_grad_() for m in maps]  # the same values
    out, ref = criterion(low, targets), criterion(exact, targets)
    grad, ref_grad = torch.autograd.grad(out.total, low), torch.autograd.grad(ref.total, exact)
    values = torch.stack([out.total.double()] + [v.double() for v in out.components.values()])
    expected = torch.stack([ref.total] + list(ref.components.values())).detach()
    value_error = float(((values.detach() - expected) / expected).abs().max())
    diff = torch.sqrt(sum(((g.double() - r) ** 2).sum() for g, r in zip(grad, ref_grad, strict=True)))
    grad_error = float(diff / torch.sqrt(sum((r**2).sum() for r in ref_grad)))
    return value_error, grad_error, torch.equal(out.assignment.fg_mask, ref.assignment.fg_mask)


@pytest.mark.parametrize("name", ACCURACY_SCENES)
@pytest.mark.parametrize("dtype", list(ACCURACY_BUDGET), ids=str)
def test_accuracy_against_float64(name, dtype):
    options = ACCURACY_SCENES[name]
    maps, targets = scene(**options)
    criterion = YOLOLoss(20, reg_max=options.get("reg_max", 16))
    value_error, grad_error, same_assignment = relative_errors(criterion, maps, targets, dtype)
    value_budget, grad_budget = ACCURACY_BUDGET[dtype]
    assert same_assignment  # the comparison is of the loss, not of a different assignment
    assert value_error <= value_budget, f"{name} {dtype}: value {value_error:.2e} > {value_budget:.1e}"
    assert grad_error <= grad_budget, f"{name} {dtype}: gradient norm {grad_error:.2e} > {grad_budget:.1e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_maps(dtype):
    gen = torch.Generator().manual_seed(2)
    half = [m.detach().to(dtype).requires_grad_() for m in make_maps(gen, 4, 3)]
    full = [m.detach().float().requires_grad_() for m in half]  # the same values in float32
    targets = make_targets(gen, 3)
    criterion = YOLOLoss(3, reg_max=4)
    out_half, out_full = criterion(half, targets), criterion(full, targets)
    assert torch.isfinite(out_half.total) and out_half.total.dtype == dtype  # the input's dtype, as every loss
    assert all(v.dtype == dtype for v in out_half.components.values()) and out_half.per_image.dtype == dtype
    assert torch.equal(out_half.assignment.fg_mask, out_full.assignment.fg_mask)
    # computed in float32 from the same values, then rounded once to the half dtype
    assert out_half.total == out_full.total.to(dtype)
    out_half.total.backward()
    out_full.total.backward()
    for h, f in zip(half, full, strict=True):
        assert h.grad.dtype == dtype and torch.isfinite(h.grad).all()
        torch.testing.assert_close(h.grad.float(), f.grad, rtol=2e-2, atol=1e-2 * float(f.grad.abs().max()))


def test_no_objects():
    gen = torch.Generator().manual_seed(4)
    for reg_max in (4, 1):
        maps = make_maps(gen, reg_max, 3)
        empty = {"batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4)}
        out = YOLOLoss(3, reg_max=reg_max)(maps, empty)
        third = "dfl" if reg_max > 1 else "l1"
        assert out.components["box"].item() == 0.0 and out.components[third].item() == 0.0
        assert not out.assignment.fg_mask.any()
        # every class logit is a negative: 0.5 * sum softplus(x), normalizer max(1, 0) = 1
        r = 4 * reg_max
        expected = 0.5 * sum(torch.nn.functional.softplus(m.detach()[:, r:]).sum() for m in maps)
        close(out.components["cls"], expected, rtol=1e-10)
        assert out.components["cls"] > 0
        out.total.backward()
        for m in maps:
            assert torch.isfinite(m.grad).all()
            assert (m.grad[:, :r] == 0).all()
            close(m.grad[:, r:], 0.5 * torch.sigmoid(m.detach()[:, r:]), rtol=1e-10)


@pytest.mark.parametrize("logit", [-1e4, 1e4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_class_logits_stay_finite(logit, dtype):
    gen = torch.Generator().manual_seed(6)
    maps = []
    for m in make_maps(gen, 4, 3, dtype=dtype):
        m = m.detach().clone()
        m[:, 16:] = logit
        maps.append(m.requires_grad_())
    out = YOLOLoss(3, reg_max=4)(maps, make_targets(gen, 3))
    assert all(torch.isfinite(v) for v in out.components.values())
    if logit < 0:  # every score is 0: metric 0 everywhere -> no foreground
        assert not out.assignment.fg_mask.any()
    else:
        assert out.assignment.fg_mask.any()
    out.total.backward()
    assert all(torch.isfinite(m.grad).all() for m in maps)


def test_assigner_names_mismatched_inputs():
    scores, pred_boxes, boxes, labels, idx = assigner_case(0)
    assigner = TaskAlignedAssigner(topk=4, num_classes=3)
    with pytest.raises(ValueError, match="num_classes=3"):
        assigner(scores[..., :2], pred_boxes, GRID, boxes, labels, idx)
    with pytest.raises(ValueError, match="pred_boxes"):
        assigner(scores, pred_boxes[:, :-1], GRID, boxes, labels, idx)
    with pytest.raises(ValueError, match="anchor points"):
        assigner(scores, pred_boxes, pixel_points()[:-1], boxes, labels, idx)
    with pytest.raises(ValueError, match="must agree"):
        assigner(scores, pred_boxes, GRID, boxes, labels[:-1], idx)


@pytest.mark.parametrize("box_loss", ["giou", "siou"])
def test_box_loss_option_changes_only_the_box_term(box_loss):
    """The box term is sum_fg y (1 - similarity) * 7.5 / N with the chosen similarity of losskit.boxes
    (itself checked against torchvision and the papers); the assignment and other terms are unchanged."""
    gen = torch.Generator().manual_seed(21)
    maps = make_maps(gen, 4, 3)
    targets = make_targets(gen, 3)
    base = YOLOLoss(3, strides=STRIDES, reg_max=4)(maps, targets)
    out = YOLOLoss(3, strides=STRIDES, reg_max=4, box_loss=box_loss)(maps, targets)
    a = out.assignment
    assert torch.equal(a.fg_mask, base.assignment.fg_mask)
    close(out.components["cls"], base.components["cls"])
    close(out.components["dfl"], base.components["dfl"])
    # Predicted boxes at the foreground, in grid units, decoded from the maps by hand.
    points, strides = make_anchors(maps, STRIDES, dtype=torch.float64)
    flat = torch.cat([m.detach().flatten(2) for m in maps], -1).transpose(1, 2)
    pred = dist2bbox(points, dfl_decode(flat[..., :16], 4))[a.fg_mask]
    target = a.target_boxes[a.fg_mask] / strides.expand(2, -1, -1)[a.fg_mask]
    similarity = box_iou(pred, target, kind=box_loss, aligned=True)
    normalizer = a.target_scores.sum().clamp(min=1)
    close(out.components["box"], 7.5 * ((1 - similarity) * a.target_scores[a.fg_mask]).sum() / normalizer)
    assert not torch.allclose(out.components["box"], base.components["box"])
