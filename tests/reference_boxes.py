"""Float64 references for the box geometry and losses, written from the papers' formulas.

Deliberately naive: one pair of boxes at a time in plain Python floats (``math``), following
each paper's notation (SIoU's angle cost through arcsin, ProbIoU through explicit 2x2 matrices),
sharing no code with losskit. Only meant for ordinary boxes: positive sizes, no degenerate pairs.
Boxes are lists ``[x1, y1, x2, y2]`` (``[x1, y1, z1, x2, y2, z2]`` in 3-D; ``[cx, cy, w, h, angle]``
rotated).
"""

from __future__ import annotations

import math

import torch


def _pairs(boxes1: torch.Tensor, boxes2: torch.Tensor):
    width = boxes1.shape[-1]
    return zip(boxes1.reshape(-1, width).tolist(), boxes2.reshape(-1, width).tolist(), strict=True)


def per_pair(fn, boxes1: torch.Tensor, boxes2: torch.Tensor, **kwargs) -> torch.Tensor:
    """Apply a one-pair reference over aligned boxes of shape (..., K); returns shape (...)."""
    values = [fn(a, b, **kwargs) for a, b in _pairs(boxes1, boxes2)]
    return torch.tensor(values, dtype=torch.float64).reshape(boxes1.shape[:-1])


# --- parts ------------------------------------------------------------------------------------


def _parts(a, b):
    """Intersection, union, enclosing width/height, centre offsets, sides (2-D)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    w1, h1, w2, h2 = a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1]
    union = w1 * h1 + w2 * h2 - inter
    cw = max(a[2], b[2]) - min(a[0], b[0])
    ch = max(a[3], b[3]) - min(a[1], b[1])
    dx = (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2
    dy = (b[1] + b[3]) / 2 - (a[1] + a[3]) / 2
    return inter, union, cw, ch, dx, dy, (w1, h1, w2, h2)


def iou(a, b):
    inter, union, *_ = _parts(a, b)
    return inter / union


def giou(a, b):
    """Rezatofighi et al. 2019, Algorithm 1."""
    inter, union, cw, ch, *_ = _parts(a, b)
    area_c = cw * ch
    return inter / union - (area_c - union) / area_c


def diou(a, b):
    """Zheng et al. 2020, Eq. 6: IoU - rho^2(b, b_gt) / c^2."""
    inter, union, cw, ch, dx, dy, _ = _parts(a, b)
    return inter / union - (dx * dx + dy * dy) / (cw * cw + ch * ch)


def ciou_alpha_v(a, b, gate=None):
    """Zheng et al. 2020, Eqs. 9-11 (v from b = prediction a, gt = b); mmdet's gate on IoU > gate."""
    inter, union, *_, (w1, h1, w2, h2) = _parts(a, b)
    i = inter / union
    v = 4 / math.pi**2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    alpha = v / ((1 - i) + v)
    if gate is not None and not i > gate:
        alpha = 0.0
    return alpha, v


def ciou(a, b, gate=None):
    alpha, v = ciou_alpha_v(a, b, gate)
    return diou(a, b) - alpha * v


def eiou(a, b):
    """Zhang et al. 2022, Eq. 11 as a similarity: IoU - rho^2/c^2 - rho^2(w, w_gt)/Cw^2 - rho^2(h, h_gt)/Ch^2."""
    *_, cw, ch, _, _, (w1, h1, w2, h2) = _parts(a, b)
    return diou(a, b) - (w1 - w2) ** 2 / cw**2 - (h1 - h2) ** 2 / ch**2


def siou(a, b, theta=4.0):
    """Gevorgyan 2022, Eqs. 1-13, literally: x = c_h / sigma, Lambda = 1 - 2 sin^2(arcsin(x) - pi/4)."""
    inter, union, cw, ch, dx, dy, (w1, h1, w2, h2) = _parts(a, b)
    sigma = math.sqrt(dx * dx + dy * dy)
    c_h = abs(dy)  # height difference between the centres
    angle = 1 - 2 * math.sin(math.asin(c_h / sigma) - math.pi / 4) ** 2
    gamma = 2 - angle
    rho_x, rho_y = (dx / cw) ** 2, (dy / ch) ** 2
    distance = (1 - math.exp(-gamma * rho_x)) + (1 - math.exp(-gamma * rho_y))
    omega_w = abs(w1 - w2) / max(w1, w2)
    omega_h = abs(h1 - h2) / max(h1, h2)
    shape = (1 - math.exp(-omega_w)) ** theta + (1 - math.exp(-omega_h)) ** theta
    return inter / union - (distance + shape) / 2


SIMILARITIES = {"iou": iou, "giou": giou, "diou": diou, "ciou": ciou, "eiou": eiou, "siou": siou}


# --- losses -----------------------------------------------------------------------------------


def iou_loss(a, b, mode="linear", eps=1e-7):
    i = iou(a, b)
    return {"linear": 1 - i, "square": 1 - i * i, "log": -math.log(max(i, eps))}[mode]


def focal_eiou_loss(a, b, gamma):
    """Zhang et al. 2022, Eq. 16: IoU^gamma * L_EIoU."""
    return iou(a, b) ** gamma * (1 - eiou(a, b))


def wiou_loss(a, b, version=3, iou_mean=None, alpha=1.9, delta=3.0, gamma=0.5):
    """Tong et al. 2023, Eqs. 4-5 (v1), 8 (v2), 10-11 (v3)."""
    inter, union, cw, ch, dx, dy, _ = _parts(a, b)
    l_iou = 1 - inter / union
    r_wiou = math.exp((dx * dx + dy * dy) / (cw * cw + ch * ch))
    l_v1 = r_wiou * l_iou
    if version == 1:
        return l_v1
    beta = l_iou / iou_mean
    if version == 2:
        return beta**gamma * l_v1
    return beta / (delta * alpha ** (beta - delta)) * l_v1


def nwd_loss(a, b, constant=12.8):
    """Wang et al. 2021, Eqs. 5-6: W2^2 of N(c, diag(w^2/4, h^2/4)), NWD = exp(-sqrt(W2^2) / C)."""
    ca = [(a[0] + a[2]) / 2, (a[1] + a[3]) / 2, (a[2] - a[0]) / 2, (a[3] - a[1]) / 2]
    cb = [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, (b[2] - b[0]) / 2, (b[3] - b[1]) / 2]
    w2 = sum((u - v) ** 2 for u, v in zip(ca, cb, strict=True))
    return 1 - math.exp(-math.sqrt(w2) / constant)


# --- ProbIoU (Llerena et al. 2021) ------------------------------------------------------------


def _covariance(box):
    """Sigma = R diag(w^2/12, h^2/12) R^T, as a nested list."""
    _, _, w, h, angle = box
    c, s = math.cos(angle), math.sin(angle)
    rot = [[c, -s], [s, c]]
    d = [w * w / 12, h * h / 12]
    return [[sum(rot[i][k] * d[k] * rot[j][k] for k in range(2)) for j in range(2)] for i in range(2)]


def _det(m):
    return m[0][0] * m[1][1] - m[0][1] * m[1][0]


def bhattacharyya(a, b):
    """B_D = 1/8 dmu^T S^-1 dmu + 1/2 ln(det S / sqrt(det S1 det S2)), S = (S1 + S2) / 2 (Eq. 7)."""
    s1, s2 = _covariance(a), _covariance(b)
    s = [[(s1[i][j] + s2[i][j]) / 2 for j in range(2)] for i in range(2)]
    det = _det(s)
    inv = [[s[1][1] / det, -s[0][1] / det], [-s[1][0] / det, s[0][0] / det]]
    dmu = [a[0] - b[0], a[1] - b[1]]
    quad = sum(dmu[i] * inv[i][j] * dmu[j] for i in range(2) for j in range(2))
    return min(100.0, quad / 8 + 0.5 * math.log(det / math.sqrt(_det(s1) * _det(s2))))


def probiou(a, b):
    """1 - Hellinger distance, H = sqrt(1 - exp(-B_D)) (Eqs. 8-9)."""
    return 1 - math.sqrt(1 - math.exp(-bhattacharyya(a, b)))


# --- 3-D --------------------------------------------------------------------------------------


def giou_3d(a, b):
    inter, va, vb, vc = 1.0, 1.0, 1.0, 1.0
    for k in range(3):
        inter *= max(0.0, min(a[k + 3], b[k + 3]) - max(a[k], b[k]))
        va *= a[k + 3] - a[k]
        vb *= b[k + 3] - b[k]
        vc *= max(a[k + 3], b[k + 3]) - min(a[k], b[k])
    union = va + vb - inter
    return inter / union - (vc - union) / vc


def iou_3d(a, b):
    inter, va, vb = 1.0, 1.0, 1.0
    for k in range(3):
        inter *= max(0.0, min(a[k + 3], b[k + 3]) - max(a[k], b[k]))
        va *= a[k + 3] - a[k]
        vb *= b[k + 3] - b[k]
    return inter / (va + vb - inter)
