"""Contrastive and metric-learning losses, with cross-rank negatives when distributed."""

from __future__ import annotations

__all__: list[str] = []
