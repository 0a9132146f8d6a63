"""The skips the suite accepts: an optional dependency that is not installed, or no CUDA device.

Any other skip is a check that did not run (a renamed API, a case the spec gave up on), so it
fails the session: ``pytest`` exits non-zero and lists each one. Loaded by ``tests/conftest.py``.
"""

from __future__ import annotations

import re

import pytest

ALLOWED_SKIPS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^could not import '[\w.]+'"),  # pytest.importorskip of an optional dependency
    re.compile(r"needs mkdocs"),  # the docs build: the dev extra's site builder
    re.compile(r"\bCUDA\b"),  # device-only checks on a machine without one
)

_unexpected: list[str] = []


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _record(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _reason(report)
        if not any(pattern.search(reason) for pattern in ALLOWED_SKIPS):
            _unexpected.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _record(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _unexpected and not hasattr(session.config, "workerinput") and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if _unexpected:
        terminalreporter.section("skips not on the allowlist (tests/skip_policy.py)", red=True)
        for line in _unexpected:
            terminalreporter.line(line)
