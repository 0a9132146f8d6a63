"""Shared test settings: a derandomized Hypothesis profile for CI, float64 by default where asked."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.skip_policy"]  # a skip not on its allowlist fails the session

settings.register_profile(
    "ci",
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# One core per test process: pytest-xdist runs one worker per core, and two workers with two
# threads each on two cores spin against each other (a 0.3 s test took 24 s). Subprocesses that
# tests start inherit the setting through OMP_NUM_THREADS.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
torch.set_num_threads(_THREADS)

# Without CUDA, the Triton kernels (backend="triton") run on CPU tensors in Triton's interpreter,
# which must be on before the first kernel module is imported (tests/test_triton_kernels.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded generator: every random test input is reproducible."""
    return torch.Generator().manual_seed(0)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "peer" in item.keywords:
            item.add_marker(pytest.mark.slow)
