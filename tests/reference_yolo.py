"""Dense float64 references for the YOLO criterion: the task-aligned assigner and the loss terms.

Written from the formulas (TOOD for the assignment, with YOLOv8's CIoU overlap, conflict rule and
YOLO26's STAL / one-to-one ``topk2``; CIoU from Zheng et al.; DFL from Generalized Focal Loss) and
from the semantics stated in ``losskit.detection``'s docstrings. Deliberately naive: the assigner
loops over objects and anchors in Python; the loss gathers the foreground anchors with plain
tensor ops, uses a dense ``(B, A, C)`` classification target and plain autograd for the gradient.
Nothing here imports losskit.
"""

from __future__ import annotations

import math

import torch

# --- geometry ---------------------------------------------------------------------------------


def anchor_points(sizes, strides, offset=0.5):
    """Anchor points in grid units ``(A, 2)`` and strides ``(A,)``: level by level, row by row."""
    points, column = [], []
    for (h, w), s in zip(sizes, strides, strict=True):
        for y in range(h):
            for x in range(w):
                points.append((x + offset, y + offset))
                column.append(float(s))
    return torch.tensor(points, dtype=torch.float64), torch.tensor(column, dtype=torch.float64)


def ciou(pred, target, *, detach_alpha=True):
    r"""CIoU of aligned ``xyxy`` boxes ``(..., 4)``: IoU - rho^2 / c^2 - alpha v.

    v = 4 / pi^2 (atan(w_gt / h_gt) - atan(w / h))^2, alpha = v / (1 - IoU + v). ``alpha`` is held
    constant in the gradient (Zheng et al. treat it as a trade-off weight; YOLOv8 computes it
    under ``no_grad``). atan(w / h) is written atan2(w, h), the same for h > 0.
    """
    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    pw, ph, tw, th = px2 - px1, py2 - py1, tx2 - tx1, ty2 - ty1
    iw = (torch.minimum(px2, tx2) - torch.maximum(px1, tx1)).clamp(min=0)
    ih = (torch.minimum(py2, ty2) - torch.maximum(py1, ty1)).clamp(min=0)
    inter = iw * ih
    union = pw * ph + tw * th - inter
    iou = inter / union
    cw = torch.maximum(px2, tx2) - torch.minimum(px1, tx1)
    ch = torch.maximum(py2, ty2) - torch.minimum(py1, ty1)
    rho2 = ((px1 + px2) / 2 - (tx1 + tx2) / 2) ** 2 + ((py1 + py2) / 2 - (ty1 + ty2) / 2) ** 2
    c2 = cw**2 + ch**2
    v = 4 / math.pi**2 * (torch.atan2(tw, th) - torch.atan2(pw, ph)) ** 2
    den = 1 - iou + v
    alpha = torch.where(den > 0, v / torch.where(den > 0, den, 1.0), 0.0)
    if detach_alpha:
        alpha = alpha.detach()
    return iou - rho2 / c2 - alpha * v


def stal_boxes(boxes, size):
    """STAL's selection boxes: a side shorter than ``size`` widened to ``size`` about the centre."""
    if size is None:
        return boxes
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    wh = boxes[:, 2:] - boxes[:, :2]
    wh = torch.where(wh < size, torch.full_like(wh, size), wh)
    return torch.cat((centre - wh / 2, centre + wh / 2), -1)


def targets_to_pixels(bboxes, image_wh, clip=True):
    """Normalized ``cx, cy, w, h`` to ``xyxy`` pixels, clipped to the image ``(W, H)`` (if ``clip``)."""
    w_img, h_img = image_wh
    b = bboxes.double()
    cx, cy, w, h = b[:, 0] * w_img, b[:, 1] * h_img, b[:, 2] * w_img, b[:, 3] * h_img
    out = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)
    limit = torch.tensor([w_img, h_img, w_img, h_img], dtype=torch.float64)
    return torch.minimum(out.clamp(min=0), limit) if clip else out


# --- the assigner -----------------------------------------------------------------------------


def iou(pred, target):
    """Plain IoU of aligned ``xyxy`` boxes ``(..., 4)``: intersection over union."""
    lo, hi = torch.maximum(pred[..., :2], target[..., :2]), torch.minimum(pred[..., 2:], target[..., 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area = (pred[..., 2:] - pred[..., :2]).prod(-1) + (target[..., 2:] - target[..., :2]).prod(-1)
    return inter / (area - inter)


def assign(scores, pred_boxes, points, gt_boxes, gt_labels, batch_idx, *, topk, alpha=0.5, beta=6.0, topk2=None,
           small_object_size=None, eps=1e-9, overlap="ciou", dense_topk=False):
    """Task-aligned assignment, dense: returns ``fg_mask (B, A)``, ``target_gt (B, A)``, ``target_scores (B, A)``.

    scores ``(B, A, C)`` probabilities; pred_boxes ``(B, A, 4)`` and points ``(A, 2)`` in pixels;
    gt_boxes ``(M, 4)`` pixels, gt_labels and batch_idx ``(M,)``.

    1. candidates of g: anchors whose point is inside g's (STAL-enlarged) box by more than eps;
    2. u = max(CIoU(gt, pred), 0) (or the IoU), t = s^alpha u^beta with s the score of g's class;
    3. g keeps its topk candidates with t > 0, largest t first, ties to the lower anchor;
    4. an anchor kept by several objects goes to the object with the largest u among every object
       of that image it is a candidate of (ties: the lowest row);
    5. topk2: g keeps its topk2 final anchors of largest t (ties to the lower anchor);
    6. score = t max_u / (max_t + eps), maxima over g's final anchors.

    ``dense_topk`` (Ultralytics' rule): in 3., g keeps those of ``torch.topk(row, topk)`` that are its
    candidates, ``row`` being t at g's candidates and 0 at every other anchor of the image (so metric-0
    candidates can be kept); in 4., an anchor whose candidates all have u = 0 goes to the image's first
    object, candidate or not; in 5., the same with ``torch.topk(row of t at g's final anchors, topk2)``.
    """
    scores, pred_boxes, points = scores.double(), pred_boxes.double(), points.double()
    gt_boxes = gt_boxes.double()
    b_count, a_count = scores.shape[:2]
    m = len(gt_boxes)
    labels = [int(v) for v in gt_labels.tolist()]
    images = [int(v) for v in batch_idx.tolist()]
    select = stal_boxes(gt_boxes, small_object_size)
    px, py = points[:, 0], points[:, 1]
    similarity = iou if overlap == "iou" else ciou  # "iou": TOOD's own choice

    # Per object, its candidate anchors and u, t there (dicts keyed by anchor).
    candidate, overlap, metric = [], [], []
    rivals: dict[tuple[int, int], list[int]] = {}  # (image, anchor) -> every object it is a candidate of
    for g in range(m):
        x1, y1, x2, y2 = select[g]
        inside = ((px - x1 > eps) & (py - y1 > eps) & (x2 - px > eps) & (y2 - py > eps)).nonzero().flatten()
        u = similarity(pred_boxes[images[g], inside], gt_boxes[g].expand(len(inside), 4)).clamp(min=0)
        t = scores[images[g], inside, labels[g]] ** alpha * u**beta
        anchors = inside.tolist()
        candidate.append(anchors)
        overlap.append(dict(zip(anchors, u.tolist(), strict=True)))
        metric.append(dict(zip(anchors, t.tolist(), strict=True)))
        for a in anchors:
            rivals.setdefault((images[g], a), []).append(g)

    def dense_top(g, values, k):
        row = torch.zeros(a_count, dtype=torch.float64)
        for a, v in values.items():
            row[a] = v
        return [a for a in torch.topk(row, min(k, a_count)).indices.tolist() if a in values]

    kept = []
    for g in range(m):
        if dense_topk:
            kept.append(dense_top(g, metric[g], topk))
            continue
        ranked = sorted((a for a in candidate[g] if metric[g][a] > 0), key=lambda a, g=g: (-metric[g][a], a))
        kept.append(ranked[:topk])

    claims: dict[tuple[int, int], list[int]] = {}
    for g in range(m):
        for a in kept[g]:
            claims.setdefault((images[g], a), []).append(g)
    final: list[list[int]] = [[] for _ in range(m)]
    for (b, a), keepers in claims.items():
        # one keeper keeps it; otherwise the largest u among all objects it is a candidate of
        owner = keepers[0] if len(keepers) == 1 else min(rivals[b, a], key=lambda g, a=a: (-overlap[g][a], g))
        if dense_topk and len(keepers) > 1 and overlap[owner][a] == 0:
            owner = images.index(b)  # the image's first object
            overlap[owner].setdefault(a, 0.0)
            metric[owner].setdefault(a, 0.0)
        final[owner].append(a)
    if topk2 is not None and dense_topk:
        final = [[a for a in dense_top(g, {a: metric[g][a] for a in f}, topk2)] for g, f in enumerate(final)]
    elif topk2 is not None:
        final = [sorted(f, key=lambda a, g=g: (-metric[g][a], a))[:topk2] for g, f in enumerate(final)]

    fg = torch.zeros(b_count, a_count, dtype=torch.bool)
    target_gt = torch.full((b_count, a_count), -1, dtype=torch.long)
    target_scores = torch.zeros(b_count, a_count, dtype=torch.float64)
    for g in range(m):
        if not final[g]:
            continue
        best_u = max(overlap[g][a] for a in final[g])
        best_t = max(metric[g][a] for a in final[g])
        for a in final[g]:
            fg[images[g], a] = True
            target_gt[images[g], a] = g
            target_scores[images[g], a] = metric[g][a] * best_u / (best_t + eps)
    return fg, target_gt, target_scores


# --- the loss ---------------------------------------------------------------------------------


def flatten_maps(maps):
    """Per-level ``(B, K, H, W)`` maps to one ``(B, A, K)`` tensor (levels concatenated, row-major)."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)


def decode(box_logits, reg_max):
    """``(B, A, 4 reg_max)`` to ``(B, A, 4)`` distances: the mean of each side's softmax, or as given."""
    if reg_max == 1:
        return box_logits
    prob = box_logits.unflatten(-1, (4, reg_max)).softmax(-1)
    return (prob * torch.arange(reg_max, dtype=box_logits.dtype)).sum(-1)


def dense_predictions(maps, strides, reg_max):
    """Detached ``(scores (B, A, C), pred_boxes (B, A, 4) px, points (A, 2) px)`` for the assigner."""
    flat = flatten_maps([m.detach().double() for m in maps])
    points, stride = anchor_points([tuple(m.shape[2:]) for m in maps], strides)
    d = decode(flat[..., : 4 * reg_max], reg_max)
    boxes = torch.cat((points - d[..., :2], points + d[..., 2:]), -1) * stride[:, None]
    return torch.sigmoid(flat[..., 4 * reg_max:]), boxes, points * stride[:, None]


def yolo_loss(maps, strides, gt_boxes, gt_labels, fg, target_gt, target_scores, *, reg_max, num_classes,
              class_weights=None, box_gain=7.5, cls_gain=0.5, third_gain=1.5, margin=0.01):
    """The criterion given an assignment (a constant): ``(B, 3)`` per-image [box, cls, dfl-or-l1].

    Differentiable in ``maps`` (float64) by plain autograd. With N = max(1, sum of target scores):
    box = 7.5 / N sum_fg y (1 - CIoU(pred, gt)) in grid units of the anchor's level;
    dfl = 1.5 / N sum_fg y mean_sides DFL(logits, clamp(d, 0, reg_max - 1 - 0.01)), DFL(y) =
    -(y_r - y) log S_{y_l} - (y - y_l) log S_{y_r}; with reg_max = 1 instead
    l1 = 1.5 / N sum_fg y mean_sides |d_hat - d| stride / (W for l, r; H for t, b);
    cls = 0.5 / N sum_{a, c} w_c BCE(x_ac, y_ac), y the one-hot soft target.
    """
    flat = flatten_maps(maps)
    b_count, a_count = flat.shape[:2]
    sizes = [tuple(m.shape[2:]) for m in maps]
    points, stride = anchor_points(sizes, strides)
    w_img, h_img = sizes[0][1] * strides[0], sizes[0][0] * strides[0]
    box_logits, cls_logits = flat[..., : 4 * reg_max], flat[..., 4 * reg_max:]
    dist = decode(box_logits, reg_max)
    target_scores = target_scores.detach().double()
    normalizer = max(1.0, float(target_scores.sum()))

    b_idx, a_idx = fg.nonzero(as_tuple=True)
    g_idx = target_gt[b_idx, a_idx]
    y = target_scores[b_idx, a_idx]
    dense_y = torch.zeros(b_count, a_count, num_classes, dtype=torch.float64)
    dense_y[b_idx, a_idx, gt_labels[g_idx].long()] = y
    p, s = points[a_idx], stride[a_idx, None]
    target = gt_boxes[g_idx].double() / s  # grid units of the anchor's level
    d = dist[b_idx, a_idx]
    pred = torch.cat((p - d[:, :2], p + d[:, 2:]), -1)
    box = y * (1 - ciou(pred, target))
    true_d = torch.cat((p - target[:, :2], target[:, 2:] - p), -1)
    if reg_max > 1:
        t = true_d.clamp(0, reg_max - 1 - margin)
        left = t.floor()
        log_prob = box_logits[b_idx, a_idx].unflatten(-1, (4, reg_max)).log_softmax(-1)
        at_left = log_prob.gather(-1, left.long()[..., None])[..., 0]
        at_right = log_prob.gather(-1, left.long()[..., None] + 1)[..., 0]
        third = y * (-(left + 1 - t) * at_left - (t - left) * at_right).mean(-1)
    else:
        scale = s / torch.tensor([w_img, h_img, w_img, h_img], dtype=torch.float64)
        third = y * ((d - true_d).abs() * scale).mean(-1)
    box = flat.new_zeros(b_count).index_add(0, b_idx, box)
    third = flat.new_zeros(b_count).index_add(0, b_idx, third)

    bce = -(dense_y * torch.nn.functional.logsigmoid(cls_logits)
            + (1 - dense_y) * torch.nn.functional.logsigmoid(-cls_logits))
    if class_weights is not None:
        bce = bce * torch.as_tensor(class_weights, dtype=torch.float64)
    cls = bce.sum((1, 2))
    per_image = torch.stack((box * box_gain, cls * cls_gain, third * third_gain), -1)
    return per_image / normalizer
