"""losskit: loss functions for PyTorch, correct, consistent, fast, and checked against the peers.

Quick start::

    import torch, losskit
    loss = losskit.cross_entropy(torch.tensor([[2.5, 0.1, -1.2]]), torch.tensor([0]))
    criterion = losskit.get("focal", gamma=1.5)       # registry: name or config -> module

The functions live in :mod:`losskit.functional`, the modules in :mod:`losskit.nn`; both are
re-exported here.
"""

from losskit import (
    boxes,
    compose,
    detection,
    distributed,
    functional,
    metric,
    nn,
    regularization,
    rl,
    segmentation,
)
from losskit._core.checks import checks_enabled, set_checks
from losskit._core.module import LossModule
from losskit._core.reduction import reduce_loss
from losskit._core.registry import available, families, get, register
from losskit.compose import build
from losskit.functional import *  # noqa: F403
from losskit.functional import __all__ as _functional_all
from losskit.nn import *  # noqa: F403
from losskit.nn import __all__ as _nn_all

__version__ = "0.1.0"

__all__ = [
    "LossModule",
    "available",
    "boxes",
    "build",
    "checks_enabled",
    "compose",
    "detection",
    "distributed",
    "families",
    "functional",
    "get",
    "metric",
    "nn",
    "reduce_loss",
    "register",
    "regularization",
    "rl",
    "segmentation",
    "set_checks",
    *_functional_all,
    *[name for name in _nn_all if name != "LossModule"],
]
