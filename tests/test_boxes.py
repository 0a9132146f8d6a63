"""Box geometry (losskit.boxes) and the box losses against hand-worked values and float64 references.

References used:
* Hand-worked pairs, with the working in comments.
* ``tests/reference_boxes.py``: float64 formulas from the papers, one pair at a time in plain Python.
* Peer conventions (mmdetection's CIoU gate and log IoU loss) worked by hand; torchvision and
  Ultralytics vectors are replayed by ``tests/test_golden.py``.
* Hypothesis properties: symmetry, translation and scale invariance, bounds, zero at identity.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import losskit
from losskit.boxes import box_area, box_convert, box_iou, box_iou_3d, default_eps, probiou
from tests import reference_boxes as ref


def close(actual, expected, rtol=1e-7, atol=1e-9):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def T(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


KINDS = ("iou", "giou", "diou", "ciou", "eiou", "siou")
LOSSES = {  # name -> (function, kind of box tensor)
    "iou": (losskit.iou_loss, "xyxy"),
    "giou": (losskit.giou_loss, "xyxy"),
    "diou": (losskit.diou_loss, "xyxy"),
    "ciou": (losskit.ciou_loss, "xyxy"),
    "eiou": (lambda x, t, **k: losskit.eiou_loss(x, t, gamma=0.5, **k), "xyxy"),
    "siou": (losskit.siou_loss, "xyxy"),
    "wiou": (lambda x, t, **k: losskit.wiou_loss(x, t, iou_mean=0.5, **k), "xyxy"),
    "nwd": (losskit.nwd_loss, "xyxy"),
    "probiou": (losskit.probiou_loss, "xywhr"),
    "giou_3d": (losskit.giou_3d_loss, "xyzxyz"),
}


def random_pairs(gen, n, spread=0.6, dims=2):
    """(prediction, target) corner boxes: target sides in [2, 6]; the prediction's corner moved by up to
    ``spread`` and its sides scaled by 0.6 to 1.4 (valid boxes, overlapping when ``spread`` is small)."""
    def uniform(low, high):
        return low + (high - low) * torch.rand(n, dims, generator=gen, dtype=torch.float64)

    lo, size = uniform(0.0, 10.0), uniform(2.0, 6.0)
    pred_lo, pred_size = lo + uniform(-spread, spread), size * uniform(0.6, 1.4)
    return torch.cat([pred_lo, pred_lo + pred_size], -1), torch.cat([lo, lo + size], -1)


def random_rotated(gen, n):
    target = torch.cat([torch.rand(n, 2, generator=gen, dtype=torch.float64) * 10,
                        2 + 4 * torch.rand(n, 2, generator=gen, dtype=torch.float64),
                        (torch.rand(n, 1, generator=gen, dtype=torch.float64) - 0.5) * math.pi], -1)
    pred = target + 0.8 * (2 * torch.rand(n, 5, generator=gen, dtype=torch.float64) - 1)
    return pred, target


# --- hand-worked values -----------------------------------------------------------------------

BIG, QUARTER = [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]
UNIT, DIAGONAL = [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 2.0, 2.0]


def test_quarter_size_box_inside_the_other():
    a, b = T([BIG]), T([QUARTER])
    # IoU: intersection 1 (the small box), union 4: 0.25. The big box encloses both: GIoU = IoU.
    # Centres (1, 1) and (0.5, 0.5): rho^2 = 0.5; enclosing diagonal^2 = 2^2 + 2^2 = 8: DIoU = 0.25 - 1/16.
    # EIoU adds (2 - 1)^2 / 2^2 for each side: 0.1875 - 0.5 = -0.3125.
    expected = {"iou": 0.25, "giou": 0.25, "diou": 0.1875, "eiou": -0.3125, "ciou": 0.1875}  # same aspect: v = 0
    for kind, value in expected.items():
        close(box_iou(a, b, kind=kind, aligned=True), T([value]))
    close(losskit.iou_loss(a, b, mode="square"), T(1 - 0.25**2))  # 0.9375
    close(losskit.iou_loss(a, b, mode="log"), T(math.log(4)))


def test_diagonally_adjacent_unit_boxes():
    a, b = T([UNIT]), T([DIAGONAL])
    # Touching at the corner (1, 1): intersection 0, IoU 0. Enclosing box [0, 2]^2, area 4, union 2:
    # GIoU = 0 - (4 - 2) / 4 = -0.5. Centres (0.5, 0.5), (1.5, 1.5): rho^2 = 2, c^2 = 8: DIoU = -0.25.
    close(box_iou(a, b, kind="iou"), T([[0.0]]))
    close(box_iou(a, b, kind="giou"), T([[-0.5]]))
    close(box_iou(a, b, kind="diou"), T([[-0.25]]))
    close(losskit.giou_loss(a, b), T(1.5))
    # 3-D corner neighbours: volumes 1, enclosing 8: GIoU = 0 - (8 - 2) / 8 = -0.75.
    close(box_iou_3d(T([UNIT[:2] + [0.0] + UNIT[2:] + [1.0]]), T([[1.0, 1.0, 1.0, 2.0, 2.0, 2.0]]), kind="giou"),
          T([[-0.75]]))


def test_identical_boxes_give_similarity_one_and_zero_loss():
    box = T([[1.0, 2.0, 4.0, 7.0]])
    for kind in KINDS:
        close(box_iou(box, box, kind=kind), T([[1.0]]))
    for fn, fmt in LOSSES.values():
        x = {"xyxy": box, "xywhr": T([[1.0, 2.0, 3.0, 5.0, 0.4]]), "xyzxyz": T([[0.0, 1, 2, 3, 4, 5]])}[fmt]
        close(fn(x, x.clone()), T(0.0), atol=1e-12, rtol=0)


def test_far_apart_boxes():
    a, b = T([[0.0, 0.0, 1.0, 1.0]]), T([[1000.0, 1000.0, 1001.0, 1001.0]])
    # GIoU -> -1 as the enclosing box dwarfs the union: 0 - (1001^2 - 2) / 1001^2.
    close(box_iou(a, b, kind="giou"), T([[-(1001.0**2 - 2) / 1001.0**2]]))
    # DIoU: rho^2 = 2 * 1000^2, c^2 = 2 * 1001^2.
    close(box_iou(a, b, kind="diou"), T([[-(1000 / 1001) ** 2]]))


def test_ciou_hand_worked_and_mmdetection_gate():
    # pred 2x1 and target 1x2 sharing the corner (0, 0): intersection 1, union 3: IoU 1/3.
    # Centres (1, 0.5), (0.5, 1): rho^2 = 0.5; enclosing [0, 2]^2: c^2 = 8, rho^2/c^2 = 1/16.
    # v = 4/pi^2 (atan(1/2) - atan(2))^2; alpha = v / (1 - 1/3 + v).
    pred, target = T([[0.0, 0.0, 2.0, 1.0]]), T([[0.0, 0.0, 1.0, 2.0]])
    v = 4 / math.pi**2 * (math.atan(0.5) - math.atan(2.0)) ** 2
    alpha = v / (2 / 3 + v)
    close(losskit.ciou_loss(pred, target), T(2 / 3 + 1 / 16 + alpha * v))
    # mmdetection gates alpha on IoU > 0.5: IoU 1/3 leaves no shape term.
    close(losskit.ciou_loss(pred, target, alpha_gate=0.5), T(2 / 3 + 1 / 16))
    # IoU 0.75 (4x3 inside 4x4) passes the gate: rho^2 = 0.25, c^2 = 32; v = 4/pi^2 (atan 1 - atan 4/3)^2.
    pred, target = T([[0.0, 0.0, 4.0, 3.0]]), T([[0.0, 0.0, 4.0, 4.0]])
    v = 4 / math.pi**2 * (math.atan(1.0) - math.atan(4 / 3)) ** 2
    expected = 0.25 + 0.25 / 32 + v / (0.25 + v) * v
    close(losskit.ciou_loss(pred, target, alpha_gate=0.5), T(expected))
    close(losskit.ciou_loss(pred, target), T(expected))


def test_mmdetection_log_iou_loss():
    # mmdet IoULoss(mode="log", eps=1e-6): -log(clamp(IoU, eps)). IoU 0.25 -> ln 4; disjoint -> -ln 1e-6.
    pred, target = T([BIG, UNIT]), T([QUARTER, [5.0, 5.0, 6.0, 6.0]])
    close(losskit.iou_loss(pred, target, mode="log", eps=1e-6, reduction="none"), T([math.log(4), -math.log(1e-6)]))


def test_siou_coincident_centres_and_diagonal_offsets():
    # Same centre (1, 1), sides 2 and 4: sigma = 0, so the angle and distance costs are 0 (finite, not NaN).
    # IoU 4/16; omega_w = omega_h = |2 - 4| / 4 = 0.5, shape cost 2 (1 - e^-0.5)^4: loss 0.75 + (1 - e^-.5)^4.
    pred = T([[0.0, 0.0, 2.0, 2.0]], ).requires_grad_()
    target = T([[-1.0, -1.0, 3.0, 3.0]])
    loss = losskit.siou_loss(pred, target)
    close(loss, T(0.75 + (1 - math.exp(-0.5)) ** 4))
    (grad,) = torch.autograd.grad(loss, pred)
    assert torch.isfinite(grad).all()
    # Centre line at 45 degrees: Lambda = sin(90 deg) = 1, gamma = 1. Boxes 2x2 offset by (1, 1):
    # IoU 1/7, enclosing 3x3: rho_x = rho_y = 1/9; distance cost 2 (1 - e^{-1/9}); shape cost 0.
    close(losskit.siou_loss(T([[0.0, 0.0, 2.0, 2.0]]), T([[1.0, 1.0, 3.0, 3.0]])),
          T(1 - 1 / 7 + (1 - math.exp(-1 / 9))))


def test_wiou_versions_hand_worked():
    # pred [0,0,2,2], target [1,0,3,2]: IoU 2/6, L_IoU = 2/3; rho^2 = 1, enclosing 3x2: R = exp(1/13).
    pred, target = T([[0.0, 0.0, 2.0, 2.0]]), T([[1.0, 0.0, 3.0, 2.0]])
    l_v1 = math.exp(1 / 13) * 2 / 3
    close(losskit.wiou_loss(pred, target, version=1), T(l_v1))
    # v2 with mean 1/3: beta = 2, beta^0.5 = sqrt 2.
    close(losskit.wiou_loss(pred, target, version=2, iou_mean=1 / 3), T(math.sqrt(2) * l_v1))
    # v3 with mean 1/3: beta = 2, r = 2 / (3 * 1.9^(2 - 3)) = 2 * 1.9 / 3.
    close(losskit.wiou_loss(pred, target, iou_mean=torch.tensor(1 / 3)), T(2 * 1.9 / 3 * l_v1))
    with pytest.raises(ValueError, match="iou_mean"):
        losskit.wiou_loss(pred, target)


def test_nwd_and_probiou_hand_worked():
    # NWD: same 4x4 size, centres 5 apart: W2 = 5; with C = 5: 1 - e^-1.
    close(losskit.nwd_loss(T([[0.0, 0.0, 4.0, 4.0]]), T([[3.0, 4.0, 7.0, 8.0]]), constant=5.0), T(1 - math.exp(-1)))
    # Sizes differ only: 2x2 and 4x4 at one centre: W2^2 = (1 - 2)^2 + (1 - 2)^2 = 2.
    close(losskit.nwd_loss(T([[1.0, 1.0, 3.0, 3.0]]), T([[0.0, 0.0, 4.0, 4.0]])), T(1 - math.exp(-math.sqrt(2) / 12.8)))
    # ProbIoU: equal 4x2 boxes 4 apart along x. Sigma = diag(16/12, 4/12) for both:
    # B_D = (1/8) 4^2 / (16/12) = 1.5, ln term 0; H = sqrt(1 - e^-1.5).
    a, b = T([[0.0, 0.0, 4.0, 2.0, 0.0]]), T([[4.0, 0.0, 4.0, 2.0, 0.0]])
    close(losskit.probiou_loss(a, b, mode="bhattacharyya"), T(1.5))
    close(losskit.probiou_loss(a, b), T(math.sqrt(1 - math.exp(-1.5))))
    # The same rectangle written turned by 90 degrees with w and h swapped: ProbIoU 1.
    close(probiou(a, T([[0.0, 0.0, 2.0, 4.0, math.pi / 2]]), aligned=True), T([1.0]))
    # Same centre, 4x2 versus 2x4 unturned: Sigma1 = diag(4/3, 1/3), Sigma2 = diag(1/3, 4/3), S = diag(5/6, 5/6):
    # B_D = 1/2 ln((25/36) / sqrt(4/9 * 4/9)) = 1/2 ln(25/16).
    close(probiou(a, T([[0.0, 0.0, 2.0, 4.0, 0.0]]), aligned=True), T([1 - math.sqrt(1 - 4 / 5)]))


# --- pairwise, aligned, batched ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_aligned_is_the_diagonal_of_pairwise_and_pairwise_is_every_pair(gen, kind):
    b1, b2 = random_pairs(gen, 5, spread=3.0)
    pairwise = box_iou(b1, b2, kind=kind)
    close(box_iou(b1, b2, kind=kind, aligned=True), pairwise.diagonal())
    # N != M (torchvision #6317 was wrong only then): entry (i, j) is the aligned value of (b1[i], b2[j]).
    wide = box_iou(b1[:3], b2, kind=kind)
    assert wide.shape == (3, 5)
    expected = box_iou(b1[:3, None].expand(3, 5, 4), b2[None].expand(3, 5, 4), kind=kind, aligned=True)
    close(wide, expected)


def test_pairwise_rotated_and_3d(gen):
    r1, r2 = random_rotated(gen, 4)
    close(probiou(r1, r2, aligned=True), probiou(r1, r2).diagonal())
    c1, c2 = random_pairs(gen, 4, dims=3)
    for kind in ("iou", "giou"):
        close(box_iou_3d(c1, c2, kind=kind, aligned=True), box_iou_3d(c1, c2, kind=kind).diagonal())


def test_batched_leading_dimensions(gen):
    b1, _ = random_pairs(gen, 2 * 3 * 4, spread=3.0)
    b2, _ = random_pairs(gen, 2 * 3 * 5, spread=3.0)
    b1, b2 = b1.reshape(2, 3, 4, 4), b2.reshape(2, 3, 5, 4)
    out = box_iou(b1, b2, kind="ciou")
    assert out.shape == (2, 3, 4, 5)
    for i in range(2):
        for j in range(3):
            close(out[i, j], box_iou(b1[i, j], b2[i, j], kind="ciou"))
    # Leading dimensions broadcast: one set of boxes against a batch of sets.
    close(box_iou(b1[0, :1], b2[0], kind="giou"), torch.stack([box_iou(b1[0, 0], b2[0, j], kind="giou")
                                                               for j in range(3)]))
    # Aligned with leading dims, and losses keep them in "none".
    loss = losskit.giou_loss(b1[..., :4, :], b2[..., :4, :], reduction="none")
    assert loss.shape == (2, 3, 4)
    close(loss, 1 - box_iou(b1, b2[..., :4, :], kind="giou", aligned=True))
    with pytest.raises(ValueError, match="boxes2"):
        box_iou(b1, b2[:, :2], kind="iou")


# --- box_convert ------------------------------------------------------------------------------

AXIS = ("xyxy", "xywh", "cxcywh")


@pytest.mark.parametrize("src", AXIS)
@pytest.mark.parametrize("dst", AXIS)
def test_box_convert_round_trips_and_agrees_with_the_definitions(gen, src, dst):
    xyxy, _ = random_pairs(gen, 6)
    x1, y1, x2, y2 = xyxy.unbind(-1)
    forms = {"xyxy": xyxy, "xywh": torch.stack([x1, y1, x2 - x1, y2 - y1], -1),
             "cxcywh": torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)}
    close(box_convert(forms[src], src, dst), forms[dst])
    close(box_convert(box_convert(forms[src], src, dst), dst, src), forms[src])


def test_box_convert_rotated_round_trips(gen):
    rotated, _ = random_rotated(gen, 8)
    corners = box_convert(rotated, "xywhr", "xyxyxyxy")
    assert corners.shape == (8, 8)
    back = box_convert(corners, "xyxyxyxy", "xywhr")
    close(back, rotated)  # angles in (-pi/2, pi/2) come back unchanged
    close(box_convert(back, "cxcywhr", "xyxyxyxy"), corners)
    # Each corner is at distance sqrt(w^2 + h^2) / 2 from the centre; the shoelace area is w * h.
    dist = (corners.unflatten(-1, (4, 2)) - rotated[:, None, :2]).norm(dim=-1)
    close(dist, (rotated[:, 2:4].norm(dim=-1) / 2)[:, None].expand(8, 4))
    close(box_area(corners, "xyxyxyxy"), rotated[:, 2] * rotated[:, 3])
    # Starting the corners one place later describes the same rectangle (w, h swapped, turned 90 degrees).
    shifted = corners.unflatten(-1, (4, 2)).roll(-1, dims=1).flatten(-2)
    close(box_convert(box_convert(shifted, "xyxyxyxy", "xywhr"), "xywhr", "xyxyxyxy"), shifted)
    # Axis-aligned -> rotated has angle 0; rotated -> axis-aligned is refused.
    close(box_convert(T([[0.0, 0.0, 4.0, 2.0]]), "xyxy", "xywhr"), T([[2.0, 1.0, 4.0, 2.0, 0.0]]))
    with pytest.raises(ValueError, match="angle"):
        box_convert(rotated, "xywhr", "xyxy")


def test_box_convert_integer_and_half_inputs_do_not_overflow():
    # uint8: x1 + x2 = 450 wraps to 194 in uint8 arithmetic (torchvision #9594); computed in float32 here.
    out = box_convert(torch.tensor([[200, 100, 250, 150]], dtype=torch.uint8), "xyxy", "cxcywh")
    assert out.dtype == torch.float32
    close(out, torch.tensor([[225.0, 125.0, 50.0, 50.0]]))
    # Integer cxcywh -> xyxy: 5 - 3/2 = 3.5, not floored to 3 (torchvision #8887).
    close(box_convert(torch.tensor([[5, 5, 3, 3]]), "cxcywh", "xyxy"), torch.tensor([[3.5, 3.5, 6.5, 6.5]]))
    # float16: x1 + x2 = 100000 > 65504 would be inf; the centre 50000 is in range (stored as the nearest
    # float16, 49984: the spacing there is 32).
    half = box_convert(torch.tensor([[40000.0, 40000.0, 60000.0, 60000.0]], dtype=torch.float16), "xyxy", "cxcywh")
    assert half.dtype == torch.float16
    close(half, torch.tensor([[50000.0, 50000.0, 20000.0, 20000.0]]).half())
    assert box_convert(torch.tensor([[0, 0, 4, 2, 0]]), "xywhr", "xyxyxyxy").dtype == torch.float32
    # Integer boxes in box_iou: float32 out.
    assert box_iou(torch.tensor([[0, 0, 2, 2]]), torch.tensor([[0, 0, 1, 1]])).dtype == torch.float32


# --- float64 references from the papers ------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_similarities_match_the_paper_references(gen, kind):
    b1, b2 = random_pairs(gen, 32, spread=2.5)
    close(box_iou(b1, b2, kind=kind, aligned=True), ref.per_pair(ref.SIMILARITIES[kind], b1, b2))


def test_3d_and_probiou_match_the_references(gen):
    c1, c2 = random_pairs(gen, 16, spread=2.5, dims=3)
    close(box_iou_3d(c1, c2, aligned=True), ref.per_pair(ref.iou_3d, c1, c2))
    close(box_iou_3d(c1, c2, kind="giou", aligned=True), ref.per_pair(ref.giou_3d, c1, c2))
    close(losskit.giou_3d_loss(c1, c2, reduction="none"), 1 - ref.per_pair(ref.giou_3d, c1, c2))
    r1, r2 = random_rotated(gen, 16)
    close(probiou(r1, r2, aligned=True), ref.per_pair(ref.probiou, r1, r2))
    close(losskit.probiou_loss(r1, r2, mode="bhattacharyya", reduction="none"), ref.per_pair(ref.bhattacharyya, r1, r2))


def test_losses_match_the_paper_references(gen):
    x, t = random_pairs(gen, 32, spread=2.5)
    none = {"reduction": "none"}
    for mode in ("linear", "square", "log"):
        close(losskit.iou_loss(x, t, mode=mode, **none), ref.per_pair(ref.iou_loss, x, t, mode=mode))
    for kind, fn in [("giou", losskit.giou_loss), ("diou", losskit.diou_loss), ("ciou", losskit.ciou_loss),
                     ("eiou", losskit.eiou_loss), ("siou", losskit.siou_loss)]:
        close(fn(x, t, **none), 1 - ref.per_pair(ref.SIMILARITIES[kind], x, t))
    close(losskit.ciou_loss(x, t, alpha_gate=0.5, **none), 1 - ref.per_pair(ref.ciou, x, t, gate=0.5))
    close(losskit.siou_loss(x, t, theta=2.0, **none), 1 - ref.per_pair(ref.siou, x, t, theta=2.0))
    close(losskit.eiou_loss(x, t, gamma=0.5, **none), ref.per_pair(ref.focal_eiou_loss, x, t, gamma=0.5))
    for version in (1, 2, 3):
        close(losskit.wiou_loss(x, t, version=version, iou_mean=0.4, **none),
              ref.per_pair(ref.wiou_loss, x, t, version=version, iou_mean=0.4))
    close(losskit.nwd_loss(x, t, constant=3.0, **none), ref.per_pair(ref.nwd_loss, x, t, constant=3.0))


def test_formats_give_the_same_losses(gen):
    x, t = random_pairs(gen, 8)
    for fmt in ("xywh", "cxcywh"):
        for fn in (losskit.giou_loss, losskit.ciou_loss, losskit.siou_loss, losskit.nwd_loss):
            close(fn(box_convert(x, "xyxy", fmt), box_convert(t, "xyxy", fmt), fmt=fmt, reduction="none"),
                  fn(x, t, reduction="none"))


# --- gradient policies ------------------------------------------------------------------------


def test_ciou_gradient_treats_alpha_as_a_constant(gen):
    x, t = random_pairs(gen, 8, spread=1.5)
    alpha = T([ref.ciou_alpha_v(a, b)[0] for a, b in zip(x.tolist(), t.tolist(), strict=True)])

    def v_of(boxes):  # the aspect term, differentiable, written out here
        w1, h1 = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        w2, h2 = t[:, 2] - t[:, 0], t[:, 3] - t[:, 1]
        return 4 / math.pi**2 * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2

    x1, x2, x3 = (x.clone().requires_grad_() for _ in range(3))
    (g_default,) = torch.autograd.grad(losskit.ciou_loss(x1, t, reduction="sum"), x1)
    (g_constant,) = torch.autograd.grad((losskit.diou_loss(x2, t, reduction="none") + alpha * v_of(x2)).sum(), x2)
    close(g_default, g_constant)
    (g_full,) = torch.autograd.grad(losskit.ciou_loss(x3, t, alpha_no_grad=False, reduction="sum"), x3)
    assert not torch.allclose(g_full, g_default)
    assert torch.autograd.gradcheck(lambda b: losskit.ciou_loss(b, t, alpha_no_grad=False, reduction="sum"),
                                    (x.clone().requires_grad_(),))


def test_focal_eiou_and_wiou_focus_are_detached_weights(gen):
    x, t = random_pairs(gen, 8, spread=1.5)
    # Focal-EIoU: gradient of IoU^gamma * L_EIoU with IoU^gamma held constant.
    focal = T([ref.iou(a, b) ** 0.5 for a, b in zip(x.tolist(), t.tolist(), strict=True)])
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    (g1,) = torch.autograd.grad(losskit.eiou_loss(x1, t, gamma=0.5, reduction="sum"), x1)
    (g2,) = torch.autograd.grad((focal * losskit.eiou_loss(x2, t, reduction="none")).sum(), x2)
    close(g1, g2)
    # WIoU v3: gradient of r * L_v1 with the gain r held constant (beta uses the detached IoU loss).
    l_iou = 1 - T([ref.iou(a, b) for a, b in zip(x.tolist(), t.tolist(), strict=True)])
    beta = l_iou / 0.3
    gain = beta / (3.0 * 1.9 ** (beta - 3.0))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    (g1,) = torch.autograd.grad(losskit.wiou_loss(x1, t, iou_mean=0.3, reduction="sum"), x1)
    (g2,) = torch.autograd.grad((gain * losskit.wiou_loss(x2, t, version=1, reduction="none")).sum(), x2)
    close(g1, g2)


def test_wiou_v1_detaches_only_the_enclosing_box(gen):
    x, t = random_pairs(gen, 4, spread=1.5)
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(losskit.wiou_loss(xg, t, version=1, reduction="sum"), xg)
    # Finite differences of R * L_IoU with the enclosing box's W^2 + H^2 frozen at x.
    def frozen(boxes):
        g = []
        for a, b, a0 in zip(boxes.tolist(), t.tolist(), x.tolist(), strict=True):
            *_, dx, dy, _ = ref._parts(a, b)
            _, _, cw, ch, *_ = ref._parts(a0, b)
            g.append(math.exp((dx * dx + dy * dy) / (cw * cw + ch * ch)) * (1 - ref.iou(a, b)))
        return sum(g)

    h = 1e-6
    numeric = torch.zeros_like(x)
    for idx in range(x.numel()):
        step = torch.zeros(x.numel(), dtype=torch.float64)
        step[idx] = h
        step = step.reshape(x.shape)
        numeric.view(-1)[idx] = (frozen(x + step) - frozen(x - step)) / (2 * h)
    close(grad, numeric, rtol=1e-6, atol=1e-8)


# --- focal and v3 forms: the parts of the contract their deliberate detaches keep out ---------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_focal_eiou_and_wiou_v3_dtypes_reductions_and_empty_input(gen, dtype):
    x, t = random_pairs(gen, 6)
    w = torch.rand(6, generator=gen, dtype=torch.float64) + 0.5
    for fn in (lambda a, b, **k: losskit.eiou_loss(a, b, gamma=0.5, **k),
               lambda a, b, **k: losskit.wiou_loss(a, b, iou_mean=torch.tensor(0.6, dtype=a.dtype), **k)):
        none = fn(x, t, reduction="none", weight=w)
        close(fn(x, t, weight=w), none.sum() / w.sum())
        close(fn(x, t, reduction="sum", weight=w), none.sum())
        xd = x.to(dtype).requires_grad_()
        out = fn(xd, t.to(dtype), reduction="none")
        assert out.dtype == dtype
        close(out.double(), fn(xd.detach().double(), t.to(dtype).double(), reduction="none"), rtol=2e-2, atol=2e-2)
        (grad,) = torch.autograd.grad(out.sum(), xd)
        assert grad.dtype == dtype and torch.isfinite(grad).all()
        empty = x[:0].clone().requires_grad_()
        value = fn(empty, t[:0])
        assert value.item() == 0.0
        assert torch.autograd.grad(value, empty)[0].shape == (0, 4)


# --- Hypothesis properties --------------------------------------------------------------------

coord = st.floats(-100.0, 100.0, allow_nan=False)
side = st.floats(0.5, 50.0, allow_nan=False)
boxes_st = st.tuples(coord, coord, side, side).map(lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]])
rotated_st = st.tuples(coord, coord, side, side, st.floats(-3.0, 3.0)).map(list)
shift_st = st.tuples(st.floats(-1000.0, 1000.0), st.floats(-1000.0, 1000.0))
scale_st = st.floats(0.01, 100.0)


@given(boxes_st, boxes_st)
def test_property_symmetry(a, b):
    a, b = T([a]), T([b])
    for kind in KINDS:
        close(box_iou(a, b, kind=kind), box_iou(b, a, kind=kind), rtol=1e-9, atol=1e-12)
    close(losskit.nwd_loss(a, b), losskit.nwd_loss(b, a))


@given(rotated_st, rotated_st)
def test_property_probiou_symmetry_and_range(a, b):
    a, b = T([a]), T([b])
    forward, backward = probiou(a, b), probiou(b, a)
    close(forward, backward, rtol=1e-9, atol=1e-9)
    assert 0.0 <= forward.item() <= 1.0


@given(boxes_st, boxes_st, shift_st, scale_st)
def test_property_translation_and_scale_invariance(a, b, shift, scale):
    a, b = T([a]), T([b])
    move = T([[shift[0], shift[1], shift[0], shift[1]]])
    for kind in KINDS:
        base = box_iou(a, b, kind=kind)
        close(box_iou(a + move, b + move, kind=kind), base, rtol=1e-6, atol=1e-8)
        close(box_iou(a * scale, b * scale, kind=kind), base, rtol=1e-6, atol=1e-8)
    # NWD is translation-invariant but not scale-invariant: its constant C is an absolute size.
    close(losskit.nwd_loss(a + move, b + move), losskit.nwd_loss(a, b), rtol=1e-6, atol=1e-8)


def test_nwd_is_not_scale_invariant():
    a, b = T([[0.0, 0.0, 4.0, 4.0]]), T([[3.0, 4.0, 7.0, 8.0]])  # W2 = 5, then 50
    assert losskit.nwd_loss(a * 10, b * 10) > losskit.nwd_loss(a, b) + 0.3


@given(rotated_st, rotated_st, shift_st, scale_st)
def test_property_probiou_translation_and_scale_invariance(a, b, shift, scale):
    a, b = T([a]), T([b])
    base = probiou(a, b)
    move = T([[shift[0], shift[1], 0.0, 0.0, 0.0]])
    grow = T([[scale, scale, scale, scale, 1.0]])
    close(probiou(a + move, b + move), base, rtol=1e-6, atol=1e-7)
    close(probiou(a * grow, b * grow), base, rtol=1e-6, atol=1e-7)


@given(boxes_st, boxes_st)
def test_property_bounds_and_zero_at_identity(a, b):
    a, b = T([a]), T([b])
    giou = losskit.giou_loss(a, b).item()
    assert 0.0 <= giou < 2.0
    assert 0.0 <= losskit.iou_loss(a, b).item() <= 1.0
    assert 0.0 <= losskit.diou_loss(a, b).item() < 2.0
    assert 0.0 <= losskit.nwd_loss(a, b).item() < 1.0
    for name, (fn, fmt) in LOSSES.items():
        if fmt == "xyxy":
            assert fn(a, a.clone()).abs().item() < 1e-12, name


# --- numerical safety -------------------------------------------------------------------------

DEGENERATE = {  # name -> (prediction, target), xyxy
    "identical": ([1.0, 1.0, 5.0, 4.0], [1.0, 1.0, 5.0, 4.0]),
    "zero width prediction": ([2.0, 1.0, 2.0, 4.0], [1.0, 1.0, 5.0, 4.0]),
    "zero height target": ([1.0, 1.0, 5.0, 4.0], [1.0, 2.0, 5.0, 2.0]),
    "identical zero-width lines": ([2.0, 1.0, 2.0, 4.0], [2.0, 1.0, 2.0, 4.0]),
    "identical points": ([3.0, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0]),
    "point against box": ([3.0, 3.0, 3.0, 3.0], [1.0, 1.0, 5.0, 4.0]),
    "coincident centres": ([2.0, 2.0, 4.0, 4.0], [1.0, 1.0, 5.0, 5.0]),
    "far apart": ([0.0, 0.0, 1.0, 1.0], [900.0, 900.0, 905.0, 903.0]),
    "huge coordinates": ([10000.0, 20000.0, 50000.0, 60000.0], [12000.0, 21000.0, 52000.0, 61000.0]),
}


def _as_format(box, fmt):
    x1, y1, x2, y2 = box
    if fmt == "xywhr":
        return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.3]
    if fmt == "xyzxyz":
        return [x1, y1, x1, x2, y2, x2]
    return box


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_and_extreme_boxes_give_finite_values_and_gradients(case, dtype):
    pred, target = DEGENERATE[case]
    extras = {"ciou": [{"alpha_no_grad": False}, {"alpha_gate": 0.5}], "iou": [{"mode": "log"}],
              "probiou": [{"mode": "bhattacharyya"}], "nwd": [{"constant": 1.0}]}
    for name, (fn, fmt) in LOSSES.items():
        for options in [{}, *extras.get(name, [])]:
            x = torch.tensor([_as_format(pred, fmt)], dtype=dtype, requires_grad=True)
            t = torch.tensor([_as_format(target, fmt)], dtype=dtype)
            loss = fn(x, t, **options)
            (grad,) = torch.autograd.grad(loss, x)
            assert torch.isfinite(loss), (name, options)
            assert torch.isfinite(grad).all(), (name, options, grad)
    for kind in KINDS:
        a, b = torch.tensor([pred], dtype=dtype), torch.tensor([target], dtype=dtype)
        assert torch.isfinite(box_iou(a, b, kind=kind)).all()


def test_degenerate_conventions():
    # Two zero-area boxes: the 0/0 ratios are 0, so IoU 0 even when identical (torchvision: 0/(0+eps)).
    line = T([[2.0, 1.0, 2.0, 4.0]])
    close(box_iou(line, line), T([[0.0]]))
    close(losskit.giou_loss(line, line), T(1.0))
    # A zero-area box has a degenerate Gaussian: ProbIoU 0 (B_D at its bound, 100).
    close(probiou(T([[0.0, 0.0, 0.0, 2.0, 0.0]]), T([[0.0, 0.0, 2.0, 2.0, 0.0]])), T([[0.0]]))
    # Real boxes do not depend on eps at all (guarded division, not "+ eps").
    a, b = random_pairs(torch.Generator().manual_seed(1), 8)
    close(box_iou(a, b, kind="ciou", eps=1e-3), box_iou(a, b, kind="ciou", eps=1e-12), rtol=0, atol=0)
    assert default_eps(torch.float32) == 1e-7 and default_eps(torch.bfloat16) == 1e-6


# --- validation -------------------------------------------------------------------------------


def test_invalid_boxes_raise_naming_the_argument_while_checks_are_on():
    good, bad = T([[0.0, 0.0, 2.0, 2.0]]), T([[3.0, 0.0, 2.0, 2.0]])  # x2 < x1
    with pytest.raises(ValueError, match="input has 1 of 1 boxes"):
        losskit.giou_loss(bad, good)
    with pytest.raises(ValueError, match="target .*x1 <= x2"):
        losskit.ciou_loss(good, bad)
    with pytest.raises(ValueError, match="boxes2"):
        box_iou(good, bad)
    with pytest.raises(ValueError, match="w >= 0"):
        losskit.giou_loss(good, T([[1.0, 1.0, -1.0, 2.0]]), fmt="cxcywh")
    with pytest.raises(ValueError, match="w >= 0"):
        losskit.probiou_loss(T([[0.0, 0.0, -1.0, 2.0, 0.0]]), T([[0.0, 0.0, 1.0, 2.0, 0.0]]))
    with losskit.set_checks(False):
        assert torch.isfinite(losskit.giou_loss(bad, good))


NONFINITE = {"NaN": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("value", sorted(NONFINITE))
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_nonfinite_coordinates_raise_naming_the_argument_and_never_give_zero(name, value, dtype):
    # NWD and ProbIoU returned exactly 0 here: their square-root guard tested x > 0, false for NaN.
    # Every box loss is bounded or saturating somewhere, so an infinite box can also give a finite
    # loss with a NaN gradient; the box value check rejects NaN and inf coordinates, naming them.
    fn, fmt = LOSSES[name]
    good = torch.tensor([_as_format([0.0, 0.0, 2.0, 3.0], fmt)], dtype=dtype)
    poisoned = good.clone()
    poisoned[0, 1] = NONFINITE[value]
    with pytest.raises(ValueError, match="input has 1 of 1 boxes with NaN or infinite coordinates"):
        fn(poisoned, good)
    with pytest.raises(ValueError, match="target has 1 of 1 boxes with NaN or infinite coordinates"):
        fn(good, poisoned)
    if value == "NaN":  # unchecked, the NaN comes out again
        with losskit.set_checks(False):
            assert torch.isnan(fn(poisoned, good)) and torch.isnan(fn(good, poisoned))


def test_float16_coordinates_that_overflowed_upstream_are_rejected():
    # 70000 rounds to inf in float16 (largest finite: 65504).
    pred = torch.tensor([[0.0, 0.0, 70000.0, 4.0]]).half()
    target = torch.tensor([[0.0, 0.0, 3.0, 4.0]]).half()
    assert pred.isinf().any()
    for fn in (losskit.nwd_loss, losskit.giou_loss, losskit.ciou_loss):
        with pytest.raises(ValueError, match="input has 1 of 1 boxes with NaN or infinite"):
            fn(pred, target)


def test_safe_sqrt_and_probiou_keep_nan():
    from losskit.boxes import bhattacharyya, safe_sqrt

    x = torch.tensor([4.0, 0.0, -1.0, float("nan")], requires_grad=True)
    y = safe_sqrt(x)
    assert y[:3].tolist() == [2.0, 0.0, 0.0] and y[3].isnan()
    (grad,) = torch.autograd.grad(y[:3].sum(), x)
    assert grad[:3].tolist() == [0.25, 0.0, 0.0]
    # A NaN box against a degenerate one (area 0, the bound 100 otherwise) stays NaN.
    nan_box, flat = T([[0.0, float("nan"), 2.0, 2.0, 0.0]]), T([[0.0, 0.0, 0.0, 2.0, 0.0]])
    assert bhattacharyya(nan_box, flat, 1e-7).isnan().all()
    assert bhattacharyya(T([[0.0, 0.0, 2.0, 2.0, 0.0]]), flat, 1e-7).item() == 100.0


def test_bad_options_and_shapes_raise():
    a = T([[0.0, 0.0, 2.0, 2.0]])
    with pytest.raises(ValueError, match="fmt"):
        losskit.giou_loss(a, a, fmt="yxyx")
    with pytest.raises(ValueError, match="input must hold boxes of shape"):
        losskit.giou_loss(a[:, :3], a[:, :3])
    with pytest.raises(ValueError, match="kind"):
        box_iou(a, a, kind="miou")
    with pytest.raises(ValueError, match="mode"):
        losskit.iou_loss(a, a, mode="cube")
    with pytest.raises(ValueError, match="alpha_gate"):
        losskit.ciou_loss(a, a, alpha_gate=1.5)
    with pytest.raises(ValueError, match="theta"):
        losskit.siou_loss(a, a, theta=0.5)
    with pytest.raises(ValueError, match="version"):
        losskit.wiou_loss(a, a, version=4)
    with pytest.raises(ValueError, match="iou_mean"):
        losskit.wiou_loss(a, a, iou_mean=0.0)
    with pytest.raises(TypeError, match="floating"):
        losskit.giou_loss(a.long(), a)


# --- WIoU module state ------------------------------------------------------------------------


def test_wiou_module_state_is_explicit():
    pred, target = T([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 3.0, 3.0]]), T([[1.0, 0.0, 3.0, 2.0], [0.0, 0.0, 3.0, 2.0]])
    module = losskit.WIoULoss(momentum=0.1, iou_mean=0.5)
    assert "iou_mean" in dict(module.named_buffers()) and "iou_mean" in module.state_dict()
    before = module.iou_mean.clone()
    value = module(pred, target)
    close(module.iou_mean, before)  # forward never changes state
    close(value, losskit.wiou_loss(pred, target, iou_mean=0.5), rtol=1e-6, atol=1e-8)
    # update(batch mean): 0.9 * 0.5 + 0.1 * 0.2 = 0.47.
    close(module.update(0.2), torch.tensor(0.47))
    # update(input, target): IoU losses 2/3 and 1/3, mean 1/2: 0.9 * 0.47 + 0.1 * 0.5 = 0.473.
    close(module.update(pred, target), torch.tensor(0.473))
    close(module(pred, target), losskit.wiou_loss(pred, target, iou_mean=module.iou_mean.item()), rtol=1e-6,
          atol=1e-8)
    # Config carries the current mean and the momentum; .to() moves the buffer; state_dict restores it.
    config = module.get_config()
    assert config["momentum"] == 0.1 and config["iou_mean"] == pytest.approx(0.473)
    rebuilt = losskit.get(config)
    close(rebuilt.iou_mean, module.iou_mean)
    assert rebuilt.get_config() == config
    assert rebuilt.to(torch.float64).iou_mean.dtype == torch.float64
    fresh = losskit.WIoULoss(momentum=0.1)
    fresh.load_state_dict(module.state_dict())
    close(fresh.iou_mean, module.iou_mean)
    # The paper's momentum from the schedule: after total_steps updates the start weighs 5%.
    scheduled = losskit.WIoULoss(total_steps=200, iou_mean=1.0)
    for _ in range(200):
        scheduled.update(0.0)
    close(scheduled.iou_mean, torch.tensor(0.05), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="momentum"):
        losskit.WIoULoss().update(0.3)
    with pytest.raises(ValueError, match="not both"):
        losskit.WIoULoss(momentum=0.1, total_steps=10)


# --- torch.compile ----------------------------------------------------------------------------


@pytest.mark.slow
def test_fullgraph_compile_matches_eager_for_giou_ciou_siou():
    def three(x, t):
        return losskit.giou_loss(x, t) + 2 * losskit.ciou_loss(x, t) + 3 * losskit.siou_loss(x, t)

    gen = torch.Generator().manual_seed(0)
    x, t = random_pairs(gen, 16, spread=2.0)
    x, t = x.float(), t.float()
    x[0], t[0] = t[0], t[0]  # identical pair: the guarded branches are in the graph too
    x[1, 2] = x[1, 0]  # zero width
    x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager = three(x_eager, t)
    compiled = torch.compile(three, fullgraph=True, dynamic=False)(x_compiled, t)
    torch.testing.assert_close(compiled, eager)
    eager.backward()
    compiled.backward()
    torch.testing.assert_close(x_compiled.grad, x_eager.grad)


CLOSED_FORM_CASES = [
    ("iou_loss", {}), ("iou_loss", {"mode": "square"}), ("iou_loss", {"mode": "log"}),
    ("giou_loss", {}), ("diou_loss", {}), ("ciou_loss", {}), ("ciou_loss", {"alpha_no_grad": False}),
    ("ciou_loss", {"alpha_gate": 0.5}), ("eiou_loss", {}), ("eiou_loss", {"gamma": 0.5}), ("giou_3d_loss", {}),
]


@pytest.mark.parametrize(("name", "options"), CLOSED_FORM_CASES)
def test_closed_form_gradient_equals_autograd_of_the_expression(name, options):
    # The fast path (only the prediction needs a gradient) writes the loss and its gradient out by
    # hand (losskit._core.iou_grad); a target that needs a gradient too sends the same call through
    # autograd on the expressions of losskit.boxes. In float64 they must agree on every pair: close,
    # apart, identical, sharing edges, zero-width, and in several blocks (6000 pairs).
    gen = torch.Generator().manual_seed(7)
    dims = 3 if name == "giou_3d_loss" else 2
    parts = [random_pairs(gen, 2000, spread=0.6, dims=dims), random_pairs(gen, 2000, spread=8.0, dims=dims),
             random_pairs(gen, 2000, spread=0.01, dims=dims)]
    x = torch.cat([p for p, _ in parts])
    t = torch.cat([q for _, q in parts])
    x[0] = t[0]  # identical pair
    x[1, :dims] = t[1, :dims]  # shared low corner
    x[2, dims] = x[2, 0]  # zero width
    x[3, dims:] = t[3, dims:] + 0.5  # equal sides, shifted: ties of the enclosing box's rule
    fn = getattr(losskit, name)
    x_fast, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    fast = fn(x_fast, t, reduction="none", **options)
    plain = fn(x_plain, t.clone().requires_grad_(), reduction="none", **options)
    weights = torch.rand(fast.shape, generator=gen, dtype=torch.float64)
    (fast * weights).sum().backward()
    (plain * weights).sum().backward()
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(x_fast.grad, x_plain.grad, rtol=1e-10, atol=1e-12)


def _dissimilar_rotated_pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """xywhr pairs whose sides span e^-3..e^3 (aspect ratios up to 400, one box up to 400x the other's
    side), any angle; rounded to float32 so both precisions see the same boxes."""
    g = torch.Generator().manual_seed(seed)

    def boxes():
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 10
        wh = torch.exp(torch.empty(n, 2, dtype=torch.float64).uniform_(-3, 3, generator=g))
        angle = torch.empty(n, 1, dtype=torch.float64).uniform_(-3.2, 3.2, generator=g)
        return torch.cat([xy, wh, angle], 1).float()

    return boxes(), boxes()


def test_probiou_float32_keeps_its_digits_for_very_different_boxes():
    # Before the distance was written as sums of non-negative terms, 145 of these 20,000 float32
    # pairs gave NaN (1 + tr M + det M cancelled below zero) and the rest were off by up to 2.5x.
    a, b = _dissimilar_rotated_pairs(20_000)
    exact = probiou(a.double(), b.double(), aligned=True)
    fast = probiou(a, b, aligned=True).double()
    assert not torch.isnan(fast).any()
    assert (fast - exact).abs().max() < 1e-6
    kept = exact > 1e-6  # relative error where ProbIoU is not vanishingly small
    assert ((fast - exact).abs() / exact)[kept].max() < 1e-4
    # one pair from a rotated-box criterion (a large prediction against a 0.27 px object)
    big = torch.tensor([[0.355, 7.244, 10.162, 13.658, 0.294]])
    small = torch.tensor([[4.100, 1.386, 0.272, 0.272, -0.072]])
    torch.testing.assert_close(probiou(big, small, aligned=True).double(),
                               probiou(big.double(), small.double(), aligned=True), rtol=1e-5, atol=0)


def test_probiou_distance_matches_the_matrix_formula():
    # the Bhattacharyya distance from explicit 2x2 covariances (float64), on the same pairs
    a, b = (x.double() for x in _dissimilar_rotated_pairs(200, seed=1))

    def covariance(boxes):
        c, s = torch.cos(boxes[:, 4]), torch.sin(boxes[:, 4])
        rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        return rot @ torch.diag_embed(boxes[:, 2:4] ** 2 / 12) @ rot.transpose(-1, -2)

    s1, s2 = covariance(a), covariance(b)
    mean = (s1 + s2) / 2
    d = (a[:, :2] - b[:, :2]).unsqueeze(-1)
    centre = (d.transpose(-1, -2) @ torch.linalg.inv(mean) @ d).flatten() / 8
    spread = 0.5 * torch.log(torch.linalg.det(mean) / torch.sqrt(torch.linalg.det(s1) * torch.linalg.det(s2)))
    expected = (centre + spread).clamp(0, 100)
    torch.testing.assert_close(-torch.log(probiou(a, b, aligned=True) * (2 - probiou(a, b, aligned=True))),
                               expected, rtol=1e-9, atol=1e-9)
