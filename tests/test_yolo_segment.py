"""YOLOSegmentLoss: Ultralytics 8.4.190 golden vectors, a float64 reference of the mask term, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from losskit.detection import YOLOSegmentLoss
from tests.replay_yolo_tasks import cases, check_replay, common_options, leaves, load

SEGMENT_CASES = cases("segment")


def test_every_segment_case_is_present():
    assert set(SEGMENT_CASES) == {"seg_v8_overlap", "seg_v8_instances", "seg_v8_crowded", "seg26_e2e",
                                  "seg26_crowded", "seg_v8_semantic", "seg_v8_semantic_instances",
                                  "seg_v8_semantic_crowded", "seg_v8_semantic_empty", "seg26_semantic_e2e",
                                  "seg26_semantic_crowded"}
    for name in SEGMENT_CASES:
        source = load(name)["source"]
        assert source["lib"] == "ultralytics" and source["version"] == "8.4.190"
        assert "generate_yolo_task_vectors.py" in source["generator"]


def _replay_criterion(case):
    cfg = case["config"]
    return YOLOSegmentLoss(cfg["nc"], num_masks=cfg["nm"], overlap_mask=cfg["overlap"], mask_assignment=cfg["yolo26"],
                           semantic=cfg.get("semantic", False), **common_options(case))


@pytest.mark.parametrize("name", SEGMENT_CASES)
def test_matches_ultralytics(name):
    """Total, box/seg/cls/dfl-or-l1(/sem) items of each branch, foreground and every gradient (maps,
    coefficients, prototypes, semantic logits) against v8SegmentationLoss / E2ELoss(SegmentLoss26)."""
    case = load(name)
    preds, named = leaves(case)
    check_replay(case, _replay_criterion(case), preds, named)


SEMANTIC_CASES = [name for name in SEGMENT_CASES if load(name)["config"].get("semantic")]


@pytest.mark.parametrize("name", SEMANTIC_CASES)
def test_semantic_cases_replay_in_ultralytics_pair_form(name):
    """The same vectors with the semantic logits given as Ultralytics' ``proto = (prototypes, semantic)`` pair."""
    case = load(name)
    preds, named = leaves(case, semantic_pair=True)
    check_replay(case, _replay_criterion(case), preds, named)


@pytest.mark.parametrize("name", SEMANTIC_CASES)
def test_semantic_term_and_its_gradient_match_ultralytics_to_1e_5(name):
    """The semantic item of each branch and the gradient of the total with respect to the semantic logits
    within 1e-5 relative (tighter than the replay's gradient tolerance, which the mask term's sums need)."""
    case = load(name)
    preds, named = leaves(case)
    out = _replay_criterion(case)(preds, case["batch"])
    batch_size = len(case["inputs"]["one2many"]["maps"][0])
    for branch, result in (out.branches or {"one2many": out}).items():
        want = case["expected"][branch]
        expected = want["loss_items"][want["loss_names"].index("sem_loss")]
        torch.testing.assert_close(result.components["sem"].detach() / batch_size, expected, rtol=1e-5, atol=1e-9)
    (grad,) = torch.autograd.grad(out.total, named["semantic"])
    torch.testing.assert_close(grad, case["expected"]["grads"]["semantic"], rtol=1e-5, atol=1e-9)


# --- a float64 reference written from the formula ------------------------------------------------


def _scene(dtype=torch.float64, seed=0, overlap=True):
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(2, 64 + 2, s, s, generator=g, dtype=dtype) for s in (8, 4)]
    coef = torch.randn(2, 6, 80, generator=g, dtype=dtype)
    proto = torch.randn(2, 6, 16, 16, generator=g, dtype=dtype)
    bboxes = torch.tensor([[0.3, 0.35, 0.4, 0.5], [0.6, 0.6, 0.5, 0.45], [0.5, 0.5, 0.7, 0.6]])
    batch = {"batch_idx": torch.tensor([0.0, 0.0, 1.0]), "cls": torch.tensor([0.0, 1.0, 1.0]), "bboxes": bboxes}
    inst = torch.zeros(3, 16, 16)
    inst[0, 3:9, 2:8] = 1
    inst[1, 6:13, 6:13] = 1
    inst[2, 4:12, 3:13] = 1
    if overlap:
        masks = torch.zeros(2, 16, 16)
        masks[0][inst[0] > 0] = 1
        masks[0][inst[1] > 0] = 2  # the second object covers the first where they meet
        masks[1][inst[2] > 0] = 1
        batch["masks"] = masks
    else:
        batch["masks"] = inst
    return {"maps": maps, "mask_coefficient": coef, "proto": proto}, batch


def _reference_seg(preds, batch, result, overlap, box_gain=7.5):
    """The mask term from its definition, dense over the prototype grid, in float64."""
    coef, proto = preds["mask_coefficient"].double(), preds["proto"].double()
    _, _, mh, mw = proto.shape
    fg = result.assignment.fg_mask.nonzero()
    image_size = torch.tensor([64.0, 64.0], dtype=torch.float64)  # W, H: 8 x 8 cells of stride 8
    total = 0.0
    for b, a in fg.tolist():
        row = int(result.assignment.target_gt[b, a])
        box = result.assignment.target_boxes[b, a].double() / image_size.repeat(2)
        area = (box[2] - box[0]) * (box[3] - box[1])
        x1, y1, x2, y2 = (box * torch.tensor([mw, mh, mw, mh], dtype=torch.float64)).tolist()
        cols, rows = torch.arange(mw, dtype=torch.float64), torch.arange(mh, dtype=torch.float64)
        inside = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]
        if overlap:
            rank = int((batch["batch_idx"][:row] == b).sum())
            target = (batch["masks"][b] == rank + 1).double()
        else:
            target = batch["masks"][row].double()
        logits = torch.einsum("n,nhw->hw", coef[b, :, a], proto[b])
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        total = total + (bce * inside).sum() / (mh * mw) / area
    return box_gain * total / len(fg)


@pytest.mark.parametrize(("overlap", "mask_assignment"), [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_mask_term_matches_float64_reference(overlap, mask_assignment, dtype):
    preds64, batch = _scene(overlap=overlap)
    criterion = YOLOSegmentLoss(2, num_masks=6, strides=(8, 16), overlap_mask=overlap,
                                mask_assignment=mask_assignment)
    preds = {k: ([m.to(dtype) for m in v] if k == "maps" else v.to(dtype)) for k, v in preds64.items()}
    out = criterion(preds, batch)
    # the reference reads the same inputs (rounded to dtype) and the same assignment
    rounded = {k: (v if k == "maps" else v.to(dtype).double()) for k, v in preds.items()}
    expected = _reference_seg(rounded, batch, out, overlap)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    assert out.components["seg"].dtype == dtype
    torch.testing.assert_close(out.components["seg"].double(), expected, rtol=tol, atol=0)
    assert int(out.assignment.fg_mask.sum()) > 3


def test_gradients_match_float64_autograd_of_the_reference():
    preds, batch = _scene()
    coef = preds["mask_coefficient"].requires_grad_()
    proto = preds["proto"].requires_grad_()
    out = YOLOSegmentLoss(2, num_masks=6, strides=(8, 16))(preds, batch)
    got = torch.autograd.grad(out.components["seg"], (coef, proto))
    want = torch.autograd.grad(_reference_seg(preds, batch, out, True), (coef, proto))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_prototype_pixels_outside_every_box_do_not_matter():
    """The BCE counts inside each object's box only: no gradient reaches the pixels outside all boxes."""
    preds, batch = _scene()
    proto = preds["proto"].requires_grad_()
    out = YOLOSegmentLoss(2, num_masks=6, strides=(8, 16))(preds, batch)
    (grad,) = torch.autograd.grad(out.components["seg"], proto)
    boxes = batch["bboxes"]
    # each box grown by a pixel: an edge on a pixel boundary may round either way
    lo = ((boxes[:, :2] - boxes[:, 2:] / 2) * 16).floor().long()
    hi = ((boxes[:, :2] + boxes[:, 2:] / 2) * 16).ceil().long() + 1
    covered = torch.zeros(2, 16, 16, dtype=torch.bool)
    for (x1, y1), (x2, y2), b in zip(lo.tolist(), hi.tolist(), batch["batch_idx"].long().tolist(), strict=True):
        covered[b, y1:y2, x1:x2] = True
    assert bool((grad.abs().sum(1)[~covered] == 0).all())
    assert bool((grad.abs().sum(1)[covered] > 0).any())


def test_totals_components_and_per_image_agree():
    preds, batch = _scene(torch.float32)
    out = YOLOSegmentLoss(2, num_masks=6, strides=(8, 16))(preds, batch)
    assert list(out.components) == ["box", "seg", "cls", "dfl"]
    torch.testing.assert_close(sum(out.components.values()), out.total)
    torch.testing.assert_close(out.per_image.sum(), out.total)
    torch.testing.assert_close(out.per_image_components.sum(0), torch.stack(list(out.components.values())))


def test_no_objects_gives_zero_mask_term_and_a_gradient():
    # Every head output gets a gradient, zero for the mask branch: DDP sees every parameter used.
    preds, batch = _scene(torch.float32)
    maps = [m.requires_grad_() for m in preds["maps"]]
    branch = [preds[key].requires_grad_() for key in ("mask_coefficient", "proto")]
    empty = {"batch_idx": torch.zeros(0), "cls": torch.zeros(0), "bboxes": torch.zeros(0, 4),
             "masks": torch.zeros(2, 16, 16)}
    out = YOLOSegmentLoss(2, num_masks=6, strides=(8, 16))(preds, empty)
    assert float(out.components["seg"].detach()) == 0.0 and torch.isfinite(out.total)
    out.total.backward()
    assert maps[0].grad is not None
    for x in branch:
        assert x.grad is not None and not x.grad.any()


# --- the semantic term: a float64 reference written from the formula ------------------------------


def _semantic_scene(dtype=torch.float32, overlap=True, size=8):
    """``_scene`` plus semantic logits ``(2, 2, size, size)`` and class maps: the first object's class over
    the whole of image 0 (uncovered pixels included: the loss must ignore them there), class 1 in image 1."""
    preds, batch = _scene(dtype, overlap=overlap)
    g = torch.Generator().manual_seed(7)
    preds["semantic"] = (torch.randn(2, 2, size, size, generator=g, dtype=torch.float64) * 3).to(dtype)
    sem = torch.zeros(2, 16, 16)
    sem[0, 6:13, 6:13] = 1  # the second object (class 1) where it lies, class 0 elsewhere
    sem[1] = 1
    batch["sem_masks"] = sem
    return preds, batch


def _reference_sem(logits, batch, overlap, box_gain=7.5):
    """L_sem from its definition in float64: the one-hot of each covered pixel's class (zero where no object
    lies), the nearest pixel ``floor(i * h / h')`` for logits of another size, 1/2 BCE mean + 1/2 Dice (smoothing
    1) class mean, averaged over the images, times the box gain."""
    n, c, h2, w2 = logits.shape
    masks, idx = batch["masks"], batch["batch_idx"]
    covered = masks != 0 if overlap else torch.stack([(masks[idx == i] != 0).any(0) for i in range(n)])
    h, w = covered.shape[1:]
    ys, xs = torch.arange(h2) * h // h2, torch.arange(w2) * w // w2
    classes = batch["sem_masks"].long()[:, ys][:, :, xs]
    covered = covered[:, ys][:, :, xs]
    t = torch.zeros(n, c, h2, w2, dtype=torch.float64).scatter_(1, classes[:, None], covered[:, None].double())
    x = logits.double()
    p = x.sigmoid()
    bce = (F.softplus(x) - x * t).mean((1, 2, 3))
    dice = 1 - (2 * (p * t).sum((2, 3)) + 1) / (p.sum((2, 3)) + t.sum((2, 3)) + 1)
    return box_gain * (bce / 2 + dice.mean(1) / 2).mean()


def _semantic_criterion(**kw):
    return YOLOSegmentLoss(2, num_masks=6, strides=(8, 16), semantic=True, **kw)


@pytest.mark.parametrize(("overlap", "size"), [(True, 8), (False, 8), (True, 16), (True, 5)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_semantic_term_matches_float64_reference(overlap, size, dtype):
    preds, batch = _semantic_scene(dtype, overlap=overlap, size=size)
    out = _semantic_criterion(overlap_mask=overlap)(preds, batch)
    expected = _reference_sem(preds["semantic"], batch, overlap)  # the dtype-rounded logits, in float64
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert list(out.components) == ["box", "seg", "cls", "dfl", "sem"] and out.components["sem"].dtype == dtype
    torch.testing.assert_close(out.components["sem"].double(), expected, rtol=tol, atol=0)
    torch.testing.assert_close(out.per_image_components[:, 4].sum().double(), expected, rtol=tol, atol=0)
    torch.testing.assert_close(sum(out.components.values()).double(), out.total.double(), rtol=tol, atol=tol)


def test_semantic_gradient_matches_float64_autograd_of_the_reference():
    preds, batch = _semantic_scene(torch.float64)
    logits = preds["semantic"].requires_grad_()
    out = _semantic_criterion()(preds, batch)
    (got,) = torch.autograd.grad(out.components["sem"], logits)
    (want,) = torch.autograd.grad(_reference_sem(logits, batch, True), logits)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-14)


def test_semantic_term_scales_with_the_box_gain_and_the_batch():
    """A box gain of 1 divides it by 7.5; ``scale_by_batch`` multiplies it by B = 2; the other terms keep theirs."""
    preds, batch = _semantic_scene(torch.float64)
    base = _semantic_criterion()(preds, batch).components
    scaled = _semantic_criterion(box=1.0, scale_by_batch=True)(preds, batch).components
    torch.testing.assert_close(scaled["sem"], base["sem"] / 7.5 * 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(scaled["cls"], base["cls"] * 2, rtol=1e-12, atol=0)


def test_class_indices_at_uncovered_pixels_do_not_matter():
    preds, batch = _semantic_scene(torch.float64)
    logits = preds["semantic"].requires_grad_()
    first = _semantic_criterion()(preds, batch)
    batch["sem_masks"][batch["masks"] == 0] = 1 - batch["sem_masks"][batch["masks"] == 0]  # flip them
    second = _semantic_criterion()(preds, batch)
    assert torch.equal(first.components["sem"], second.components["sem"])
    g1, g2 = (torch.autograd.grad(o.components["sem"], logits)[0] for o in (first, second))
    assert torch.equal(g1, g2)


def test_semantic_without_foreground_is_zero_with_a_zero_gradient():
    """As Ultralytics: no foreground anchor, no semantic term; the logits still get a (zero) gradient."""
    preds, batch = _semantic_scene(torch.float32)
    logits = preds["semantic"].requires_grad_()
    empty = {"batch_idx": torch.zeros(0), "cls": torch.zeros(0), "bboxes": torch.zeros(0, 4),
             "masks": torch.zeros(2, 16, 16), "sem_masks": torch.zeros(2, 16, 16)}
    out = _semantic_criterion()(preds, empty)
    assert float(out.components["sem"].detach()) == 0.0
    (grad,) = torch.autograd.grad(out.total, logits)
    assert torch.equal(grad, torch.zeros_like(logits))
    logits.data[0, 0, 0, 0] = float("inf")  # nothing multiplies the logits: no NaN from 0 * inf
    assert float(_semantic_criterion()(preds, empty).components["sem"].detach()) == 0.0


def test_semantic_logits_in_ultralytics_pair_form_give_the_same_result():
    preds, batch = _semantic_scene(torch.float64)
    keyed = _semantic_criterion()(preds, batch)
    pair = {**preds, "proto": (preds["proto"], preds["semantic"])}
    del pair["semantic"]
    torch.testing.assert_close(_semantic_criterion()(pair, batch).total, keyed.total, rtol=0, atol=0)


def test_semantic_config_round_trip():
    import losskit

    config = _semantic_criterion().get_config()
    assert config["semantic"] is True
    assert losskit.get({"class": "losskit.detection.segment.YOLOSegmentLoss", **config}).semantic


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "error", "match"), [
    (lambda p, b: b.update(sem_masks=torch.zeros(2, 8, 8)), ValueError,
     r"targets\['sem_masks'\] has size \(8, 8\) but the masks are \(16, 16\)"),
    (lambda p, b: b.update(sem_masks=torch.zeros(1, 16, 16)), ValueError,
     r"targets\['sem_masks'\] must have shape \(B=2, h, w\), got \(1, 16, 16\)"),
    (lambda p, b: b["sem_masks"].__setitem__((1, 3, 4), 2.0), ValueError,
     r"sem_masks'\]: values must be class indices in \[0, 2\) \(image 1 holds 2"),
    (lambda p, b: b["sem_masks"].__setitem__((0, 0, 0), -1.0), ValueError, r"\(image 0 holds -1"),
    (lambda p, b: b["sem_masks"].__setitem__((1, 0, 0), 0.5), ValueError, r"\(image 1 holds 0.5"),
    (lambda p, b: b["sem_masks"].__setitem__((1, 0, 0), float("nan")), ValueError, r"\(image 1 holds nan"),
    (lambda p, b: b.update(sem_masks=b["sem_masks"] > 0), TypeError,
     r"targets\['sem_masks'\] must hold class indices as integers or integral floats, got dtype torch.bool"),
    (lambda p, b: b.pop("sem_masks"), ValueError, r"targets must carry 'sem_masks'"),
    (lambda p, b: p.update(semantic=torch.zeros(2, 3, 8, 8)), ValueError,
     r"preds\['semantic'\] must have shape \(B, num_classes=2, h', w'\), got \(2, 3, 8, 8\)"),
    (lambda p, b: p.update(semantic=torch.zeros(2, 2, 8)), ValueError, r"preds\['semantic'\] must have shape"),
    (lambda p, b: p.update(semantic=torch.zeros(2, 2, 8, 8, dtype=torch.long)), ValueError,
     r"preds\['semantic'\] must be a floating tensor"),
    (lambda p, b: p.update(semantic=torch.zeros(1, 2, 8, 8)), ValueError, r"preds\['semantic'\] has batch size 1"),
    (lambda p, b: p.pop("semantic"), ValueError, r"with semantic=True, preds must carry 'semantic'"),
    (lambda p, b: p.update(proto=(p["proto"], p["semantic"])), ValueError, r"give the semantic logits once"),
    (lambda p, b: p.update(proto=(p["proto"],)), ValueError, r"\(prototypes, semantic logits\) pair, got a tuple of 1"),
    (lambda p, b: p["semantic"].__setitem__((0, 1, 2, 2), float("nan")), ValueError,
     r"preds\['semantic'\]: the loss is not finite"),
])
def test_bad_semantic_input_is_named(change, error, match):
    preds, batch = _semantic_scene(torch.float32)
    change(preds, batch)
    with pytest.raises(error, match=match):
        _semantic_criterion()(preds, batch)


def test_integer_class_maps_are_taken():
    preds, batch = _semantic_scene(torch.float64)
    want = _semantic_criterion()(preds, batch).components["sem"]
    for dtype in (torch.uint8, torch.int32, torch.int64):
        got = _semantic_criterion()(preds, {**batch, "sem_masks": batch["sem_masks"].to(dtype)}).components["sem"]
        assert torch.equal(got, want)


def test_end_to_end_errors_name_the_branch():
    preds, batch = _semantic_scene(torch.float32)
    both = {"one2many": preds, "one2one": {k: v for k, v in preds.items() if k != "semantic"}}
    with pytest.raises(ValueError, match=r"with semantic=True, preds\['one2one'\] must carry 'semantic'"):
        _semantic_criterion(end2end=True)(both, batch)


def test_semantic_logits_need_semantic_true():
    preds, batch = _semantic_scene(torch.float32)
    with pytest.raises(ValueError, match=r"build the criterion with semantic=True"):
        YOLOSegmentLoss(2, num_masks=6, strides=(8, 16))(preds, batch)
    pair = {"maps": preds["maps"], "mask_coefficient": preds["mask_coefficient"],
            "proto": (preds["proto"], preds["semantic"])}
    with pytest.raises(ValueError, match=r"build the criterion with semantic=True"):
        YOLOSegmentLoss(2, num_masks=6, strides=(8, 16))(pair, batch)




def _criterion(**kw):
    return YOLOSegmentLoss(2, num_masks=6, strides=(8, 16), **kw)


def test_masks_of_another_size_than_the_prototypes_are_refused():
    preds, batch = _scene(torch.float32)
    batch["masks"] = torch.zeros(2, 32, 32)
    with pytest.raises(ValueError, match=r"masks'\] has size \(32, 32\) but the prototypes are \(16, 16\)"):
        _criterion()(preds, batch)


def test_mask_count_must_match_the_form():
    preds, batch = _scene(torch.float32, overlap=False)
    batch["masks"] = batch["masks"][:2]
    with pytest.raises(ValueError, match=r"\(M=3, h, w\) with overlap_mask=False"):
        _criterion(overlap_mask=False)(preds, batch)


def test_overlap_values_that_mark_no_object_name_the_image():
    preds, batch = _scene(torch.float32)
    batch["masks"][1, 0, 0] = 2  # image 1 has one object
    with pytest.raises(ValueError, match=r"image 1 holds 2"):
        _criterion()(preds, batch)


def test_instance_mask_values_outside_unit_interval_name_the_row():
    preds, batch = _scene(torch.float32, overlap=False)
    batch["masks"][2, 5, 5] = 3.0
    with pytest.raises(ValueError, match=r"row 2 holds 3"):
        _criterion(overlap_mask=False)(preds, batch)


def test_negative_box_size_names_the_row():
    preds, batch = _scene(torch.float32)
    batch["bboxes"][1, 2] = -0.1
    with pytest.raises(ValueError, match=r"negative width or height .*\(row 1:"):
        _criterion()(preds, batch)


def test_missing_inputs_are_named():
    preds, batch = _scene(torch.float32)
    with pytest.raises(ValueError, match="mask_coefficient"):
        _criterion()({"maps": preds["maps"], "proto": preds["proto"]}, batch)
    with pytest.raises(ValueError, match=r"preds\['mask_coefficient'\] must have shape \(B, 6, A=80\)"):
        _criterion()({**preds, "mask_coefficient": preds["mask_coefficient"][:, :, :10]}, batch)
    with pytest.raises(ValueError, match="'masks'"):
        _criterion()(preds, {k: v for k, v in batch.items() if k != "masks"})


def test_benchmark_runs_on_a_small_scene():
    """The segmentation benchmark's smoke run (without Ultralytics it times losskit alone)."""
    from benchmarks import bench_yolo_segment

    text = bench_yolo_segment.main(["--imgsz", "64", "--batch", "1", "--objects", "3", "--rounds", "1"])
    assert "losskit" in text


def test_config_round_trip_rebuilds_an_equal_criterion():
    import losskit

    criterion = YOLOSegmentLoss(2, num_masks=6, strides=(8, 16), overlap_mask=False, mask_assignment=True)
    config = criterion.get_config()
    rebuilt = losskit.get({"class": "losskit.detection.segment.YOLOSegmentLoss", **config})
    assert rebuilt.get_config() == config and not rebuilt.overlap_mask and rebuilt.mask_assignment


@pytest.mark.parametrize("name", ["seg_v8_crowded", "seg26_crowded"])
def test_crowded_scene_float32_matches_float64(name):
    """On a crowded scene, losskit's float32 result is the float64 result to 1e-5 (same assignment)."""
    case = load(name)
    cfg = case["config"]
    criterion = _replay_criterion(case)
    preds32, _ = leaves(case)
    preds64 = {b: {k: ([m.double() for m in v] if k == "maps" else v.double()) for k, v in p.items()}
               for b, p in preds32.items()} if cfg["end2end"] else \
        {k: ([m.double() for m in v] if k == "maps" else v.double()) for k, v in preds32.items()}
    out32, out64 = criterion(preds32, case["batch"]), criterion(preds64, case["batch"])
    assert torch.equal(out32.assignment.fg_mask, out64.assignment.fg_mask)
    for key in out32.components:
        torch.testing.assert_close(out32.components[key].double(), out64.components[key], rtol=1e-5, atol=1e-7)


# --- distributed=True: two ranks equal one process ---------------------------------------------


def _two_rank_checks() -> dict:
    from losskit.detection import YOLOPoseLoss
    from tests.replay_yolo_tasks import AffineFlow
    from tests.test_distributed import _check

    g = torch.Generator().manual_seed(3)
    f64 = torch.float64
    maps = [torch.randn(4, 66, 8, 8, generator=g, dtype=f64), torch.randn(4, 66, 4, 4, generator=g, dtype=f64)]
    coef, proto = torch.randn(4, 6, 80, generator=g, dtype=f64), torch.randn(4, 6, 16, 16, generator=g, dtype=f64)
    kpts = torch.randn(4, 12, 80, generator=g, dtype=f64)
    sigma = torch.randn(4, 8, 80, generator=g, dtype=f64)
    bboxes = torch.tensor([[0.3, 0.35, 0.4, 0.5], [0.6, 0.6, 0.5, 0.45], [0.5, 0.5, 0.7, 0.6], [0.4, 0.5, 0.5, 0.5]])
    inst = torch.zeros(4, 16, 16)
    for row, (cx, cy, w, h) in enumerate((bboxes * 16).tolist()):
        inst[row, int(cy - h / 3):int(cy + h / 3), int(cx - w / 3):int(cx + w / 3)] = 1
    keypoints = torch.cat([bboxes[:, None, :2] + (torch.rand(4, 4, 2, generator=g) - 0.5) * bboxes[:, None, 2:] / 2,
                           torch.randint(0, 3, (4, 4, 1), generator=g).float()], -1)
    gain = torch.ones(1, dtype=f64)
    flow = AffineFlow(torch.tensor([0.1, -0.2], dtype=f64), torch.tensor([0.3, -0.1], dtype=f64))
    results = {}
    for image_of_rows in ([0.0, 0.0, 1.0, 3.0], [0.0, 0.0, 1.0, 1.0]):  # rank 1 holds one object, or none
        idx = torch.tensor(image_of_rows)
        table = {"batch_idx": idx, "cls": torch.tensor([0.0, 1.0, 1.0, 0.0]), "bboxes": bboxes, "masks": inst,
                 "keypoints": keypoints}

        def local(lo, hi, table=table):
            keep = (table["batch_idx"] >= lo) & (table["batch_idx"] < hi)
            return {"batch_idx": table["batch_idx"][keep] - lo, "cls": table["cls"][keep],
                    "bboxes": table["bboxes"][keep], "masks": table["masks"][keep],
                    "keypoints": table["keypoints"][keep]}

        def seg(t, lo, hi, table, distributed):
            preds = {"maps": [m[lo:hi] * t for m in maps], "mask_coefficient": coef[lo:hi] * t,
                     "proto": proto[lo:hi] * t}
            return YOLOSegmentLoss(2, num_masks=6, strides=(8, 16), overlap_mask=False,
                                   distributed=distributed)(preds, table).total

        def pose(t, lo, hi, table, distributed):
            preds = {"maps": [m[lo:hi, :65] * t for m in maps], "kpts": kpts[lo:hi] * t,
                     "kpts_sigma": sigma[lo:hi] * t}
            return YOLOPoseLoss(1, keypoint_shape=(4, 3), strides=(8, 16), yolo26=True, rle_flow=flow,
                                distributed=distributed)(preds, {**table, "cls": torch.zeros_like(table["cls"])}).total

        for name, fn in (("segment", seg), ("pose", pose)):
            results[f"{name}{image_of_rows}"] = _check(
                gain, (2, 2), lambda t, lo, hi, fn=fn: fn(t, lo, hi, local(lo, hi), True),
                lambda t, fn=fn, table=table: fn(t, 0, 4, table, False))
    return results


def _two_rank_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import json

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = _two_rank_checks()
        if rank == 0:
            with open(out, "w") as f:
                json.dump(results, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_two_ranks_equal_one_process(tmp_path):
    """With distributed=True the mask and keypoint means (and RLE's) use the global counts: the mean of two
    ranks' totals and of their gradients is the one-process result on the whole batch."""
    import json

    out = tmp_path / "results.json"
    torch.multiprocessing.spawn(_two_rank_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    results = json.loads(out.read_text())
    assert len(results) == 4
    bad = {name: r for name, r in results.items() if r["loss"] > 1e-10 or r["grad"] > 1e-10}
    assert not bad, f"two ranks differ from one process: {bad}"
