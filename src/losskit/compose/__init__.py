r"""Weighted sums of losses with named components, weight schedules and learned weighting.

A :class:`CompositeLoss` is a weighted sum of terms. Each :class:`Term` holds a loss module (a
submodule, so ``.to()`` and ``state_dict`` reach it), a weight (a number or a :class:`Schedule`
of the training progress) and a name::

    import losskit
    from losskit import nn as lnn

    criterion = 0.5 * lnn.DiceLoss() + lnn.CrossEntropyLoss()      # loss algebra
    criterion = losskit.build("0.5*dice + ce")                       # the same, from a string
    out = criterion(logits, labels)      # a tensor: the total, carrying its components
    out.backward()
    out.items()      # {'total': ..., 'dice': ..., 'dice/weighted': ..., 'cross_entropy': ...}

The call returns a :class:`CompositeResult`: a ``torch.Tensor`` (the total, with its autograd
graph) that also carries each term's unweighted value, weighted value and weight, detached, by
name. Nothing is stored on the module during ``forward``.

Weights that change during training are :class:`Schedule` objects (:func:`constant`,
:func:`linear`, :func:`cosine`, :func:`step`, :func:`warmup`), functions of the fraction of
training done, which the composite keeps as explicit state (``set_progress``, ``step``, saved in
``state_dict``). ``weighting="uncertainty"`` learns the weights instead (Kendall, Gal & Cipolla,
2018). See ``docs/compose.md``.

The package has two layers. The runtime (:mod:`~losskit.compose.composite`,
:mod:`~losskit.compose.schedules`, :mod:`~losskit.compose.weighting`) is what a composite is and
does; the builder (:mod:`~losskit.compose.builder`, :mod:`~losskit.compose.spec`,
:mod:`~losskit.compose.toml`) makes one from a spec string, a config or TOML, resolving names
through :mod:`losskit._core.registry`.
"""

from losskit.compose.builder import build, from_toml
from losskit.compose.composite import CompositeLoss, CompositeResult, LossAlgebra, Term
from losskit.compose.deep_supervision import DeepSupervisionLoss
from losskit.compose.schedules import (
    SCHEDULES,
    Constant,
    Cosine,
    Linear,
    Product,
    Schedule,
    Step,
    Warmup,
    constant,
    cosine,
    linear,
    schedule_from_config,
    step,
    warmup,
)
from losskit.compose.spec import MAX_SPEC_LENGTH, MAX_SPEC_NESTING
from losskit.compose.toml import MAX_TOML_LENGTH, to_toml
from losskit.compose.weighting import UNCERTAINTY_FORMS, WEIGHTINGS

__all__ = [
    "DeepSupervisionLoss",
    "MAX_SPEC_LENGTH",
    "MAX_SPEC_NESTING",
    "MAX_TOML_LENGTH",
    "SCHEDULES",
    "UNCERTAINTY_FORMS",
    "WEIGHTINGS",
    "CompositeLoss",
    "CompositeResult",
    "Constant",
    "Cosine",
    "Linear",
    "LossAlgebra",
    "Product",
    "Schedule",
    "Step",
    "Term",
    "Warmup",
    "build",
    "constant",
    "cosine",
    "from_toml",
    "linear",
    "schedule_from_config",
    "step",
    "to_toml",
    "warmup",
]
