"""The README's commands and quick start stay true."""

import re
import subprocess
import sys
from pathlib import Path

import torch

import losskit

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command_and_nothing_else():
    test_command = next(b for b in _bash_blocks() if "pytest" in b)
    ci_lines = [line for line in (ROOT / ".ci/run").read_text().splitlines()
                if line and not line.startswith("#") and line not in ("set -euo pipefail", 'cd "$(dirname "$0")/.."')]
    assert ci_lines == [test_command]


def test_quick_start_prints_the_glossary_value():
    loss = losskit.cross_entropy(torch.tensor([[2.5, 0.1, -1.2]]), torch.tensor([0]))
    assert f"Calculated Loss: {loss.item():.4f}" == "Calculated Loss: 0.1093"


def test_example_script_trains_and_the_loss_falls():
    out = subprocess.run([sys.executable, str(ROOT / "examples/train_tiny.py")], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    losses = [float(m) for m in re.findall(r"cross-entropy step +\d+ +loss ([\d.]+)", out)]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    accuracy = float(re.search(r"test accuracy ([\d.]+)", out).group(1))
    assert accuracy > 0.9
    errors = dict(re.findall(r"(huber|mse): mean absolute error on clean test points ([\d.]+)", out))
    assert float(errors["huber"]) < float(errors["mse"])  # Huber resists the outliers


def test_detector_example_trains_and_the_loss_falls():
    out = subprocess.run([sys.executable, str(ROOT / "examples/train_detector.py"), "--steps", "150"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    losses = [float(m) for m in re.findall(r"detector step +\d+ +loss +([\d.]+)", out)]
    assert len(losses) == 7 and losses[-1] < 0.5 * losses[0]
    before, after = (float(v) for v in re.findall(r"recall ([\d.]+)", out))
    assert before == 0.0 and after > before
