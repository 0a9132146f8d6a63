"""Weighted sums of losses with named components, and weight schedules."""

from __future__ import annotations

__all__ = ["build"]


def build(spec: object):
    """A composite loss from a spec string such as ``"0.5*dice + ce"``, a dict or a list."""
    raise NotImplementedError("losskit.build is not implemented yet")
