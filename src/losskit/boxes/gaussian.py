"""ProbIoU of rotated boxes: the Bhattacharyya and Hellinger distances of the boxes' Gaussians."""

from __future__ import annotations

import torch
from torch import Tensor

from losskit.boxes.axis_aligned import _prepare_pair, safe_sqrt

__all__ = ["probiou"]

PROBIOU_BOUND = 100.0  # B_D is clamped to [0, 100]: exp(-100) is 0 to float32 and float64 alike


def _adjugate_form(dx: Tensor, dy: Tensor, boxes: Tensor) -> Tensor:
    r""":math:`d^\top \operatorname{adj}(\Sigma) d` for a box's covariance, in the box's frame:
    :math:`(h^2 (d \cdot u)^2 + w^2 (d \cdot v)^2) / 12` with :math:`u` along ``w``, :math:`v` across
    it (the adjugate of a 2x2 matrix is linear, so that of a sum is the sum of these)."""
    _, _, w, h, angle = boxes.unbind(-1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    along, across = dx * cos + dy * sin, dy * cos - dx * sin
    return (h * h * along * along + w * w * across * across) / 12


def _det_of_sum(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    r""":math:`\det(\Sigma_1 + \Sigma_2) = \det\Sigma_1 + \det\Sigma_2 + \operatorname{tr}(\operatorname{adj}
    \Sigma_1 \, \Sigma_2)`, every term non-negative (the last one in box 1's frame, with the
    angle :math:`\delta` between the boxes)."""
    _, _, w1, h1, angle1 = boxes1.unbind(-1)
    _, _, w2, h2, angle2 = boxes2.unbind(-1)
    turn = angle2 - angle1
    cos_sq, sin_sq = torch.cos(turn) ** 2, torch.sin(turn) ** 2
    var_w1, var_h1, var_w2, var_h2 = w1 * w1, h1 * h1, w2 * w2, h2 * h2  # 12 times the variances
    cross = var_h1 * (var_w2 * cos_sq + var_h2 * sin_sq) + var_w1 * (var_w2 * sin_sq + var_h2 * cos_sq)
    return (var_w1 * var_h1 + var_w2 * var_h2 + cross) / 144


def bhattacharyya(boxes1: Tensor, boxes2: Tensor, eps: float) -> Tensor:
    r"""Bhattacharyya distance of the boxes' Gaussians, clamped to ``[0, 100]`` (see :func:`probiou`).

    A pair with a box of area at most ``eps`` (a degenerate Gaussian) gets the bound, 100, with a
    zero gradient: its true distance is infinite.

    Both terms are written as sums of non-negative terms, so float32 keeps their digits for similar
    boxes (where the covariance term vanishes to second order) and for very different ones (a thin
    box against a small one, where the entries of :math:`\Sigma_1 + \Sigma_2` and the determinant
    ratio cancel). With :math:`\delta` the angle between the boxes, the covariance term is

    .. math::

        \tfrac12 \ln\frac{\det\Sigma}{\sqrt{\det\Sigma_1\det\Sigma_2}}
        = \tfrac12 \operatorname{log1p}\frac{(w_1h_1 - w_2h_2)^2 + \cos^2\delta\,(h_1w_2 - w_1h_2)^2
          + \sin^2\delta\,(h_1h_2 - w_1w_2)^2}{4\,w_1h_1w_2h_2},

    each difference taken from differences of the sides, and the centre term uses
    :math:`\det(\Sigma_1 + \Sigma_2)` and :math:`\operatorname{adj}(\Sigma_1 + \Sigma_2)` in each
    box's frame.
    """
    _, _, w1, h1, angle1 = boxes1.unbind(-1)
    _, _, w2, h2, angle2 = boxes2.unbind(-1)
    area1, area2 = w1 * h1, w2 * h2
    # A pair with a NaN coordinate is not degenerate: the NaN goes on to the result instead of
    # becoming the bound.
    degenerate = ((area1 <= eps) | (area2 <= eps)) & ~torch.isnan(boxes1.sum(-1) + boxes2.sum(-1))
    dx, dy = boxes2[..., 0] - boxes1[..., 0], boxes2[..., 1] - boxes1[..., 1]
    det_sum = torch.where(degenerate, 1.0, _det_of_sum(boxes1, boxes2))
    quad = (_adjugate_form(dx, dy, boxes1) + _adjugate_form(dx, dy, boxes2)) / det_sum  # d^T (2 S)^-1 d
    turn = angle2 - angle1
    size = w1 * (h1 - h2) + h2 * (w1 - w2)  # w1 h1 - w2 h2
    skew = h1 * (w2 - w1) + w1 * (h1 - h2)  # h1 w2 - w1 h2
    turned = h1 * (h2 - w1) + w1 * (h1 - w2)  # h1 h2 - w1 w2: small for the same box turned a quarter
    excess = ((size * size + torch.cos(turn) ** 2 * skew * skew + torch.sin(turn) ** 2 * turned * turned)
              / (4 * torch.where(degenerate, 1.0, area1 * area2)))
    distance = (quad / 4 + torch.log1p(excess) / 2).clamp(0.0, PROBIOU_BOUND)
    return torch.where(degenerate, PROBIOU_BOUND, distance)


def hellinger(distance: Tensor) -> Tensor:
    """Hellinger distance from a Bhattacharyya distance: ``sqrt(1 - exp(-B))`` (``expm1``-accurate)."""
    return safe_sqrt(-torch.expm1(-distance))


def probiou(boxes1: Tensor, boxes2: Tensor, *, aligned: bool = False, eps: float | None = None) -> Tensor:
    r"""ProbIoU of rotated boxes: one minus the Hellinger distance of their Gaussians.

    Each ``xywhr`` box becomes the Gaussian with its centre and the covariance of the uniform
    density on it, :math:`\Sigma = R_\theta \operatorname{diag}(w^2/12, h^2/12) R_\theta^\top`. The
    Bhattacharyya distance of two Gaussians and the Hellinger distance follow in closed form, and
    ProbIoU is a smooth stand-in for the rotated IoU that needs no polygon clipping:

    .. math::

        B_D = \tfrac18 (\mu_1 - \mu_2)^\top \Sigma^{-1} (\mu_1 - \mu_2)
            + \tfrac12 \ln\frac{\det \Sigma}{\sqrt{\det\Sigma_1 \det\Sigma_2}},
        \qquad \Sigma = \tfrac12(\Sigma_1 + \Sigma_2),

        \mathrm{ProbIoU} = 1 - \sqrt{1 - e^{-B_D}}.

    :math:`B_D` is clamped to [0, 100] (as Ultralytics does; :math:`e^{-100}` is 0 to every float
    dtype in use). ProbIoU is 1 for identical boxes (Ultralytics adds ``eps`` inside the square root,
    which leaves :math:`1 - \sqrt{\varepsilon} \approx 0.9997` there) and 0 for a box of area at most
    ``eps``. It is symmetric, invariant to moving both boxes, and to scaling both uniformly.

    Args:
        boxes1: Rotated boxes ``(cx, cy, w, h, angle)``, angle in radians, shape ``(..., N, 5)``.
        boxes2: Shape ``(..., M, 5)`` (pairwise) or broadcastable to ``boxes1`` (aligned).
        aligned: Compare box ``i`` with box ``i`` instead of every pair.
        eps: Area at or below which a box counts as degenerate; ``None`` picks :func:`default_eps`.

    Shape:
        Pairwise ``(..., N, M)``; aligned ``(..., N)``.

    Returns:
        ProbIoU in [0, 1], in the boxes' floating dtype.

    Raises:
        ValueError: For shapes that do not fit, or (value check) a negative width or height.

    Examples:
        >>> import torch
        >>> from losskit.boxes import probiou
        >>> box = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0]])
        >>> turned = torch.tensor([[0.0, 0.0, 2.0, 4.0, torch.pi / 2]])  # the same rectangle
        >>> probiou(box, torch.cat([box, turned, box + torch.tensor([4.0, 0, 0, 0, 0])]))
        tensor([[1.0000, 1.0000, 0.1186]])

    References:
        Llerena et al., "Gaussian Bounding Boxes and Probabilistic Intersection-over-Union for
        Object Detection", arXiv:2106.06072 (2021). Ultralytics ``probiou`` (the clamp to 100).
    """
    b1, b2, eps, out_dtype = _prepare_pair(boxes1, boxes2, "xywhr", aligned, eps)
    distance = bhattacharyya(b1, b2, eps)
    # 1 - sqrt(1 - e^-B) written without the subtraction: it keeps the digits of a small ProbIoU.
    return (torch.exp(-distance) / (1 + hellinger(distance))).to(out_dtype)
