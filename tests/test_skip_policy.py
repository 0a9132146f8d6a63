"""tests/skip_policy.py: a skip not on the allowlist fails the session; the allowed ones do not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ALLOWED = '''
import pytest

def test_optional_dependency():
    pytest.importorskip("a_module_that_is_not_installed")

@pytest.mark.skipif(True, reason="needs a CUDA device")
def test_device():
    pass

def test_runs():
    assert True
'''

HIDDEN = ALLOWED + '''
def test_renamed_api():
    pytest.skip("losskit.boxes.box_iou does not exist yet")
'''


def run(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    path = tmp_path / "test_sample.py"
    path.write_text(source)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.skip_policy", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_allowed_skips_pass(tmp_path):
    result = run(tmp_path, ALLOWED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 2 skipped" in result.stdout


def test_a_skip_off_the_allowlist_fails_the_session(tmp_path):
    result = run(tmp_path, HIDDEN)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "skips not on the allowlist" in result.stdout
    assert "test_renamed_api: losskit.boxes.box_iou does not exist yet" in result.stdout
