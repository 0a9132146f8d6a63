"""Exact areas of rotated rectangles' intersections and convex hulls, batched and differentiable.

The geometry behind :func:`losskit.boxes.rotated_box_iou` and :func:`losskit.boxes.rotated_box_iou_3d`.
Every function takes rectangles as :class:`Rect` tensors that broadcast against each other and
works on all of them at once: no Python loop over boxes, only over the fixed 4 corners and edges.

**Intersection.** The intersection of two convex polygons is a convex polygon whose vertices are
among the corners of each rectangle inside the other and the crossings of their edges: 4 + 4 + 16
candidates, at most 8 of them distinct vertices. The valid candidates are sorted by angle around
their mean (a point inside the polygon) and the shoelace formula gives the area. Duplicates (a
corner on the other's edge, coincident boxes) add zero-length edges, so they change nothing; a
candidate admitted by the tolerance lies within it of the polygon's boundary and changes the area
by at most that much times the perimeter. Parallel (collinear) edges have no crossing: their
shared vertices are corners, found by the inside test.

**Convex hull.** A corner is a hull vertex when the directions to the other 7 corners leave a gap
of at least pi; the hull is then the angular sort of those vertices, as above.

Sorting decides only the order of the vertices (it is done without gradient); the area is a
polynomial in the vertices, which are differentiable functions of the boxes, so the area's
gradient is exact wherever the set of vertices does not change.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

# Local corner signs (along the first axis, along the second), counter-clockwise.
_SIGNS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))
_UNUSED_ANGLE = 10.0  # sorts after every atan2 value, which lie in [-pi, pi]


class Rect(NamedTuple):
    """A rectangle: ``centre`` (..., 2), unit ``axis`` (..., 2) of its first side, ``half`` (..., 2)
    the half lengths of its first and second sides (the second side is along the axis turned by
    +90 degrees)."""

    centre: Tensor
    axis: Tensor
    half: Tensor


def rect(cx: Tensor, cy: Tensor, first: Tensor, second: Tensor, angle: Tensor) -> Rect:
    """A :class:`Rect` from its centre, side lengths and the angle of its first side."""
    return Rect(torch.stack((cx, cy), -1), torch.stack((torch.cos(angle), torch.sin(angle)), -1),
                torch.stack((first, second), -1) / 2)


def corners(r: Rect) -> Tensor:
    """The 4 corners ``(..., 4, 2)``, counter-clockwise (for positive sides)."""
    cos, sin = r.axis[..., 0], r.axis[..., 1]
    along = r.half[..., 0].unsqueeze(-1) * torch.stack((cos, sin), -1)  # half the first side
    across = r.half[..., 1].unsqueeze(-1) * torch.stack((-sin, cos), -1)  # half the second side
    return torch.stack([r.centre + a * along + b * across for a, b in _SIGNS], -2)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: Tensor, r: Rect, tol: Tensor) -> Tensor:
    """Whether each point ``(..., P, 2)`` lies in rectangle ``r`` (closed, widened by ``tol`` (...))."""
    offset = points - r.centre.unsqueeze(-2)
    cos, sin = r.axis[..., :1], r.axis[..., 1:]  # (..., 1): broadcast over the points
    along = offset[..., 0] * cos + offset[..., 1] * sin
    across = offset[..., 1] * cos - offset[..., 0] * sin
    slack = tol.unsqueeze(-1)
    return (along.abs() <= r.half[..., :1] + slack) & (across.abs() <= r.half[..., 1:] + slack)


def _crossings(p: Tensor, q: Tensor, rel_tol: float) -> tuple[Tensor, Tensor]:
    """Crossing points ``(..., 16, 2)`` of the 4 edges of ``p`` with the 4 edges of ``q`` and
    whether each exists (the segments meet, up to ``rel_tol`` of their lengths, and are not parallel)."""
    a = p.unsqueeze(-2)  # (..., 4, 1, 2): start of each edge of p
    r = (p.roll(-1, -2) - p).unsqueeze(-2)  # its direction
    c = q.unsqueeze(-3)  # (..., 1, 4, 2)
    s = (q.roll(-1, -2) - q).unsqueeze(-3)
    den = _cross(r, s)
    size = torch.linalg.vector_norm(r, dim=-1) * torch.linalg.vector_norm(s, dim=-1)
    crossing = den.abs() > rel_tol * size
    den = torch.where(crossing, den, 1.0)
    start = c - a
    t = _cross(start, s) / den  # position along p's edge
    u = _cross(start, r) / den  # position along q's edge
    lo, hi = -rel_tol, 1 + rel_tol
    valid = crossing & (t >= lo) & (t <= hi) & (u >= lo) & (u <= hi)
    points = a + t.unsqueeze(-1) * r
    return points.flatten(-3, -2), valid.flatten(-2)


def polygon_area(points: Tensor, valid: Tensor) -> Tensor:
    """Area of the convex polygon whose vertices are ``points[valid]`` (``(..., P, 2)``, any order,
    duplicates allowed): sort by angle around their mean, then the shoelace formula."""
    with torch.no_grad():
        weight = valid.to(points.dtype).unsqueeze(-1)
        centre = (points * weight).sum(-2) / weight.sum(-2).clamp_min(1)
        rel = points - centre.unsqueeze(-2)
        angle = torch.where(valid, torch.atan2(rel[..., 1], rel[..., 0]), _UNUSED_ANGLE)
        angle, order = angle.sort(-1)
        used = angle < _UNUSED_ANGLE
    rel = points - centre.unsqueeze(-2)  # the area does not depend on the (constant) centre
    ordered = rel.gather(-2, order.unsqueeze(-1).expand_as(rel))
    # Unused slots repeat the first vertex: the closing edge, then edges of length 0.
    ordered = torch.where(used.unsqueeze(-1), ordered, ordered[..., :1, :])
    return _cross(ordered, ordered.roll(-1, -2)).sum(-1) / 2


def _scale(r1: Rect, r2: Rect) -> Tensor:
    """A length of the pair's size, for tolerances."""
    reach = r1.half.abs().sum(-1) + r2.half.abs().sum(-1)
    return reach + (r1.centre - r2.centre).abs().sum(-1)


def intersection_area(r1: Rect, r2: Rect, rel_tol: float) -> Tensor:
    """Area of the intersection of two rectangles (shapes broadcast)."""
    p, q = corners(r1), corners(r2)
    p, q = torch.broadcast_tensors(p, q)
    tol = rel_tol * _scale(r1, r2)
    cross_points, cross_valid = _crossings(p, q, rel_tol)
    points = torch.cat((p, q, cross_points), -2)
    valid = torch.cat((_inside(p, r2, tol), _inside(q, r1, tol), cross_valid), -1)
    return polygon_area(points, valid)


def hull_vertices(points: Tensor) -> Tensor:
    """Whether each point ``(..., P, 2)`` is a vertex of the points' convex hull (points on a hull
    edge may count as vertices: they do not change the hull's area)."""
    with torch.no_grad():
        d = points.unsqueeze(-3) - points.unsqueeze(-2)  # (..., P, P, 2): from point i to point k
        angle = torch.atan2(d[..., 1], d[..., 0])
        apart = d.abs().sum(-1) > 0
        # Points that coincide with point i (itself included) take the angle of one that does not,
        # so they leave no gap; if all coincide, every gap is 0 but the wrap-around one (2 pi).
        first = apart.to(torch.uint8).argmax(-1, keepdim=True)
        angle = torch.where(apart, angle, angle.gather(-1, first)).sort(-1).values
        gaps = angle.diff(dim=-1)
        wrap = angle[..., :1] + 2 * math.pi - angle[..., -1:]
        widest = torch.cat((gaps, wrap), -1).amax(-1)
        return widest >= math.pi - 1e-9


def hull_area_and_diameter(r1: Rect, r2: Rect) -> tuple[Tensor, Tensor]:
    """Area of the convex hull of two rectangles, and its squared diameter (the largest squared
    distance between two of their corners)."""
    points = torch.cat(torch.broadcast_tensors(corners(r1), corners(r2)), -2)  # (..., 8, 2)
    area = polygon_area(points, hull_vertices(points))
    diameter = (points.unsqueeze(-2) - points.unsqueeze(-3)).square().sum(-1).flatten(-2).amax(-1)
    return area, diameter
