"""YOLOPoseLoss: Ultralytics 8.4.190 golden vectors, float64 references of the keypoint terms, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losskit.detection import YOLOPoseLoss
from losskit.detection.pose import COCO_KEYPOINT_SIGMAS
from tests.replay_yolo_tasks import AffineFlow, cases, check_replay, common_options, leaves, load

POSE_CASES = cases("pose")


def test_every_pose_case_is_present():
    assert set(POSE_CASES) == {"pose_v8", "pose_v8_coco", "pose26_e2e_rle", "pose26_crowded"}
    for name in POSE_CASES:
        assert load(name)["source"]["version"] == "8.4.190"


@pytest.mark.parametrize("name", POSE_CASES)
def test_matches_ultralytics(name):
    """Total, box/pose/kobj/cls/dfl-or-l1(/rle) items of each branch, foreground and every gradient (maps,
    keypoints, their sigmas, the flow's parameters) against v8PoseLoss / E2ELoss(PoseLoss26)."""
    case = load(name)
    cfg = case["config"]
    flow = AffineFlow(cfg["flow"]["loc"], cfg["flow"]["log_scale"]) if cfg["rle"] else None
    gains = cfg["gains"]
    criterion = YOLOPoseLoss(cfg["nc"], keypoint_shape=(cfg["k"], 3), yolo26=cfg["yolo26"], rle_flow=flow,
                             pose=gains["pose"], kobj=gains["kobj"], rle=gains["rle"], **common_options(case))
    preds, named = leaves(case)
    extra = {f"flow.{n}": p for n, p in flow.named_parameters()} if flow is not None else None
    check_replay(case, criterion, preds, named, extra)


# --- float64 references written from the formulas ---------------------------------------------


def _scene(dtype=torch.float64, k=4, seed=0, sigma_outputs=False):
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(2, 64 + 1, s, s, generator=g, dtype=dtype) for s in (8, 4)]
    preds = {"maps": maps, "kpts": torch.randn(2, 3 * k, 80, generator=g, dtype=dtype)}
    if sigma_outputs:
        preds["kpts_sigma"] = torch.randn(2, 2 * k, 80, generator=g, dtype=dtype)
    bboxes = torch.tensor([[0.3, 0.35, 0.4, 0.5], [0.6, 0.6, 0.5, 0.45], [0.5, 0.5, 0.7, 0.6]])
    lo = bboxes[:, None, :2] - bboxes[:, None, 2:] / 2
    xy = lo + torch.rand(3, k, 2, generator=g) * bboxes[:, None, 2:]
    vis = torch.tensor([[2.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 2.0, 0.0]])[:, :k]
    keypoints = torch.cat([xy, vis[..., None]], -1)
    batch = {"batch_idx": torch.tensor([0.0, 0.0, 1.0]), "cls": torch.zeros(3), "bboxes": bboxes,
             "keypoints": keypoints}
    return preds, batch


def _reference(preds, batch, result, *, yolo26, sigmas, gains=(12.0, 1.0), flow=None):
    """pose, kobj (and rle) from their definitions, anchor by anchor, in float64."""
    kpts = preds["kpts"].double()
    k = kpts.shape[1] // 3
    image_size = 64.0
    levels = [(8, 8, 8.0), (4, 4, 16.0)]
    fg = result.assignment.fg_mask.nonzero().tolist()
    pose = kobj = 0.0
    rle_rows = []
    for b, a in fg:
        (h, w, stride), local = (levels[0], a) if a < 64 else (levels[1], a - 64)
        px, py = local % w + 0.5, local // w + 0.5
        raw = kpts[b, :, a].view(k, 3)
        if yolo26:
            pred = raw[:, :2] + torch.tensor([px, py], dtype=torch.float64)
        else:
            pred = raw[:, :2] * 2 + torch.tensor([px, py], dtype=torch.float64) - 0.5
        row = int(result.assignment.target_gt[b, a])
        truth = batch["keypoints"][row].double()
        truth_xy = truth[:, :2] * image_size / stride
        box = result.assignment.target_boxes[b, a].double() / stride
        area = (box[2] - box[0]) * (box[3] - box[1])
        visible = (truth[:, 2] != 0).double()
        d2 = ((pred - truth_xy) ** 2).sum(-1)
        factor = k / (visible.sum() + 1e-9)
        pose = pose + (factor * (1 - torch.exp(-d2 / ((2 * sigmas) ** 2 * (area + 1e-9) * 2))) * visible).sum()
        kobj = kobj + F.binary_cross_entropy_with_logits(raw[:, 2], visible, reduction="sum")
        if flow is not None:
            sig = torch.sigmoid(preds["kpts_sigma"].double()[b, :, a].view(k, 2))
            for j in range(k):
                if visible[j]:
                    err = ((pred[j] - truth_xy[j]) / (sig[j] + 1e-9)).clamp(-100, 100)
                    rle_rows.append((sig[j], err))
    n = len(fg) * k
    out = [gains[0] * pose / n, gains[1] * kobj / n]
    if flow is not None:
        total = 0.0
        for sig, err in rle_rows:
            log_phi = flow.log_prob(err[None].double())[0]
            total = total + (torch.log(sig) - log_phi + torch.log(2 * sig) + err.abs()).sum()
        out.append(max(total / len(rle_rows), 0.0))
    return out


@pytest.mark.parametrize("yolo26", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_keypoint_terms_match_float64_reference(yolo26, dtype):
    preds64, batch = _scene()
    preds = {k: ([m.to(dtype) for m in v] if k == "maps" else v.to(dtype)) for k, v in preds64.items()}
    out = YOLOPoseLoss(1, keypoint_shape=(4, 3), strides=(8, 16), yolo26=yolo26)(preds, batch)
    sigmas = torch.full((4,), 0.25, dtype=torch.float64)
    pose, kobj = _reference({"kpts": preds["kpts"]}, batch, out, yolo26=yolo26, sigmas=sigmas)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(out.components["pose"].double(), pose, rtol=tol, atol=0)
    torch.testing.assert_close(out.components["kobj"].double(), kobj, rtol=tol, atol=0)
    assert int(out.assignment.fg_mask.sum()) > 3


def test_rle_term_and_gradients_match_float64_reference():
    preds, batch = _scene(sigma_outputs=True)
    flow = AffineFlow(torch.tensor([0.1, -0.2], dtype=torch.float64), torch.tensor([0.3, -0.1], dtype=torch.float64))
    kpts, sig = preds["kpts"].requires_grad_(), preds["kpts_sigma"].requires_grad_()
    out = YOLOPoseLoss(1, keypoint_shape=(4, 3), strides=(8, 16), yolo26=True, rle_flow=flow)(preds, batch)
    assert list(out.components) == ["box", "pose", "kobj", "cls", "l1"][:4] + ["dfl", "rle"]
    want = _reference(preds, batch, out, yolo26=True, sigmas=torch.full((4,), 0.25, dtype=torch.float64), flow=flow)
    torch.testing.assert_close(out.components["rle"], want[2], rtol=1e-10, atol=0)
    got = torch.autograd.grad(out.components["rle"] + out.components["pose"], (kpts, sig, flow.loc))
    expected = torch.autograd.grad(want[2] + want[0], (kpts, sig, flow.loc))
    for g, w in zip(got, expected, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_coco_defaults_for_seventeen_keypoints():
    criterion = YOLOPoseLoss(1)
    torch.testing.assert_close(criterion.sigmas, torch.tensor(COCO_KEYPOINT_SIGMAS))
    assert float(criterion.rle_weights[9]) == 1.5 and float(criterion.rle_weights[0]) == 1.0
    assert math.isclose(float(YOLOPoseLoss(1, keypoint_shape=(5, 3)).sigmas[0]), 0.2, rel_tol=1e-7)


def test_two_column_keypoints_are_all_visible():
    preds, batch = _scene(torch.float32)
    criterion = YOLOPoseLoss(1, keypoint_shape=(4, 3), strides=(8, 16))
    all_visible = {**batch, "keypoints": torch.cat([batch["keypoints"][..., :2],
                                                    torch.ones(3, 4, 1)], -1)}
    two = {**batch, "keypoints": batch["keypoints"][..., :2]}
    torch.testing.assert_close(criterion(preds, two).total, criterion(preds, all_visible).total)


def test_totals_components_and_per_image_agree():
    preds, batch = _scene(torch.float32)
    out = YOLOPoseLoss(1, keypoint_shape=(4, 3), strides=(8, 16))(preds, batch)
    assert list(out.components) == ["box", "pose", "kobj", "cls", "dfl"]
    torch.testing.assert_close(sum(out.components.values()), out.total)
    torch.testing.assert_close(out.per_image.sum(), out.total)


def test_no_objects_gives_zero_keypoint_terms():
    preds, _ = _scene(torch.float32)
    empty = {"batch_idx": torch.zeros(0), "cls": torch.zeros(0), "bboxes": torch.zeros(0, 4),
             "keypoints": torch.zeros(0, 4, 3)}
    kpts = preds["kpts"].requires_grad_()
    out = YOLOPoseLoss(1, keypoint_shape=(4, 3), strides=(8, 16))(preds, empty)
    assert float(out.components["pose"].detach()) == 0.0 and float(out.components["kobj"].detach()) == 0.0
    assert torch.isfinite(out.total)
    out.total.backward()  # the keypoint outputs get a zero gradient: DDP sees them used
    assert kpts.grad is not None and not kpts.grad.any()


# --- bad input ---------------------------------------------------------------------------------


def _criterion():
    return YOLOPoseLoss(1, keypoint_shape=(4, 3), strides=(8, 16))


def test_visible_keypoint_outside_the_image_names_the_row():
    preds, batch = _scene(torch.float32)
    batch["keypoints"][2, 1, 0] = 1.2  # visible (2)
    with pytest.raises(ValueError, match=r"outside \[0, 1\] .*row 2, keypoint 1"):
        _criterion()(preds, batch)


def test_invisible_keypoint_outside_the_image_is_accepted():
    preds, batch = _scene(torch.float32)
    batch["keypoints"][1, 0, :2] = torch.tensor([-0.5, 1.5])  # object 1 has no visible keypoint
    assert torch.isfinite(_criterion()(preds, batch).total)


def test_non_finite_visible_keypoint_names_the_row():
    preds, batch = _scene(torch.float32)
    batch["keypoints"][0, 0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"row 0, keypoint 0"):
        _criterion()(preds, batch)


def test_keypoint_shape_mismatches_are_named():
    preds, batch = _scene(torch.float32)
    with pytest.raises(ValueError, match=r"keypoints'\] must have shape \(M=3, K=4, 3\)"):
        _criterion()(preds, {**batch, "keypoints": batch["keypoints"][:, :3]})
    with pytest.raises(ValueError, match=r"preds\['kpts'\] must have shape \(B, 12, A=80\)"):
        _criterion()({**preds, "kpts": preds["kpts"][:, :8]}, batch)
    with pytest.raises(ValueError, match="keypoint_shape"):
        YOLOPoseLoss(1, keypoint_shape=(4, 4))


def test_negative_box_size_names_the_row():
    preds, batch = _scene(torch.float32)
    batch["bboxes"][2, 3] = -0.2
    with pytest.raises(ValueError, match=r"negative width or height .*\(row 2:"):
        _criterion()(preds, batch)


def test_config_round_trip_rebuilds_an_equal_criterion():
    import losskit

    criterion = YOLOPoseLoss(1, keypoint_shape=(4, 3), strides=(8, 16), sigmas=[0.1, 0.2, 0.3, 0.4], pose=6.0,
                             yolo26=True, reg_max=1, end2end=True)
    config = criterion.get_config()
    rebuilt = losskit.get({"class": "losskit.detection.pose.YOLOPoseLoss", **config})
    assert rebuilt.get_config() == config
    torch.testing.assert_close(rebuilt.sigmas, torch.tensor([0.1, 0.2, 0.3, 0.4]))


def test_crowded_scene_float32_matches_float64():
    """On the crowded YOLO26 scene (RLE included), the float32 result is the float64 result to 1e-5."""
    case = load("pose26_crowded")
    cfg = case["config"]
    flow = AffineFlow(cfg["flow"]["loc"], cfg["flow"]["log_scale"])
    criterion = YOLOPoseLoss(cfg["nc"], keypoint_shape=(cfg["k"], 3), yolo26=True, rle_flow=flow,
                             **common_options(case))
    preds32, _ = leaves(case)
    preds64 = {b: {k: ([m.double() for m in v] if k == "maps" else v.double()) for k, v in p.items()}
               for b, p in preds32.items()}
    out32 = criterion(preds32, case["batch"])
    out64 = criterion.double()(preds64, case["batch"])
    assert torch.equal(out32.assignment.fg_mask, out64.assignment.fg_mask)
    for key in out32.components:
        torch.testing.assert_close(out32.components[key].double(), out64.components[key], rtol=1e-5, atol=1e-7)
