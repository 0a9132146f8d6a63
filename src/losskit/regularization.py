"""Parameter penalties (L1, L2, elastic net) with parameter filters."""

from __future__ import annotations

__all__: list[str] = []
