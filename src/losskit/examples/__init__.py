"""The one table of example inputs: how to call each registered loss.

Each registered loss has one :class:`~losskit.examples.base.Spec`, defined in the module of its
family (``losskit/examples/<family>.py``, a dict ``SPECS`` by registered name) and gathered here.
The contract suite (``tests/test_contract.py``), the accuracy contract, the compile tests,
``losskit plot`` (the 1-D probe a spec names, :mod:`losskit.examples.probes`) and
``losskit info`` (the example call) all read this table.

A new family module is added to :data:`FAMILY_MODULES`; a loss outside the registry (the fused
large-vocabulary and policy objectives) is listed in :func:`accuracy_specs` only.
"""

from __future__ import annotations

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
    regression,
    rl,
    segmentation,
)
from losskit.examples.base import REGIMES, Budget, Case, Regime, Spec

__all__ = ["FAMILY_MODULES", "REGIMES", "Budget", "Case", "Regime", "Spec", "accuracy_specs", "registry"]

#: The modules whose ``SPECS`` cover the registered losses.
FAMILY_MODULES = (regression, classification, divergence, boxes, detection, segmentation, lovasz, boundary,
                  large_vocab, rl, contrastive, metric)


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
