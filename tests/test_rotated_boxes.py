"""Rotated and 3-D box geometry and losses against shapely and float64 transcriptions of the papers."""

from __future__ import annotations

import math

import pytest
import torch

import losskit
from losskit.boxes import (
    kitti_to_xyzwlhr,
    normalize_angle,
    nuscenes_to_xyzwlhr,
    rotated_box_iou,
    rotated_box_iou_3d,
)
from tests import reference_rotated as ref

KINDS = ("iou", "giou", "diou")
HALF = (torch.float16, torch.bfloat16)


def _random_boxes(n: int, gen: torch.Generator, extent: float = 6.0) -> torch.Tensor:
    """``xywhr`` boxes with centres in [0, extent), sides in [0.2, 4.2) and angles anywhere in (-4, 4)."""
    u = torch.rand(n, 5, generator=gen, dtype=torch.float64)
    return torch.stack([u[:, 0] * extent, u[:, 1] * extent, u[:, 2] * 4 + 0.2, u[:, 3] * 4 + 0.2,
                        (u[:, 4] - 0.5) * 8], -1)


def _random_boxes_3d(n: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, 7, generator=gen, dtype=torch.float64)
    return torch.cat([u[:, :3] * 3, u[:, 3:6] * 3 + 0.3, (u[:, 6:] - 0.5) * 8], -1)


def _reference(fn, b1: torch.Tensor, b2: torch.Tensor, **options) -> torch.Tensor:
    rows = zip(b1.tolist(), b2.tolist(), strict=True)
    return torch.tensor([fn(a, b, **options) for a, b in rows], dtype=torch.float64)


# --- the geometry against shapely --------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_rotated_box_iou_matches_shapely_aligned_and_pairwise(kind):
    gen = torch.Generator().manual_seed(0)
    b1, b2 = _random_boxes(150, gen), _random_boxes(150, gen)
    expected = _reference(ref.rotated_iou, b1, b2, kind=kind)
    overlapping = (_reference(ref.rotated_iou, b1, b2) > 0).sum()
    assert 30 < overlapping < 120  # many pairs overlap, many do not
    torch.testing.assert_close(rotated_box_iou(b1, b2, kind=kind, aligned=True), expected, rtol=0, atol=1e-12)
    pairwise = rotated_box_iou(b1[:7], b2[:9], kind=kind)
    grid = _reference(ref.rotated_iou, b1[:7].repeat_interleave(9, 0), b2[:9].repeat(7, 1), kind=kind)
    torch.testing.assert_close(pairwise, grid.view(7, 9), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_rotated_box_iou_3d_matches_shapely(kind):
    gen = torch.Generator().manual_seed(1)
    b1, b2 = _random_boxes_3d(120, gen), _random_boxes_3d(120, gen)
    expected = _reference(ref.rotated_iou_3d, b1, b2, kind=kind)
    overlapping = (_reference(ref.rotated_iou_3d, b1, b2) > 0).sum()
    assert 20 < overlapping < 100
    torch.testing.assert_close(rotated_box_iou_3d(b1, b2, kind=kind, aligned=True), expected, rtol=0, atol=1e-12)
    batched = rotated_box_iou_3d(b1[:12].view(2, 6, 7), b2[:10].view(2, 5, 7), kind=kind)
    assert batched.shape == (2, 6, 5)
    torch.testing.assert_close(batched[1, 2, 3], expected.new_tensor(ref.rotated_iou_3d(
        b1[8].tolist(), b2[8].tolist(), kind)), rtol=0, atol=1e-12)


def test_gradient_matches_central_differences_of_shapely():
    """The autograd gradient of the polygon IoU against central differences of the shapely IoU."""
    gen = torch.Generator().manual_seed(2)
    b2 = _random_boxes(40, gen)
    b1 = b2 + torch.cat([torch.rand(40, 4, generator=gen, dtype=torch.float64) - 0.5,
                         (torch.rand(40, 1, generator=gen, dtype=torch.float64) - 0.5) * 0.6], -1)
    b1[:, 2:4] = b1[:, 2:4].abs() + 0.1
    for kind in KINDS:
        x = b1[:6].clone().requires_grad_()
        rotated_box_iou(x, b2[:6], kind=kind, aligned=True).sum().backward()
        step = 1e-6
        numeric = torch.zeros(6, 5, dtype=torch.float64)
        for i in range(6):
            for j in range(5):
                hi, lo = b1[i].clone(), b1[i].clone()
                hi[j] += step
                lo[j] -= step
                numeric[i, j] = (ref.rotated_iou(hi.tolist(), b2[i].tolist(), kind)
                                 - ref.rotated_iou(lo.tolist(), b2[i].tolist(), kind)) / (2 * step)
        torch.testing.assert_close(x.grad, numeric, rtol=1e-5, atol=1e-7)


def test_invariances_translation_rotation_scale_and_half_turn():
    gen = torch.Generator().manual_seed(3)
    b1, b2 = _random_boxes(60, gen), _random_boxes(60, gen)
    base = {k: rotated_box_iou(b1, b2, kind=k, aligned=True) for k in KINDS}
    turn = 0.7
    rot = torch.tensor([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]], dtype=torch.float64)

    def moved(b):
        centre = (b[:, :2] + torch.tensor([100.0, -40.0], dtype=torch.float64)) @ rot.T * 3
        return torch.cat([centre, b[:, 2:4] * 3, b[:, 4:] + turn], -1)

    flipped = b1 + torch.tensor([0, 0, 0, 0, math.pi], dtype=torch.float64)
    for kind in KINDS:
        torch.testing.assert_close(rotated_box_iou(moved(b1), moved(b2), kind=kind, aligned=True), base[kind],
                                   rtol=0, atol=1e-10)
        torch.testing.assert_close(rotated_box_iou(flipped, b2, kind=kind, aligned=True), base[kind],
                                   rtol=0, atol=1e-12)
        torch.testing.assert_close(rotated_box_iou(b2, b1, kind=kind, aligned=True), base[kind], rtol=0, atol=1e-12)


def test_axis_aligned_iou_equals_box_iou():
    gen = torch.Generator().manual_seed(4)
    b1, b2 = _random_boxes(50, gen), _random_boxes(50, gen)
    b1[:, 4], b2[:, 4] = 0.0, torch.randint(-2, 3, (50,), generator=gen).double() * (math.pi / 2)
    # a quarter turn swaps the sides of the axis-aligned box
    swap = (b2[:, 4].abs() / (math.pi / 2)).round().remainder(2) == 1
    cxcywh2 = torch.where(swap.unsqueeze(-1), b2[:, [0, 1, 3, 2]], b2[:, :4])
    expected = losskit.boxes.box_iou(b1[:, :4], cxcywh2, fmt="cxcywh", aligned=True)
    torch.testing.assert_close(rotated_box_iou(b1, b2, aligned=True), expected, rtol=0, atol=1e-12)


# --- degenerate cases --------------------------------------------------------------------------

SQUARE = [0.0, 0.0, 2.0, 2.0, 0.0]
DEGENERATE = {
    "coincident": [0.0, 0.0, 2.0, 2.0, 0.0],
    "coincident_quarter_turn": [0.0, 0.0, 2.0, 2.0, math.pi / 2],
    "coincident_half_turn": [0.0, 0.0, 2.0, 2.0, math.pi],
    "nested": [0.25, -0.25, 1.0, 0.5, 0.3],
    "nested_touching_inside": [0.5, 0.0, 1.0, 1.0, 0.0],
    "touching_edge": [2.0, 0.0, 2.0, 2.0, 0.0],
    "touching_corner": [2.0, 2.0, 2.0, 2.0, 0.0],
    "touching_corner_quarter_turn": [2.0, 2.0, 2.0, 2.0, math.pi / 2],
    "collinear_edges": [1.5, 0.5, 2.0, 1.0, 0.0],
    "collinear_edges_half_turn": [1.5, 0.5, 2.0, 1.0, math.pi],
    "zero_width": [0.5, 0.0, 0.0, 1.0, 0.0],
    "zero_area_outside": [3.0, 0.0, 0.0, 0.0, 0.0],
    "shifted_half": [1.0, 0.0, 2.0, 2.0, 0.0],
}


def _pairs():
    names = sorted(DEGENERATE)
    b2 = torch.tensor([SQUARE] * len(names), dtype=torch.float64)
    b1 = torch.tensor([DEGENERATE[n] for n in names], dtype=torch.float64)
    # the same shapes turned by 0.6 about the origin: collinear edges at a slant
    turn = 0.6
    rot = torch.tensor([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]], dtype=torch.float64)

    def slant(b):
        return torch.cat([b[:, :2] @ rot.T, b[:, 2:4], b[:, 4:] + turn], -1)

    return names + [n + "_slanted" for n in names], torch.cat([b1, slant(b1)]), torch.cat([b2, slant(b2)])


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, *HALF))
@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_pairs_give_the_reference_value_and_finite_gradients(kind, dtype):
    names, b1, b2 = _pairs()
    x = b1.to(dtype).requires_grad_()
    t = b2.to(dtype)
    value = rotated_box_iou(x, t, kind=kind, aligned=True)
    value.sum().backward()
    assert value.dtype == dtype
    assert torch.isfinite(x.grad).all(), f"{kind} {dtype}: non-finite gradient"
    # the reference on the boxes as rounded to dtype (the slanted ones move)
    expected = _reference(ref.rotated_iou, x.detach().double(), t.double(), kind=kind)
    # hand-checked anchors: coincident 1, shifted by half 1/3, touching 0, nested 0.5 / 4
    anchors = {"coincident": 1.0, "shifted_half": 1 / 3, "touching_edge": 0.0, "nested": 0.125}
    for name, v in anchors.items():
        if kind == "iou":
            assert expected[names.index(name)].item() == pytest.approx(v, abs=1e-6)
    tol = 1e-12 if dtype == torch.float64 else 1e-6 if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(value.double(), expected, rtol=0, atol=tol, msg=lambda m: f"{kind} {dtype}: {m}")


def test_zero_area_pairs_are_zero_with_zero_gradient():
    point = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.3]], dtype=torch.float64, requires_grad=True)
    for kind in KINDS:
        value = rotated_box_iou(point, point.detach(), kind=kind, aligned=True)
        (grad,) = torch.autograd.grad(value.sum(), point)
        assert value.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("dtype", (torch.float32, *HALF))
def test_degenerate_pairs_keep_losses_finite(dtype):
    _, b1, b2 = _pairs()
    keep = (b1[:, 2] * b1[:, 3]) > 0  # the Gaussian losses clamp zero sides; take real boxes
    b1, b2 = b1[keep], b2[keep]
    losses = {"rotated_iou": {"kind": "giou"}, "gwd": {"tau": 1.0}, "kld": {}, "kfiou": {"fun": "ln"},
              "probiou": {}}
    for name, options in losses.items():
        x = b1.to(dtype).requires_grad_()
        value = losskit.get({"name": name, **options})(x, b2.to(dtype))
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(x.grad).all(), f"{name} {dtype}"


# --- the losses against float64 transcriptions --------------------------------------------------

GAUSSIAN = [
    ("gwd", ref.gwd, {}),
    ("gwd", ref.gwd, {"fun": "sqrt", "tau": 1.0, "alpha": 2.0}),
    ("gwd", ref.gwd, {"fun": "none", "normalize": False}),
    ("kld", ref.kld, {}),
    ("kld", ref.kld, {"tau": 1.0}),
    ("kld", ref.kld, {"fun": "none", "sqrt": False, "alpha": 0.5}),
    ("kfiou", ref.kfiou, {}),
    ("kfiou", ref.kfiou, {"fun": "ln"}),
    ("kfiou", ref.kfiou, {"fun": "exp", "beta": 0.5}),
]


@pytest.mark.parametrize(("name", "reference", "options"), GAUSSIAN)
def test_gaussian_losses_match_the_papers(name, reference, options):
    gen = torch.Generator().manual_seed(5)
    p, t = _random_boxes(80, gen), _random_boxes(80, gen)
    p[:5] = t[:5] + 1e-3  # close pairs, where the papers' differences of traces cancel
    fn = getattr(losskit, f"{name}_loss")
    torch.testing.assert_close(fn(p, t, reduction="none", **options), _reference(reference, p, t, **options),
                               rtol=1e-9, atol=0)


def test_gaussian_losses_are_half_turn_periodic_and_zero_at_the_target():
    gen = torch.Generator().manual_seed(6)
    p, t = _random_boxes(30, gen), _random_boxes(30, gen)
    turned = p + torch.tensor([0, 0, 0, 0, math.pi], dtype=torch.float64)
    for fn in (losskit.gwd_loss, losskit.kld_loss, losskit.kfiou_loss):
        torch.testing.assert_close(fn(turned, t, reduction="none"), fn(p, t, reduction="none"))
    assert losskit.gwd_loss(t, t, reduction="sum").item() == 0.0
    assert losskit.kld_loss(t, t, reduction="sum").item() == 0.0
    # KFIoU is 1/3 at the target: 1 - 1/3, and -ln(1/3) with fun="ln" (eps 0 to be exact)
    torch.testing.assert_close(losskit.kfiou_loss(t, t, eps=0.0, reduction="none"), torch.full((30,), 2 / 3,
                               dtype=torch.float64))
    torch.testing.assert_close(losskit.kfiou_loss(t, t, eps=0.0, fun="ln", reduction="none"),
                               torch.full((30,), math.log(3), dtype=torch.float64))


@pytest.mark.parametrize("mode", ("linear", "log"))
def test_rotated_iou_loss_matches_mmrotate_conventions(mode):
    """mmrotate ``RotatedIoULoss``: IoU clamped to eps, then ``1 - IoU`` or ``-ln IoU``."""
    gen = torch.Generator().manual_seed(7)
    p, t = _random_boxes(60, gen), _random_boxes(60, gen)
    iou = _reference(ref.rotated_iou, p, t)
    # mmrotate clamps the IoU to eps in both modes; losskit only in log mode, which changes the
    # linear loss by at most eps (1 instead of 1 - 1e-6 for disjoint pairs)
    expected = -iou.clamp_min(1e-6).log() if mode == "log" else 1 - iou
    ours = losskit.rotated_iou_loss(p, t, mode=mode, eps=1e-6, reduction="none")
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    assert (iou < 1e-6).any()  # disjoint pairs reach the floor: -ln 1e-6


def test_rotated_iou_losses_are_one_minus_the_similarities():
    gen = torch.Generator().manual_seed(8)
    p, t = _random_boxes(40, gen), _random_boxes(40, gen)
    for kind in KINDS:
        torch.testing.assert_close(losskit.rotated_iou_loss(p, t, kind=kind, reduction="none"),
                                   1 - rotated_box_iou(p, t, kind=kind, aligned=True))
    p3, t3 = _random_boxes_3d(40, gen), _random_boxes_3d(40, gen)
    for kind in KINDS:
        torch.testing.assert_close(losskit.rotated_iou_3d_loss(p3, t3, kind=kind, reduction="none"),
                                   1 - _reference(ref.rotated_iou_3d, p3, t3, kind=kind), rtol=0, atol=1e-12)


# --- conventions and bad input --------------------------------------------------------------------


def test_kitti_conversion_keeps_the_iou_of_the_camera_frame():
    """KITTI camera labels: the BEV is the camera's (x, z) plane, the heading (cos ry, -sin ry) there."""
    gen = torch.Generator().manual_seed(9)
    n = 30
    u = torch.rand(n, 7, generator=gen, dtype=torch.float64)
    labels = torch.cat([u[:, :3] * 4, u[:, 3:6] * 3 + 0.5, (u[:, 6:] - 0.5) * 7], -1)  # x, y, z, h, w, l, ry
    other = labels.flip(0)
    expected = []
    def bev(box):  # shapely's xywhr in the (x, z) plane: heading angle atan2(-sin ry, cos ry) = -ry
        return (box[0], box[2], box[5], box[4], -box[6])

    for a, b in zip(labels.tolist(), other.tolist(), strict=True):
        area = ref.rectangle(*bev(a)).intersection(ref.rectangle(*bev(b))).area
        # heights: y points down and y is the bottom, so a box spans [y - h, y]
        overlap = max(0.0, min(a[1], b[1]) - max(a[1] - a[3], b[1] - b[3]))
        inter = area * overlap
        expected.append(inter / (a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter))
    ours = rotated_box_iou_3d(kitti_to_xyzwlhr(labels), kitti_to_xyzwlhr(other), aligned=True)
    torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    # a car facing forward (ry = -pi/2, along the camera's z) has yaw 0 along x'
    ahead = kitti_to_xyzwlhr(torch.tensor([[0.0, 1.5, 20.0, 1.5, 1.6, 4.0, -math.pi / 2]], dtype=torch.float64))
    torch.testing.assert_close(ahead, torch.tensor([[20.0, 0.0, -0.75, 1.6, 4.0, 1.5, 0.0]], dtype=torch.float64))


def test_nuscenes_conversion_and_angle_normalization():
    out = nuscenes_to_xyzwlhr(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[2.0, 4.5, 1.5]]),
                              torch.tensor([3 * math.pi / 2]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0, 3.0, 2.0, 4.5, 1.5, -math.pi / 2]]))
    angles = torch.tensor([-math.pi / 2, math.pi / 2, 2.0, -7.0], dtype=torch.float64)
    wrapped = normalize_angle(angles)
    assert ((wrapped >= -math.pi / 2) & (wrapped < math.pi / 2)).all()
    torch.testing.assert_close(torch.sin(2 * wrapped), torch.sin(2 * angles))  # same angle modulo pi
    # wrapping does not change any rotated measure
    boxes = torch.tensor([[0.0, 0.0, 3.0, 1.0, a] for a in angles.tolist()], dtype=torch.float64)
    normal = torch.cat([boxes[:, :4], wrapped.unsqueeze(-1)], -1)
    torch.testing.assert_close(rotated_box_iou(boxes, boxes.flip(0), aligned=True),
                               rotated_box_iou(normal, normal.flip(0), aligned=True), rtol=0, atol=1e-12)


@pytest.mark.parametrize("fn", (rotated_box_iou, rotated_box_iou_3d))
def test_bad_boxes_raise_naming_the_row(fn):
    width = 5 if fn is rotated_box_iou else 7
    good = torch.ones(3, width)
    negative = good.clone()
    negative[2, 3] = -1.0
    with pytest.raises(ValueError, match="negative"):
        fn(negative, good)
    for bad_angle in (float("nan"), float("inf")):
        angle = good.clone()
        angle[1, -1] = bad_angle
        with pytest.raises(ValueError, match=r"angle \(first at row 1 "):
            fn(good, angle)
    with pytest.raises(ValueError, match="kind"):
        fn(good, good, kind="ciou")
    with pytest.raises(ValueError, match=rf"\(\.\.\., {width}\)"):
        fn(torch.ones(3, 4), torch.ones(3, 4))


def test_losses_reject_bad_boxes_and_options():
    good = torch.ones(3, 5)
    nan_angle = good.clone()
    nan_angle[1, 4] = float("nan")
    for fn in (losskit.rotated_iou_loss, losskit.gwd_loss, losskit.kld_loss, losskit.kfiou_loss):
        with pytest.raises(ValueError, match="flat index 1"):
            fn(nan_angle, good)
        negative = good.clone()
        negative[0, 2] = -1.0
        with pytest.raises(ValueError, match="negative width or height"):
            fn(good, negative)
    with pytest.raises(ValueError, match="kind='iou'"):
        losskit.rotated_iou_loss(good, good, kind="giou", mode="log")
    with pytest.raises(ValueError, match="tau"):
        losskit.gwd_loss(good, good, tau=0.5)
    with pytest.raises(ValueError, match="fun"):
        losskit.kfiou_loss(good, good, fun="log1p")


def test_close_pairs_given_a_quarter_turn_apart_keep_float32_accuracy():
    """A wide prediction close to a tall target turned by pi/2 (the same rectangle, described the
    other way round): the Gaussian losses' terms must not cancel in float32 (float64 on the same
    inputs is the reference)."""
    gen = torch.Generator().manual_seed(10)
    target = torch.cat([torch.rand(64, 2, generator=gen, dtype=torch.float64) * 600,
                        torch.rand(64, 2, generator=gen, dtype=torch.float64) * 40 + 20,
                        (torch.rand(64, 1, generator=gen, dtype=torch.float64) - 0.5) * 3], -1)
    nudge = (torch.rand(64, 5, generator=gen, dtype=torch.float64) - 0.5) * torch.tensor([1e-2] * 4 + [2e-4])
    pred = target[:, [0, 1, 3, 2, 4]] + torch.tensor([0, 0, 0, 0, math.pi / 2]) + nudge
    p32, t32 = pred.float(), target.float()
    for fn in (losskit.gwd_loss, losskit.kld_loss, losskit.rotated_iou_loss):
        exact = fn(p32.double(), t32.double(), reduction="none")
        assert exact.max() < 1e-2  # close pairs
        error = ((fn(p32, t32, reduction="none").double() - exact).abs() / exact).max()
        assert error < 1e-5, f"{fn.__name__}: {error:.2e}"
