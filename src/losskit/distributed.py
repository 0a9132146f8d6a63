"""Distributed-correct normalization: global counts and all-gather with gradient."""

from __future__ import annotations

__all__: list[str] = []
