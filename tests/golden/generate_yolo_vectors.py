"""Generate golden vectors for the YOLO detection losses from Ultralytics 8.4.190.

Run ONLY in the separate peer environment (see README.md in this folder)::

    YOLO_OFFLINE=1 /tmp/peer-venv/bin/python tests/golden/generate_yolo_vectors.py [case ...]  # from the repo root

(naming cases rewrites only those).

It writes ``tests/golden/yolo/<case>.pt``, one ``torch.save`` of a plain dict per case (tensors,
numbers, strings, lists and dicts only, so ``torch.load(path, weights_only=True)`` reads it), and
``tests/test_golden_yolo.py`` replays them against ``losskit.detection.YOLOLoss``. Each file holds:

- ``source``: library, version, torch version and build, the exact call;
- ``config``: classes, strides, reg_max, gains, end2end, the one-to-many weight, image size;
- ``feats``: the per-level head maps ``(B, 4 * reg_max + nc, H_i, W_i)`` (box channels first);
  end-to-end cases hold ``{"one2many": [...], "one2one": [...]}``; the crowded cases store them as
  float16 (``config["feats_storage"]``): their values are float16 values, so that is exact;
- ``batch``: ``batch_idx`` (M,), ``cls`` (M, 1), ``bboxes`` (M, 4) normalised cxcywh, sorted by
  image (as Ultralytics' collate makes them: its padding assumes it);
- ``expected``: the loss items (box, cls, dfl-or-l1) with gains applied and NOT times the batch
  size, the total Ultralytics returns (``loss.sum()``, i.e. times the batch size), the assigner's
  outputs (fg mask, per-image padded gt index, target boxes in xyxy pixels, target labels, target
  scores), and the gradient of the total with respect to every map; the crowded cases add
  ``default_rule``, the same code under losskit's default rules (see ``_default_rule_record``);
- ``diagnostics``: counts about the assignment (see ``_diagnose``) and how far Ultralytics' own
  float32 result is from the same call in float64.

Ultralytics is not driven through a model: a stub module supplies what ``v8DetectionLoss`` reads
(``args``, ``model[-1]`` with ``stride`` / ``nc`` / ``reg_max``, a parameter for the device, an
optional ``class_weights``), and the prediction dict is assembled from the maps the way the Detect
head does it (levels in order, row-major within a level).

Inputs come from seeded ``torch.Generator`` streams on the CPU and everything runs on the CPU, so a
rerun with the same versions writes identical tensors. Ultralytics' source is not copied here (it
is AGPL-3.0); it is only called.

Nothing at module level imports a peer: pytest's ``--doctest-modules`` imports this file in CI.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

OUT = Path(__file__).resolve().parent / "yolo"
GENERATOR = "tests/golden/generate_yolo_vectors.py"
STRIDES = (8, 16, 32)
GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
O2M_START, O2M_FINAL = 0.8, 0.1
SECOND_PROGRESS = 0.5  # the e2e case also records the total at this training progress
EPOCHS = 3  # with 3 epochs, one E2ELoss.update() is progress 1 / (3 - 1) = 0.5

# Every case the generator writes; tests/test_golden_yolo.py keeps the same list.
CASES = ("v8_typical", "v8_empty_image", "v8_no_objects", "v8_crowded", "v8_tiny", "v8_overlap_ties",
         "v8_class_weights", "yolo26_l1", "yolo26_e2e", "v8_crowded_320", "v8_tiny_crowd", "yolo26_e2e_crowded")


def progress_o2m(fraction: float) -> float:
    """One-to-many weight at a training progress ``fraction`` (E2ELoss's linear decay 0.8 -> 0.1).

    >>> progress_o2m(0.0), round(progress_o2m(0.5), 12), round(progress_o2m(1.0), 12)
    (0.8, 0.45, 0.1)
    """
    return (1 - fraction) * (O2M_START - O2M_FINAL) + O2M_FINAL


def level_sizes(imgsz: tuple[int, int], strides=STRIDES) -> list[tuple[int, int]]:
    """(H_i, W_i) of each level for an image size (H, W).

    >>> level_sizes((128, 128))
    [(16, 16), (8, 8), (4, 4)]
    >>> sum(h * w for h, w in level_sizes((128, 128)))
    336
    """
    return [(imgsz[0] // s, imgsz[1] // s) for s in strides]


# ----------------------------------------------------------------------------------------------
# Inputs (torch is imported inside the functions: no import at module level beyond the stdlib)
# ----------------------------------------------------------------------------------------------


def _boxes(g, n: int, imgsz, side_min: float, side_max: float, centre_box=None):
    """(n, 4) normalised cxcywh boxes with sides in [side_min, side_max] px and corners inside the image.

    ``centre_box`` (x1, y1, x2, y2) in pixels, optional, confines the centres (clipped so corners stay inside).
    """
    import torch

    H, W = imgsz
    w = side_min + (side_max - side_min) * torch.rand(n, generator=g)
    h = side_min + (side_max - side_min) * torch.rand(n, generator=g)
    if centre_box is None:
        cx = w / 2 + (W - w) * torch.rand(n, generator=g)
        cy = h / 2 + (H - h) * torch.rand(n, generator=g)
    else:
        x1, y1, x2, y2 = centre_box
        cx = (x1 + (x2 - x1) * torch.rand(n, generator=g)).clamp(w / 2, W - w / 2)
        cy = (y1 + (y2 - y1) * torch.rand(n, generator=g)).clamp(h / 2, H - h / 2)
    return torch.stack([cx / W, cy / H, w / W, h / H], 1)


def _batch(per_image: list, nc: int, g, classes=None) -> dict:
    """The Ultralytics batch dict from per-image (n_i, 4) cxcywh tensors; classes drawn uniformly unless given."""
    import torch

    idx = [torch.full((len(b),), float(i)) for i, b in enumerate(per_image)]
    boxes = torch.cat(list(per_image), 0) if per_image else torch.zeros(0, 4)
    m = boxes.shape[0]
    cls = torch.randint(0, nc, (m, 1), generator=g).float()
    if classes is not None:
        cls = torch.tensor(classes, dtype=torch.float32).view(-1, 1)
    return {"batch_idx": torch.cat(idx, 0) if idx else torch.zeros(0), "cls": cls, "bboxes": boxes.float()}


def _maps(g, batch_size: int, nc: int, reg_max: int, imgsz) -> list:
    """Per-level head maps (B, 4 * reg_max + nc, H_i, W_i), plausible but random.

    DFL heads (reg_max > 1): bin logits N(0, 1) plus a bump -(k - mu)^2 / (2 * 1.2^2) about a per-side
    centre mu ~ U(0.5, 5) bins, so decoded distances are 0.5-5 grid units and boxes overlap the targets.
    reg_max == 1 (YOLO26): the 4 box channels are ltrb distances in grid units, |N(0, 1)| * 3 + 0.5.
    Class logits N(-2, 1.5).
    """
    import torch

    out = []
    for h, w in level_sizes(imgsz):
        if reg_max > 1:
            bins = torch.arange(reg_max, dtype=torch.float32).view(1, 1, reg_max, 1, 1)
            mu = 0.5 + 4.5 * torch.rand(batch_size, 4, 1, h, w, generator=g)
            box = torch.randn(batch_size, 4, reg_max, h, w, generator=g) - 0.5 * ((bins - mu) / 1.2) ** 2
            box = box.reshape(batch_size, 4 * reg_max, h, w)
        else:
            box = torch.randn(batch_size, 4, h, w, generator=g).abs() * 3 + 0.5
        cls = torch.randn(batch_size, nc, h, w, generator=g) * 1.5 - 2
        out.append(torch.cat([box, cls], 1).contiguous())
    return out


def _ties_maps(g, nc: int, reg_max: int, imgsz) -> list:
    """Random maps whose finest level (stride 8) is constant: box bins [0, 0, 0, 0, -30, ...] in every
    side (decodes to exactly 1.5 grid units, a 24 x 24 px box about every anchor) and class logits -1.5.
    With the mirror-symmetric targets of ``v8_overlap_ties`` (dyadic coordinates, centres on x = 32k)
    the alignment metric of mirrored anchors ties exactly."""
    maps = _maps(g, 2, nc, reg_max, imgsz)
    level = maps[0]
    level[:, : 4 * reg_max] = -30.0
    for side in range(4):
        level[:, side * reg_max: side * reg_max + 4] = 0.0
    level[:, 4 * reg_max:] = -1.5
    return maps


def _rough_maps(g, batch_size: int, nc: int, reg_max: int, imgsz, box_sd: float) -> list:
    """Per-level maps of a head early in training: box logits N(0, box_sd^2) (reg_max > 1; reg_max == 1:
    distances |N(0, box_sd^2)| * 3 + 0.5 grid units), class logits N(-3, 1).

    Predicted boxes are far off, so many candidate anchors have a CIoU <= 0 (alignment metric 0) and
    objects with fewer than k positive candidates take metric-0 anchors in their top-k.
    """
    import torch

    out = []
    for h, w in level_sizes(imgsz):
        if reg_max > 1:
            box = torch.randn(batch_size, 4 * reg_max, h, w, generator=g) * box_sd
        else:
            box = torch.randn(batch_size, 4, h, w, generator=g).abs() * 3 * box_sd + 0.5
        cls = torch.randn(batch_size, nc, h, w, generator=g) - 3
        out.append(torch.cat([box, cls], 1).contiguous())
    return out


def _clustered_boxes(g, n: int, imgsz, side_min: float, side_max: float, clusters, spread: float,
                     reach_outside: bool = False):
    """(n, 4) normalised cxcywh boxes, sides uniform in [side_min, side_max] px, centres N(cluster, spread^2 px)
    about ``clusters`` centres: that many uniform ones, or a list of (x, y) pixels. ``reach_outside``: centres
    stay inside the image, so boxes may reach past its edges (never entirely outside); otherwise corners stay
    inside."""
    import torch

    H, W = imgsz
    size = torch.tensor([W, H], dtype=torch.float32)
    wh = side_min + (side_max - side_min) * torch.rand(n, 2, generator=g)
    centres = (torch.tensor(clusters, dtype=torch.float32) if isinstance(clusters, list)
               else torch.rand(clusters, 2, generator=g) * size)
    clusters = len(centres)
    c = centres[torch.randint(clusters, (n,), generator=g)] + torch.randn(n, 2, generator=g) * spread
    margin = 0.01  # px: corners inside after the division by the image size, whatever its rounding
    low, high = (torch.zeros(2), size) if reach_outside else (wh / 2 + margin, size - wh / 2 - margin)
    c = torch.maximum(torch.minimum(c, high), low)
    return torch.cat([c / size, wh / size], 1)


def _cxcywh(px_boxes: list, imgsz):
    """Normalised cxcywh from pixel xyxy boxes."""
    import torch

    H, W = imgsz
    b = torch.tensor(px_boxes, dtype=torch.float32)
    return torch.stack([(b[:, 0] + b[:, 2]) / 2 / W, (b[:, 1] + b[:, 3]) / 2 / H, (b[:, 2] - b[:, 0]) / W,
                        (b[:, 3] - b[:, 1]) / H], 1)


def build_cases() -> list[dict]:
    """Every case's inputs and settings, from fixed seeds."""
    import torch

    cases = []

    def gen(seed: int):
        return torch.Generator().manual_seed(seed)

    def add(name, seed, nc, reg_max, imgsz, per_image, *, b=None, maps=None, e2e=False, class_weights=None,
            classes=None, note="", crowded=False):
        g = gen(seed)
        per_image = [p(g) if callable(p) else p for p in per_image]
        batch = _batch(per_image, nc, g, classes)
        bs = b or len(per_image)
        if e2e:
            make = maps or (lambda g: _maps(g, bs, nc, reg_max, imgsz))
            feats = {"one2many": make(g), "one2one": make(g)}
        else:
            feats = maps(g) if maps else _maps(g, bs, nc, reg_max, imgsz)
        if crowded:  # stored as float16: every value is a float16 value, so the float32 inputs are kept exactly
            feats = ({k: [m.half().float() for m in v] for k, v in feats.items()} if e2e
                     else [m.half().float() for m in feats])
        cases.append({"name": name, "nc": nc, "reg_max": reg_max, "imgsz": list(imgsz), "batch": batch,
                      "feats": feats, "end2end": e2e, "class_weights": class_weights, "note": note,
                      "crowded": crowded})

    sq = (128, 128)

    def mixed(n):
        return lambda g: _boxes(g, n, sq, 6, 100)

    add("v8_typical", 11, 5, 16, sq, [mixed(3), mixed(8)],
        note="2 images with 3 and 8 objects of mixed size (6-100 px).")
    add("v8_empty_image", 12, 4, 16, sq, [mixed(5), torch.zeros(0, 4), mixed(2)],
        note="3 images; image 1 has no objects.")
    add("v8_no_objects", 13, 4, 16, sq, [torch.zeros(0, 4), torch.zeros(0, 4)],
        note="No targets at all (M = 0): only the classification term, against all-zero targets.")
    big = (256, 256)
    add("v8_crowded", 14, 4, 16, big,
        [lambda g: _boxes(g, 520, big, 4, 40, centre_box=(40, 40, 216, 216)), lambda g: _boxes(g, 3, big, 10, 80)],
        note="256 x 256; image 0 has 520 heavily overlapping objects (4-40 px, centres in a 176 px square), "
             "image 1 has 3.")
    add("v8_tiny", 15, 4, 16, sq, [lambda g: _boxes(g, 6, sq, 2, 7), lambda g: _boxes(g, 9, sq, 2, 7)],
        note="Objects of 2-7 px, below every stride: candidate selection enlarges sides < 16 px (the middle "
             "stride) to 16 px about the centre (STAL).")
    # Every coordinate is 4 (mod 8): the stride-8 level's predicted edges (anchor +- 12 px) are multiples
    # of 8, so no predicted edge coincides with a target edge (a min/max kink: a non-unique gradient).
    ties_img0 = [[52, 36, 76, 60]] * 3 + [[20, 20, 108, 108], [44, 60, 76, 92], [52, 68, 68, 84]]
    ties_img1 = [[44, 92, 84, 108], [4, 4, 44, 28], [60, 84, 100, 108], [44, 92, 84, 108]]
    add("v8_overlap_ties", 16, 5, 16, sq, [_cxcywh(ties_img0, sq), _cxcywh(ties_img1, sq)],
        maps=lambda g: _ties_maps(g, 5, 16, sq), classes=[0, 1, 2, 3, 4, 4, 1, 2, 0, 3],
        note="Image 0: three identical 16 px boxes (classes 0, 1, 2) and a chain of nested boxes; image 1: "
             "boxes with mirror-symmetric anchor sets, one repeated with another class, two overlapping. The "
             "stride-8 level's logits are constant, so alignment metrics of mirrored anchors tie exactly; each "
             "small box has at most 10 candidate anchors, so the ties never straddle the top-k boundary. "
             "Anchors picked by several identical boxes tie in IoU: Ultralytics gives them to the lowest gt "
             "index (torch.max returns the first maximum).")
    add("v8_class_weights", 17, 5, 16, sq, [mixed(4), mixed(6)],
        class_weights=[0.5, 1.0, 2.0, 1.5, 0.25],
        note="model.class_weights multiplies the per-class BCE (before the division by the score sum).")
    wide = (128, 192)
    add("yolo26_l1", 18, 4, 1, wide, [lambda g: _boxes(g, 5, wide, 6, 100), lambda g: _boxes(g, 3, wide, 6, 100)],
        note="reg_max = 1: box channels are ltrb distances in grid units; third term is the L1 loss of the "
             "distances scaled by stride / image side. Non-square 128 x 192 (H x W) so width and height "
             "normalisations differ.")
    add("yolo26_e2e", 19, 5, 1, sq,
        [mixed(4), lambda g: _boxes(g, 12, sq, 12, 48, centre_box=(36, 36, 92, 92))], e2e=True,
        note="E2ELoss: one-to-many (topk 10) + one-to-one (topk 7, topk2 1) branches, weights o2m / o2o. "
             "Image 1 has 12 overlapping objects (12-48 px, centres in a 56 px square), so anchors picked by "
             "several objects' top-7 are resolved by IoU before each object keeps its best one: the one-to-one "
             "result depends on topk = 7, not just on topk2 = 1.")

    # Crowded scenes where losskit's default rules and Ultralytics' differ. Each also records the
    # default-rule reference ("default_rule", see _default_rule_record) and must show the difference
    # it is there for (see _check_diagnostics).
    s320 = (320, 320)
    add("v8_crowded_320", 32, 2, 16, s320,
        [lambda g: torch.cat([_clustered_boxes(g, 230, s320, 4, 40, 12, 24.0, reach_outside=True),
                              _clustered_boxes(g, 30, s320, 4, 40, [[40.0, 10.0]], 12.0, reach_outside=True),
                              _clustered_boxes(g, 60, s320, 2, 7, 12, 24.0)])],
        maps=lambda g: _rough_maps(g, 1, 2, 16, s320, 2.0), crowded=True,
        note="320 x 320, one image: 260 objects of 4-40 px and 60 of 2-7 px (below every stride) in 12 "
             "overlapping clusters and one at the top-left edge (where torch.topk's partial sort takes its "
             "metric-0 picks: among the first anchors of each row); centres inside the image, so some boxes "
             "reach past its edges (Ultralytics does not clip them). Rough box logits N(0, 2^2): many "
             "candidates have CIoU <= 0, objects with fewer than 10 positive candidates take metric-0 anchors "
             "in their top-k (rows of 2100 >= 640 "
             "anchors: torch.topk's partial sort) and some of those picks change which object an anchor goes "
             "to. Feats stored as float16 (exact: the inputs are float16 values).")
    s160 = (160, 160)
    add("v8_tiny_crowd", 32, 2, 16, s160, [lambda g: _clustered_boxes(g, 220, s160, 2, 7, 6, 20.0)],
        maps=lambda g: _maps(g, 1, 2, 16, s160), crowded=True,
        note="160 x 160, one image: 220 objects of 2-7 px, all below every stride (STAL enlarges them to 16 px "
             "for candidate selection, so many candidates lie outside the object: CIoU <= 0, metric 0), in 6 "
             "clusters. Rows of 525 < 640 anchors: torch.topk's introselect decides which metric-0 anchors fill "
             "each top-k; those inside an enlarged box become foreground of target score 0. Feats stored as "
             "float16 (exact).")
    add("yolo26_e2e_crowded", 36, 2, 1, s320,
        [lambda g: torch.cat([_clustered_boxes(g, 210, s320, 4, 40, 10, 24.0),
                              _clustered_boxes(g, 30, s320, 4, 40, [[40.0, 10.0]], 12.0)])],
        maps=lambda g: _rough_maps(g, 1, 2, 1, s320, 1.0), e2e=True, crowded=True,
        note="E2ELoss on 320 x 320, one image with 240 objects of 4-40 px in 10 clusters and one at the "
             "top-left edge, reg_max = 1 with rough distances: a metric-0 pick in the one-to-many top-10 moves an "
             "anchor to another object. Feats stored as float16 (exact).")
    return cases


# ----------------------------------------------------------------------------------------------
# Driving Ultralytics
# ----------------------------------------------------------------------------------------------


def _stub_model(nc: int, reg_max: int, class_weights=None):
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.stride = torch.tensor([float(s) for s in STRIDES])
            self.nc, self.reg_max = nc, reg_max

    class Stub(nn.Module):
        def __init__(self):
            super().__init__()
            self.args = SimpleNamespace(**GAINS, epochs=EPOCHS)
            self.model = nn.ModuleList([Head()])
            self.anchor = nn.Parameter(torch.zeros(1))  # next(model.parameters()) gives the device
            if class_weights is not None:
                self.class_weights = torch.tensor(class_weights, dtype=torch.float32)

    return Stub()


def _preds(maps: list, nc: int, reg_max: int) -> dict:
    """The Detect head's training dict from per-level maps (box channels first)."""
    import torch

    bs = maps[0].shape[0]
    return {"boxes": torch.cat([m[:, : 4 * reg_max].reshape(bs, 4 * reg_max, -1) for m in maps], -1),
            "scores": torch.cat([m[:, 4 * reg_max:].reshape(bs, nc, -1) for m in maps], -1),
            "feats": maps}


class _Recorder:
    """Wraps one TaskAlignedAssigner instance's methods to keep its inputs and outputs.

    ``drop_zero_picks=True`` removes top-k picks whose alignment metric is 0 before the rest of the
    assignment runs: the assignment under losskit's rule, computed by Ultralytics' own code.
    """

    def __init__(self, assigner):
        self.a = assigner
        self.drop_zero_picks = False
        self.log = {}
        orig_forward, orig_topk, orig_highest = assigner.forward, assigner.select_topk_candidates, \
            assigner.select_highest_overlaps

        def forward(*args, **kwargs):
            out = orig_forward(*args, **kwargs)
            self.log["forward_args"], self.log["forward_out"] = args, out
            return out

        def select_topk(metrics, *args, **kwargs):
            picks = orig_topk(metrics, *args, **kwargs)
            self.log["metrics"] = metrics.clone()
            if self.drop_zero_picks:
                picks = picks * (metrics > 0).to(picks.dtype)
            return picks

        def highest(mask_pos, overlaps, n_max_boxes, align_metric):
            self.log["highest_in"] = (mask_pos.clone(), overlaps.clone(), n_max_boxes, align_metric.clone())
            topk2 = self.a.topk2
            self.a.topk2 = self.a.topk  # the resolution step alone (no topk2 filter), for the diagnostics
            try:
                self.log["resolved"] = orig_highest(mask_pos.clone(), overlaps, n_max_boxes, align_metric)[2]
            finally:
                self.a.topk2 = topk2
            return orig_highest(mask_pos, overlaps, n_max_boxes, align_metric)

        assigner.forward = forward
        assigner.select_topk_candidates = select_topk
        assigner.select_highest_overlaps = highest

    def rerun_positive_only(self):
        """Ultralytics' assignment on the recorded inputs with zero-metric top-k picks dropped."""
        log = dict(self.log)
        self.drop_zero_picks = True
        try:
            out = self.a(*log["forward_args"])
        finally:
            self.drop_zero_picks = False
            self.log = log
        return out


def _own(t):
    """A detached copy that owns its storage (torch.save would otherwise write a view's whole base)."""
    return t.detach().clone().contiguous()


def _diagnose(rec: _Recorder) -> dict:
    """Counts that explain the case. All are ints.

    - fg / zero_score_fg: foreground anchors, and those whose target score is 0 (alignment metric 0);
    - gts_with_zero_picks: valid gts with fewer than k positive-metric candidates, whose top-k is padded with
      metric-0 anchors (in whatever order torch.topk returns equal values; those inside the gt become
      foreground with target score 0);
    - topk_boundary_ties: valid gts whose k-th and (k+1)-th metric tie at a value > 0 (torch.topk's order
      among ties is unspecified, so such a case would not pin down the foreground) - kept at 0;
    - topk2_ties: same for the one-to-one topk2 filter (largest two metrics tie > 0) - kept at 0;
    - multi_gt_anchors: anchors picked by more than one gt (resolved to the gt of highest IoU);
    - multi_gt_to_unpicking_gt: of those, resolved to a gt that had not picked the anchor (the IoU argmax
      runs over every gt, picked or not);
    - iou_argmax_ties: of those, where the highest IoU ties (> 0) between gts (Ultralytics: lowest index);
    - zero_pick_conflicts: anchors where Ultralytics' (fg & score > 0, gt, score) differs from the same
      assignment with metric-0 picks dropped - kept at 0, or the replay's fg rule would not hold.
    """
    a = rec.a
    labels, boxes, scores, fg, gt_idx = rec.log["forward_out"]
    d = {"fg": int(fg.sum()), "zero_score_fg": int((fg & (scores.sum(-1) <= 0)).sum())}
    if "highest_in" not in rec.log:  # no targets: the assigner returned early
        return {**d, "gts_with_zero_picks": 0, "topk_boundary_ties": 0, "topk2_ties": 0, "multi_gt_anchors": 0,
                "multi_gt_to_unpicking_gt": 0, "iou_argmax_ties": 0, "zero_pick_conflicts": 0}
    mask_gt = rec.log["forward_args"][5].squeeze(-1).bool()  # (B, n_max)
    metrics = rec.log["metrics"]
    mask_pos, overlaps, _, align = rec.log["highest_in"]
    srt = metrics.sort(-1, descending=True).values
    k = a.topk
    d["gts_with_zero_picks"] = int(((srt[..., k - 1] <= 0) & mask_gt).sum())
    if srt.shape[-1] > k:
        d["topk_boundary_ties"] = int(((srt[..., k - 1] > 0) & (srt[..., k - 1] == srt[..., k]) & mask_gt).sum())
    else:
        d["topk_boundary_ties"] = 0
    if a.topk2 != a.topk:
        s2 = (align * rec.log["resolved"]).sort(-1, descending=True).values
        d["topk2_ties"] = int(((s2[..., 0] > 0) & (s2[..., 0] == s2[..., 1]) & mask_gt).sum())
    else:
        d["topk2_ties"] = 0
    count = mask_pos.sum(1)  # (B, A)
    multi = count > 1
    d["multi_gt_anchors"] = int(multi.sum())
    winner = overlaps.max(1).indices  # (B, A)
    picked_winner = mask_pos.gather(1, winner.unsqueeze(1)).squeeze(1) > 0
    d["multi_gt_to_unpicking_gt"] = int((multi & ~picked_winner).sum())
    top2 = overlaps.topk(2, dim=1).values if overlaps.shape[1] > 1 else None
    d["iou_argmax_ties"] = int((multi & (top2[:, 0] > 0) & (top2[:, 0] == top2[:, 1])).sum()) if top2 is not None \
        else 0

    _, ref_boxes, ref_scores, ref_fg, ref_idx = rec.rerun_positive_only()
    ul_fg = fg & (scores.sum(-1) > 0)
    bad = ul_fg != ref_fg
    both = ul_fg & ref_fg
    bad |= both & (gt_idx.long() != ref_idx.long())
    bad |= both & ((scores.sum(-1) - ref_scores.sum(-1)).abs() > 1e-6)
    d["zero_pick_conflicts"] = int(bad.sum())
    return d


def _float64_dev(total, grads, total64, grads64) -> dict:
    """How far the float32 total and gradients are from the same call in float64."""
    t32, t64 = float(total.detach()), float(total64.detach())
    return {"float64_total_rel_dev": abs(t32 - t64) / max(abs(t64), 1e-30),
            "float64_grad_max_abs_dev": float(max((g.double() - g64).abs().max()
                                                  for g, g64 in zip(grads, grads64, strict=True))),
            "grad_max_abs": float(max(g.abs().max() for g in grads))}


def _branch_record(rec: _Recorder, loss) -> dict:
    labels, boxes, scores, fg, gt_idx = rec.log["forward_out"]
    return {
        "loss_items": _own(loss),
        "fg_mask": _own(fg.bool()),
        "target_gt_idx": _own(gt_idx.long()),
        "target_bboxes": _own(boxes.float()),
        "target_labels": _own(labels.long()),
        "target_scores": _own(scores.float()),
    }


def _stored(m, case: dict):
    """A map as the file keeps it: float32, or float16 for the crowded cases (their values are float16 values)."""
    out = _own(m)
    if case["crowded"]:
        assert out.half().float().equal(out), "crowded-case inputs must be float16 values"
        out = out.half()
    return out


def _clipped(batch: dict) -> dict:
    """The batch with every box clipped to the image (normalised cxcywh, through the corners)."""
    import torch

    b = batch["bboxes"]
    lo, hi = (b[:, :2] - b[:, 2:] / 2).clamp(0, 1), (b[:, :2] + b[:, 2:] / 2).clamp(0, 1)
    return {**batch, "bboxes": torch.cat([(lo + hi) / 2, hi - lo], 1)}


def _default_rule_record(case: dict, crit, recorders: dict, leaves, bs: int) -> dict:
    """Ultralytics' own code under losskit's default rules: target boxes clipped to the image, and top-k picks
    whose alignment metric is 0 dropped (``_Recorder.drop_zero_picks``). The loss items, the returned total,
    and per branch the foreground with a positive target score and the target scores (B, A)."""
    import torch

    nc, reg_max, batch = case["nc"], case["reg_max"], _clipped(case["batch"])
    for rec in recorders.values():
        rec.drop_zero_picks = True
    try:
        with torch.no_grad():
            out = {}
            if case["end2end"]:
                out["total"] = _own(crit({k: _preds(leaves(v), nc, reg_max) for k, v in case["feats"].items()},
                                         batch)[0].sum())
                branches = {name: getattr(crit, name) for name in recorders}
                feats = case["feats"]
            else:
                branches, feats = {"": crit}, {"": case["feats"]}
            for name, sub in branches.items():
                _, loss, _ = sub.get_assigned_targets_and_loss(_preds(leaves(feats[name]), nc, reg_max), batch)
                _, _, scores, fg, _ = recorders[name].log["forward_out"]
                score = scores.float().sum(-1)
                record = {"loss_items": _own(loss), "fg_mask": _own(fg.bool() & (score > 0)),
                          "target_scores": _own(score)}
                if name:
                    out[name] = record
                else:
                    out.update(record, total=_own(loss.sum() * bs))
    finally:
        for rec in recorders.values():
            rec.drop_zero_picks = False
    return out


def run_case(case: dict) -> dict:
    import torch
    import ultralytics
    from ultralytics.utils.loss import E2ELoss, v8DetectionLoss

    nc, reg_max, batch = case["nc"], case["reg_max"], case["batch"]
    model = _stub_model(nc, reg_max, case["class_weights"])
    src = {"lib": "ultralytics", "version": str(ultralytics.__version__),
           "torch": str(torch.__version__).split("+")[0], "torch_build": str(torch.__version__), "generator": GENERATOR}
    config = {"num_classes": nc, "strides": list(STRIDES), "reg_max": reg_max, **GAINS, "end2end": case["end2end"],
              "o2m": O2M_START if case["end2end"] else None, "imgsz": case["imgsz"],
              "class_weights": None if case["class_weights"] is None else torch.tensor(case["class_weights"])}
    if case["crowded"]:
        config["feats_storage"] = "float16"  # exact: every input value is a float16 value
    bs = (case["feats"]["one2many"] if case["end2end"] else case["feats"])[0].shape[0]

    def leaves(maps, dtype=torch.float32):
        return [m.clone().to(dtype).requires_grad_() for m in maps]

    if not case["end2end"]:
        crit = v8DetectionLoss(model)
        rec = _Recorder(crit.assigner)
        # 1. Assignment and loss items.
        _, loss, _ = crit.get_assigned_targets_and_loss(_preds(leaves(case["feats"]), nc, reg_max), batch)
        branch = _branch_record(rec, loss)
        diag = _diagnose(rec)
        # 2. The returned total (loss * batch size) and its gradient w.r.t. every map.
        maps = leaves(case["feats"])
        total = crit(_preds(maps, nc, reg_max), batch)[0].sum()
        grads = torch.autograd.grad(total, maps)
        assert torch.allclose(total, loss.sum() * bs), "total != loss items * batch size"
        # 3. The same call in float64, to size the float32 rounding (the assignment runs in float32 either way).
        maps64 = leaves(case["feats"], torch.float64)
        total64 = crit(_preds(maps64, nc, reg_max), batch)[0].sum()
        diag.update(_float64_dev(total, grads, total64, torch.autograd.grad(total64, maps64)))
        expected = {**branch, "total": _own(total), "grads": [_own(g) for g in grads]}
        if case["crowded"]:
            expected["default_rule"] = _default_rule_record(case, crit, {"": rec}, leaves, bs)
        cw = "" if case["class_weights"] is None else ", model.class_weights = tensor(class_weights)"
        src["call"] = ("crit = ultralytics.utils.loss.v8DetectionLoss(model)  # tal_topk=10; model: a stub with "
                       f"args(box=7.5, cls=0.5, dfl=1.5), model[-1].stride=tensor([8., 16., 32.]), nc={nc}, "
                       f"reg_max={reg_max}{cw}; preds = {{'boxes': cat_i(feats[i][:, :4*reg_max].reshape(B, "
                       "4*reg_max, -1)), 'scores': cat_i(feats[i][:, 4*reg_max:].reshape(B, nc, -1)), 'feats': feats}; "
                       "loss_items = crit.get_assigned_targets_and_loss(preds, batch)[1]; "
                       "total = crit(preds, batch)[0].sum(); assigner outputs recorded from crit.assigner.forward; "
                       "grads = autograd.grad(total, feats)")
        feats_out = [_stored(m, case) for m in case["feats"]]
    else:
        crit = E2ELoss(model)
        crit.o2m, crit.o2o = O2M_START, 1.0 - O2M_START  # the initial weights (what __init__ sets)
        recs = {"one2many": _Recorder(crit.one2many.assigner), "one2one": _Recorder(crit.one2one.assigner)}
        expected, diag = {}, {}
        for name in ("one2many", "one2one"):
            sub = getattr(crit, name)
            _, loss, _ = sub.get_assigned_targets_and_loss(_preds(leaves(case["feats"][name]), nc, reg_max), batch)
            expected[name] = _branch_record(recs[name], loss)
            diag[name] = _diagnose(recs[name])
        maps = {k: leaves(v) for k, v in case["feats"].items()}
        preds = {k: _preds(v, nc, reg_max) for k, v in maps.items()}
        total = crit(preds, batch)[0].sum()
        g = torch.autograd.grad(total, maps["one2many"] + maps["one2one"])
        n = len(STRIDES)
        expected["grads"] = {"one2many": [_own(x) for x in g[:n]], "one2one": [_own(x) for x in g[n:]]}
        expected["total"] = _own(total)
        check = (expected["one2many"]["loss_items"].sum() * O2M_START
                 + expected["one2one"]["loss_items"].sum() * (1 - O2M_START)) * bs
        assert torch.allclose(total, check), "E2E total != weighted branch items * batch size"
        if case["crowded"]:
            expected["default_rule"] = _default_rule_record(case, crit, recs, leaves, bs)
        maps64 = {k: leaves(v, torch.float64) for k, v in case["feats"].items()}
        total64 = crit({k: _preds(v, nc, reg_max) for k, v in maps64.items()}, batch)[0].sum()
        diag.update(_float64_dev(total, g, total64, torch.autograd.grad(total64, maps64["one2many"]
                                                                        + maps64["one2one"])))
        crit.update()  # epochs = 3: progress 1 / (3 - 1) = 0.5
        o2m_second = crit.o2m
        assert math.isclose(o2m_second, progress_o2m(SECOND_PROGRESS), rel_tol=0, abs_tol=1e-15)
        with torch.no_grad():
            total2 = crit({k: _preds(v, nc, reg_max) for k, v in maps.items()}, batch)[0].sum()
        expected["total_at_o2m_0.45"] = _own(total2)
        config["second_progress"], config["second_o2m"] = SECOND_PROGRESS, float(o2m_second)
        src["call"] = ("crit = ultralytics.utils.loss.E2ELoss(model)  # one2many: v8DetectionLoss(tal_topk=10), "
                       "one2one: v8DetectionLoss(tal_topk=7, tal_topk2=1); model: a stub with args(box=7.5, cls=0.5, "
                       f"dfl=1.5, epochs=3), model[-1].stride=tensor([8., 16., 32.]), nc={nc}, reg_max={reg_max}; "
                       "crit.o2m, crit.o2o = 0.8, 0.2; preds = {'one2many': dict(feats['one2many']), "
                       "'one2one': dict(feats['one2one'])} (dict as for v8DetectionLoss); "
                       "total = crit(preds, batch)[0].sum(); grads = autograd.grad(total, all maps); branch items = "
                       "crit.<branch>.get_assigned_targets_and_loss(preds[<branch>], batch)[1]; then crit.update() "
                       "(o2m = (1 - 1/2) * (0.8 - 0.1) + 0.1) and total_at_o2m_0.45 = crit(preds, batch)[0].sum()")
        feats_out = {k: [_stored(m, case) for m in v] for k, v in case["feats"].items()}

    return {
        "source": src,
        "case": case["name"],
        "note": case["note"],
        "config": config,
        "feats": feats_out,
        "batch": {k: _own(v) for k, v in batch.items()},
        "expected": expected,
        "diagnostics": diag,
    }


def reaching_outside(bboxes) -> int:
    """How many normalised cxcywh boxes reach past an edge of the image.

    >>> import torch
    >>> reaching_outside(torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.05, 0.5, 0.2, 0.2]]))
    1
    """
    lo, hi = bboxes[:, :2] - bboxes[:, 2:] / 2, bboxes[:, :2] + bboxes[:, 2:] / 2
    return int(((lo < 0) | (hi > 1)).any(1).sum())


def _check_diagnostics(case: dict, payload: dict) -> None:
    """Refuse a case whose golden values would depend on torch.topk's order among positive ties, or whose
    gradient is not unique (float32 and float64 disagree far beyond rounding: a min/max kink, e.g. a
    predicted edge exactly on a target edge).

    Metric-0 picks are what the crowded cases are for (``YOLOLoss(dense_topk=True)`` reproduces them;
    losskit's default rule is checked against ``default_rule``): a crowded case must have metric-0 foreground
    or metric-0 picks that change the assignment (``zero_pick_conflicts``), ``v8_crowded_320`` the latter
    and boxes reaching outside the image; the other cases no such change.
    """
    name, diag = case["name"], payload["diagnostics"]
    if diag["float64_grad_max_abs_dev"] > 1e-5 or diag["float64_total_rel_dev"] > 1e-5:
        raise SystemExit(f"{name}: float32 and float64 runs disagree ({diag['float64_total_rel_dev']:.3g} relative "
                         f"in the total, {diag['float64_grad_max_abs_dev']:.3g} in a gradient); change the case")
    branches = [diag] if "fg" in diag else [diag["one2many"], diag["one2one"]]
    for d in branches:
        for key in ("topk_boundary_ties", "topk2_ties") + (() if case["crowded"] else ("zero_pick_conflicts",)):
            if d[key]:
                raise SystemExit(f"{name}: {key} = {d[key]}: the golden values would depend on the order "
                                 "torch.topk gives tied values; change the case")
    if case["crowded"] and not any(d["zero_pick_conflicts"] + d["zero_score_fg"] for d in branches):
        raise SystemExit(f"{name}: no metric-0 pick reaches the foreground; change the case")
    if name == "v8_crowded_320" and not (diag["zero_pick_conflicts"] and reaching_outside(case["batch"]["bboxes"])):
        raise SystemExit(f"{name}: needs a metric-0 pick that changes the assignment and a box reaching outside the "
                         "image; change the case")


def main(names: list[str] | None = None) -> list[Path]:
    """Write every case, or the cases named (the others are left as they are)."""
    import torch

    unknown = set(names or ()) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown case(s) {sorted(unknown)}; the cases are {CASES}")
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(exist_ok=True)
    written = []
    for case in build_cases():
        if names and case["name"] not in names:
            continue
        payload = run_case(case)
        _check_diagnostics(case, payload)
        path = OUT / f"{case['name']}.pt"
        torch.save(payload, path)
        loaded = torch.load(path, weights_only=True)
        assert loaded["case"] == case["name"]
        written.append(path)
        diag = payload["diagnostics"]
        feats = payload["feats"]["one2many"] if case["end2end"] else payload["feats"]
        n_anchors = sum(m.shape[2] * m.shape[3] for m in feats)
        parts = [f"{case['name']:18s} A={n_anchors:5d} M={payload['batch']['cls'].shape[0]:4d}",
                 f"{path.stat().st_size / 1024:7.1f} KiB"]
        for branch, dd in ([("", diag)] if "fg" in diag else [("o2m ", diag["one2many"]), ("o2o ", diag["one2one"])]):
            parts.append(f"{branch}fg={dd['fg']} zero-score-fg={dd['zero_score_fg']} "
                         f"zero-pick-conflicts={dd['zero_pick_conflicts']} "
                         f"multi-gt={dd['multi_gt_anchors']} (to unpicking gt {dd['multi_gt_to_unpicking_gt']}, "
                         f"IoU ties {dd['iou_argmax_ties']}) gts-with-zero-picks={dd['gts_with_zero_picks']}")
        print("  ".join(parts))
    return written


if __name__ == "__main__":
    paths = main(sys.argv[1:])
    total = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} files, {total / 1024:.1f} KiB", file=sys.stderr)
