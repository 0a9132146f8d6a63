"""Float64 references for the rotated and 3-D box geometry and losses, written from the definitions.

Polygon areas come from shapely (GEOS), independent of losskit's clipping: the box's corners are
built here from the definition of ``xywhr`` (the ``w`` side along ``(cos a, sin a)``), and GIoU's
enclosing shape is shapely's ``convex_hull``. The Gaussian losses are transcribed from the papers
with their matrices formed and inverted explicitly (numpy, one box at a time), and mmrotate's
post-processing (``log1p``/``sqrt``, ``tau``) as its documentation states it.
"""

from __future__ import annotations

import math

import numpy as np
from shapely.geometry import Polygon


def rectangle(cx: float, cy: float, w: float, h: float, angle: float) -> Polygon:
    """The shapely polygon of an ``xywhr`` box."""
    c, s = math.cos(angle), math.sin(angle)
    pts = []
    for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        u, v = a * w / 2, b * h / 2
        pts.append((cx + u * c - v * s, cy + u * s + v * c))
    return Polygon(pts)


def _corners(box) -> list[tuple[float, float]]:
    return list(rectangle(*box).exterior.coords)[:4]


def rotated_iou(b1, b2, kind: str = "iou") -> float:
    """IoU, GIoU (convex hull) or DIoU (hull diameter) of two ``xywhr`` boxes."""
    p, q = rectangle(*b1), rectangle(*b2)
    inter = p.intersection(q).area
    union = b1[2] * b1[3] + b2[2] * b2[3] - inter
    iou = inter / union if union > 0 else 0.0
    if kind == "iou":
        return iou
    if kind == "giou":
        hull = p.union(q).convex_hull.area
        return iou - (hull - union) / hull
    pts = _corners(b1) + _corners(b2)
    diameter = max((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 for a in pts for b in pts)
    rho = (b1[0] - b2[0]) ** 2 + (b1[1] - b2[1]) ** 2
    return iou - rho / diameter


def rotated_iou_3d(b1, b2, kind: str = "iou") -> float:
    """The same for ``(x, y, z, w, l, h, yaw)`` boxes: BEV polygon ``(x, y, l, w, yaw)`` times heights."""
    bev1 = (b1[0], b1[1], b1[4], b1[3], b1[6])
    bev2 = (b2[0], b2[1], b2[4], b2[3], b2[6])
    p, q = rectangle(*bev1), rectangle(*bev2)
    lo1, hi1, lo2, hi2 = b1[2] - b1[5] / 2, b1[2] + b1[5] / 2, b2[2] - b2[5] / 2, b2[2] + b2[5] / 2
    inter = p.intersection(q).area * max(0.0, min(hi1, hi2) - max(lo1, lo2))
    union = b1[3] * b1[4] * b1[5] + b2[3] * b2[4] * b2[5] - inter
    iou = inter / union if union > 0 else 0.0
    if kind == "iou":
        return iou
    height = max(hi1, hi2) - min(lo1, lo2)
    if kind == "giou":
        hull = p.union(q).convex_hull.area * height
        return iou - (hull - union) / hull
    pts = _corners(bev1) + _corners(bev2)
    diameter = max((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 for a in pts for b in pts) + height**2
    rho = sum((b1[i] - b2[i]) ** 2 for i in range(3))
    return iou - rho / diameter


# --- Gaussian losses: mmrotate's box-to-Gaussian map, Sigma = R diag(w^2/4, h^2/4) R^T ---------


def gaussian(box):
    cx, cy, w, h, a = box
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return np.array([cx, cy]), rot @ np.diag([w * w / 4, h * h / 4]) @ rot.T


def _sqrtm(m):
    vals, vecs = np.linalg.eigh(m)
    return vecs @ np.diag(np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def postprocess(distance: float, fun: str, tau: float) -> float:
    """mmrotate: ``log1p`` or ``sqrt`` or nothing, then ``1 - 1 / (tau + d)`` when ``tau >= 1``."""
    d = {"log1p": math.log1p, "sqrt": math.sqrt, "none": lambda v: v}[fun](distance)
    return 1 - 1 / (tau + d) if tau >= 1 else d


def gwd(pred, target, fun: str = "log1p", tau: float = 0.0, alpha: float = 1.0, normalize: bool = True) -> float:
    """Yang et al. 2021: W2^2 = |mu_p - mu_t|^2 + tr(Sp + St - 2 (Sp^1/2 St Sp^1/2)^1/2)."""
    mp, sp = gaussian(pred)
    mt, st = gaussian(target)
    root = _sqrtm(sp)
    bures = np.trace(sp + st - 2 * _sqrtm(root @ st @ root))
    distance = math.sqrt(max(float(((mp - mt) ** 2).sum() + alpha * alpha * bures), 0.0))
    if normalize:
        distance /= 2 * (np.linalg.det(sp) * np.linalg.det(st)) ** 0.125
    return postprocess(distance, fun, tau)


def kld(pred, target, fun: str = "log1p", tau: float = 0.0, alpha: float = 1.0, sqrt: bool = True) -> float:
    """Yang et al. 2021: KL(N_t || N_p), the centre term divided by alpha^2."""
    mp, sp = gaussian(pred)
    mt, st = gaussian(target)
    inv = np.linalg.inv(sp)
    d = mp - mt
    centre = 0.5 * d @ inv @ d
    shape = 0.5 * (np.trace(inv @ st) + math.log(np.linalg.det(sp) / np.linalg.det(st)) - 2)
    distance = centre / (alpha * alpha) + shape
    if sqrt:
        distance = math.sqrt(max(distance, 0.0))
    return postprocess(distance, fun, tau)


def kfiou(pred, target, fun: str = "none", beta: float = 1 / 9, eps: float = 1e-6) -> float:
    """Yang et al. 2022 as mmrotate: smooth-L1 of the centres plus 1 - KFIoU, with the overlap's
    covariance from the Kalman gain, Sigma = Sp - K Sp, K = Sp (Sp + St)^-1, and V = 4 sqrt(det)."""
    mp, sp = gaussian(pred)
    mt, st = gaussian(target)
    diff = np.abs(mp - mt)
    centre = float(np.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta).sum())
    gain = sp @ np.linalg.inv(sp + st)
    overlap = sp - gain @ sp
    vp, vt, v = (4 * math.sqrt(np.linalg.det(m)) for m in (sp, st, overlap))
    kf = v / (vp + vt - v + eps)
    loss = {"none": 1 - kf, "ln": -math.log(kf + eps), "exp": math.exp(1 - kf) - 1}[fun]
    return max(centre + loss, 0.0)
