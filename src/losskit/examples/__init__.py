"""The one table of example inputs: how to call each registered loss.

Each registered loss has one :class:`~losskit.examples.base.Spec`, defined in the module of its
family (``losskit/examples/<family>.py``, a dict ``SPECS`` by registered name) and gathered here.
The contract suite (``tests/test_contract.py``), the accuracy contract, the compile tests,
``losskit plot`` (the 1-D probe a spec names, :mod:`losskit.examples.probes`) and
``losskit info`` (the example call) all read this table: :func:`spec` and :func:`sweep` answer
for one loss by any of its names.

A new family module is added to :data:`FAMILY_MODULES`; a loss outside the registry (the fused
large-vocabulary and policy objectives) is listed in :func:`accuracy_specs` only.
"""

from __future__ import annotations

import losskit  # noqa: F401  (registers every loss)
from losskit._core.registry import entry
from losskit.examples import (
    boundary,
    boxes,
    classification,
    contrastive,
    detection,
    divergence,
    fused_policy,
    large_vocab,
    lovasz,
    metric,
    probes,
    regression,
    rl,
    segmentation,
    ssim,
)
from losskit.examples.base import REGIMES, Budget, Case, Regime, Spec
from losskit.examples.probes import Sweep

__all__ = ["FAMILY_MODULES", "REGIMES", "Budget", "Case", "Regime", "Spec", "Sweep", "accuracy_specs", "registry",
           "spec", "sweep"]

#: The modules whose ``SPECS`` cover the registered losses.
FAMILY_MODULES = (regression, classification, divergence, boxes, detection, segmentation, lovasz, boundary,
                  large_vocab, rl, contrastive, metric, ssim)


def registry() -> dict[str, Spec]:
    """Every spec, by registered name."""
    specs: dict[str, Spec] = {}
    for module in FAMILY_MODULES:
        overlap = specs.keys() & module.SPECS.keys()
        assert not overlap, f"specs defined twice: {overlap}"
        specs.update(module.SPECS)
    return specs


def accuracy_specs() -> dict[str, Spec]:
    """Every loss under the accuracy contract: the registry, the fused large-vocabulary losses and the
    fused policy and preference objectives."""
    return {**registry(), **large_vocab.FUSED, **fused_policy.FUSED}


def spec(name: str) -> Spec:
    """The spec of a registered loss, by its name or an alias; ``ValueError`` for an unknown name or
    a loss without a spec."""
    found = entry(name)
    specs = registry()
    if found.name not in specs:
        raise ValueError(f"{found.name!r} has no spec in losskit.examples (its family's module defines one)")
    return specs[found.name]


def sweep(name: str) -> Sweep:
    """The 1-D probe ``losskit plot`` draws for a registered loss: its spec's, else its family's."""
    found = entry(name)
    chosen = spec(name).probe or probes.FAMILY.get(found.family)
    if chosen is None:
        raise ValueError(f"no 1-D probe for {found.name!r}: family {found.family!r} has no default, and its spec "
                         "names none (Spec(probe=...))")
    return chosen
