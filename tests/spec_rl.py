"""Contract-suite specs for the rl losses (see tests/specs.py)."""

from __future__ import annotations

from tests.specs import Spec

SPECS: dict[str, Spec] = {}
