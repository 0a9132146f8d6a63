"""Policy-gradient and preference objectives, written as losses to minimize."""

from __future__ import annotations

__all__: list[str] = []
