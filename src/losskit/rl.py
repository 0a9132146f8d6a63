"""Reinforcement learning: returns, advantages, and the policy and preference objectives."""

from __future__ import annotations

__all__: list[str] = []
