"""Cross-entropy and divergences over a large vocabulary, fused with the output projection."""

from __future__ import annotations

__all__: list[str] = []
