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
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from losskit._core import registry
from losskit._core.checks import check_number, check_one_of, clip, did_you_mean, excerpt

__all__ = [
    "CompositeLoss",
    "CompositeResult",
    "Constant",
    "Cosine",
    "Linear",
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

WEIGHTINGS = ("fixed", "uncertainty")
# (a, b) in  a * exp(-s) * L + b * s,  s = log(sigma^2)
UNCERTAINTY_FORMS: dict[str, tuple[float, float]] = {
    "plain": (1.0, 1.0),
    "regression": (0.5, 0.5),
    "classification": (1.0, 0.5),
}
# Specs and configs come from outside (command lines, files): they are parsed with bounded depth
# and length, so that no input reaches Python's recursion limit or makes a megabyte message.
MAX_SPEC_LENGTH = 4096  # characters of a spec string
MAX_SPEC_NESTING = 32  # parentheses, brackets, signs and schedule calls inside each other
MAX_TOML_LENGTH = 1_000_000  # characters of TOML text


# --- schedules ----------------------------------------------------------------------------------


def _number(name: str, value: object) -> float:
    value = check_number(name, value)
    if value in (math.inf, -math.inf):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _unit(begin: float, until: float, progress: float) -> float:
    """Where ``progress`` lies in ``[begin, until]``, as a fraction clamped to [0, 1]."""
    if progress <= begin:
        return 0.0
    if progress >= until:
        return 1.0
    return (progress - begin) / (until - begin)


def _check_span(begin: object, until: object) -> tuple[float, float]:
    begin = check_number("begin", begin, low=0.0, high=1.0)
    until = check_number("until", until, low=0.0, high=1.0)
    if not begin < until:
        raise ValueError(f"begin must be less than until, got begin={begin:g}, until={until:g}")
    return begin, until


class Schedule:
    """A weight as a function of the fraction of training done, ``progress`` in [0, 1].

    Schedules are immutable values: they compare equal by their settings, multiply by numbers
    (``2 * linear(0.8, 0.1) == linear(1.6, 0.2)``) and by each other (a :class:`Product`), and
    round-trip through :meth:`get_config` / :func:`schedule_from_config`.
    """

    kind: ClassVar[str] = ""

    def __call__(self, progress: float) -> float:
        raise NotImplementedError

    def scaled(self, factor: float) -> Schedule:
        """This schedule times a number."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"schedule": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Schedule):
                value = value.get_config()
            elif isinstance(value, tuple):
                value = [v.get_config() if isinstance(v, Schedule) else v for v in value]
            config[f.name] = value
        return config

    def __mul__(self, other: object) -> Schedule:
        if isinstance(other, Schedule):
            return Product((self, other))
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return self.scaled(float(other))
        return NotImplemented

    def __rmul__(self, other: object) -> Schedule:
        return self.__mul__(other)

    def __truediv__(self, other: object) -> Schedule:
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other != 0:
            return self.scaled(1.0 / float(other))
        return NotImplemented

    def __neg__(self) -> Schedule:
        return self.scaled(-1.0)


@dataclass(frozen=True)
class Constant(Schedule):
    """The same value at every progress."""

    value: float
    kind: ClassVar[str] = "constant"

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _number("value", self.value))

    def __call__(self, progress: float) -> float:
        return self.value

    def scaled(self, factor: float) -> Schedule:
        return Constant(self.value * factor)


@dataclass(frozen=True)
class Linear(Schedule):
    r"""``start`` until ``begin``, then linear to ``end`` at ``until``, then ``end``.

    .. math:: w(f) = s + (e - s)\,u, \qquad u = \mathrm{clamp}\Big(\frac{f - b}{t - b}, 0, 1\Big)
    """

    start: float
    end: float
    begin: float = 0.0
    until: float = 1.0
    kind: ClassVar[str] = "linear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _number("start", self.start))
        object.__setattr__(self, "end", _number("end", self.end))
        begin, until = _check_span(self.begin, self.until)
        object.__setattr__(self, "begin", begin)
        object.__setattr__(self, "until", until)

    def __call__(self, progress: float) -> float:
        return self.start + (self.end - self.start) * _unit(self.begin, self.until, progress)

    def scaled(self, factor: float) -> Schedule:
        return dataclasses.replace(self, start=self.start * factor, end=self.end * factor)


@dataclass(frozen=True)
class Cosine(Linear):
    r"""Half a cosine from ``start`` to ``end`` over ``[begin, until]`` (flat outside).

    .. math:: w(f) = e + (s - e)\,\frac{1 + \cos(\pi u)}{2}, \qquad u \text{ as in Linear}
    """

    kind: ClassVar[str] = "cosine"

    def __call__(self, progress: float) -> float:
        u = _unit(self.begin, self.until, progress)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * u))


@dataclass(frozen=True)
class Step(Schedule):
    """Piecewise constant: ``values[i]`` from ``boundaries[i - 1]`` (inclusive) to ``boundaries[i]``."""

    values: tuple[float, ...]
    boundaries: tuple[float, ...]
    kind: ClassVar[str] = "step"

    def __post_init__(self) -> None:
        values = tuple(_number(f"values[{i}]", v) for i, v in enumerate(self.values))
        bounds = tuple(check_number(f"boundaries[{i}]", b, low=0.0, high=1.0) for i, b in enumerate(self.boundaries))
        if len(values) != len(bounds) + 1:
            raise ValueError(f"step needs one more value than boundaries, got {len(values)} values and "
                             f"{len(bounds)} boundaries")
        if any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)):
            raise ValueError(f"boundaries must be increasing, got {list(bounds)}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "boundaries", bounds)

    def __call__(self, progress: float) -> float:
        index = sum(progress >= b for b in self.boundaries)
        return self.values[index]

    def scaled(self, factor: float) -> Schedule:
        return Step(tuple(v * factor for v in self.values), self.boundaries)


@dataclass(frozen=True)
class Warmup(Schedule):
    r"""Linear warm-up from ``start`` to ``then``'s value at ``until``, then ``then``.

    .. math:: w(f) = s + (g(t) - s)\,\frac{f}{t} \;\; (f < t), \qquad w(f) = g(f) \;\; (f \ge t)

    ``then`` (:math:`g`) is a schedule or a number, evaluated at the raw progress, so
    ``warmup(0.1, cosine(1.0, 0.0, begin=0.1))`` warms up over the first 10% and then decays
    over the remaining 90%.
    """

    until: float
    then: Schedule | float = 1.0
    start: float = 0.0
    kind: ClassVar[str] = "warmup"

    def __post_init__(self) -> None:
        object.__setattr__(self, "until", check_number("until", self.until, low=0.0, high=1.0, low_open=True))
        object.__setattr__(self, "start", _number("start", self.start))
        then = self.then
        if isinstance(then, Mapping):
            then = schedule_from_config(then)
        elif not isinstance(then, Schedule):
            then = Constant(_number("then", then))
        object.__setattr__(self, "then", then)

    def __call__(self, progress: float) -> float:
        if progress >= self.until:
            return self.then(progress)
        return self.start + (self.then(self.until) - self.start) * progress / self.until

    def scaled(self, factor: float) -> Schedule:
        return Warmup(self.until, self.then.scaled(factor), self.start * factor)


@dataclass(frozen=True)
class Product(Schedule):
    """The product of several schedules."""

    factors: tuple[Schedule, ...]
    kind: ClassVar[str] = "product"

    def __post_init__(self) -> None:
        flat: list[Schedule] = []
        for f in self.factors:
            f = schedule_from_config(f) if isinstance(f, Mapping) else f
            if not isinstance(f, Schedule):
                raise TypeError(f"product factors must be schedules, got {type(f).__name__}")
            flat.extend(f.factors if isinstance(f, Product) else (f,))
        object.__setattr__(self, "factors", tuple(flat))

    def __call__(self, progress: float) -> float:
        return math.prod(f(progress) for f in self.factors)

    def scaled(self, factor: float) -> Schedule:
        return Product((self.factors[0].scaled(factor), *self.factors[1:]))


def constant(value: float) -> Constant:
    """A constant weight (a plain number works too)."""
    return Constant(value)


def linear(start: float, end: float, *, begin: float = 0.0, until: float = 1.0) -> Linear:
    """Linear from ``start`` (at ``begin``) to ``end`` (at ``until``); flat outside.

    YOLO26's one-to-many branch weight is ``linear(0.8, 0.1)``, and the one-to-one branch's
    ``linear(0.2, 0.9)`` (see :func:`losskit.detection.one_to_many_weight`).

    Examples:
        >>> from losskit.compose import linear
        >>> w = linear(0.8, 0.1)
        >>> round(w(0.0), 12), round(w(0.5), 12), round(w(1.0), 12)
        (0.8, 0.45, 0.1)
    """
    return Linear(start, end, begin, until)


def cosine(start: float, end: float, *, begin: float = 0.0, until: float = 1.0) -> Cosine:
    """Half a cosine from ``start`` (at ``begin``) to ``end`` (at ``until``); flat outside."""
    return Cosine(start, end, begin, until)


def step(values: Iterable[float], boundaries: Iterable[float]) -> Step:
    """Piecewise constant: ``step([1.0, 0.5, 0.1], [0.5, 0.8])`` is 1 before 50%, 0.5 until 80%, then 0.1."""
    return Step(tuple(values), tuple(boundaries))


def warmup(until: float, then: Schedule | float = 1.0, *, start: float = 0.0) -> Warmup:
    """Linear from ``start`` at progress 0 to ``then``'s value at ``until``, then ``then``."""
    return Warmup(until, then, start)


SCHEDULES: dict[str, Any] = {"constant": constant, "linear": linear, "cosine": cosine, "step": step,
                             "warmup": warmup}
_SCHEDULE_CLASSES: dict[str, type[Schedule]] = {c.kind: c for c in (Constant, Linear, Cosine, Step, Warmup, Product)}


def schedule_from_config(config: Mapping[str, Any] | Schedule | float) -> Schedule | float:
    """A schedule from its config dict (``{"schedule": "linear", "start": 0.8, "end": 0.1}``);
    numbers and schedules are returned unchanged."""
    if isinstance(config, Schedule):
        return config
    if isinstance(config, (int, float)) and not isinstance(config, bool):
        return float(config)
    if not isinstance(config, Mapping) or "schedule" not in config:
        raise ValueError(f"a weight must be a number or a schedule config with a 'schedule' key, got "
                         f"{excerpt(config)}")
    registry.check_nesting(config, "a schedule config")
    kind = config["schedule"]
    if not isinstance(kind, str) or kind not in _SCHEDULE_CLASSES:
        hint = did_you_mean(kind, list(_SCHEDULE_CLASSES)) if isinstance(kind, str) else ""
        raise ValueError(f"unknown schedule {excerpt(kind)}{hint}; schedules are {', '.join(_SCHEDULE_CLASSES)}")
    cls = _SCHEDULE_CLASSES[kind]
    fields = [f.name for f in dataclasses.fields(cls)]
    options = {k: v for k, v in config.items() if k != "schedule"}
    unknown = [k for k in options if k not in fields]
    if unknown:
        raise TypeError(f"schedule {kind!r} has no option {excerpt(unknown[0])}; its options are "
                        f"{', '.join(fields)}")
    for key in ("values", "boundaries", "factors"):
        if key in options:
            if not isinstance(options[key], (list, tuple)):
                raise TypeError(f"schedule {kind!r}: {key} must be a list, got {type(options[key]).__name__}")
            options[key] = tuple(options[key])
    return cls(**options)


# --- the result ---------------------------------------------------------------------------------


class CompositeResult(Tensor):
    """The total of a :class:`CompositeLoss` call: a tensor that also carries its components.

    It is the total itself (same value, same autograd graph: ``out.backward()`` works), typed as
    a subclass whose operations return plain tensors (``2 * out`` is a ``torch.Tensor``). The
    components are detached, for logging:

    Attributes:
        unweighted: ``{name: value}``, each term's loss as the term computed it.
        weighted: ``{name: contribution}``, what each term added to the total; they sum to it
            (with learned weighting, the contribution includes the :math:`s_i` term).
        weights: ``{name: weight}``, the weight applied to each loss at this call (a number,
            or a 0-dim tensor with learned weighting).
        outputs: ``{name: object}``, the full result of terms whose loss returns more than a
            tensor (a :class:`~losskit.detection.DetectionLossResult`, a nested composite's result).
    """

    __torch_function__ = torch._C._disabled_torch_function_impl

    unweighted: dict[str, Tensor]
    weighted: dict[str, Tensor]
    weights: dict[str, float | Tensor]
    outputs: dict[str, Any]

    def items(self, prefix: str = "") -> dict[str, float]:
        """``{"total", name, name + "/weighted"}`` as Python floats, with one host sync."""
        keys = [f"{prefix}total"]
        values = [self.detach()]
        for name in self.unweighted:
            keys += [f"{prefix}{name}", f"{prefix}{name}/weighted"]
            values += [self.unweighted[name], self.weighted[name]]
        numbers = torch.stack([v.to(torch.float32) for v in values]).tolist()
        return dict(zip(keys, numbers, strict=True))


# --- terms and the composite --------------------------------------------------------------------


class LossAlgebra:
    """``+``, ``-``, ``*`` and ``/`` for loss modules: weighted sums as :class:`CompositeLoss`."""

    def __add__(self, other: object):
        return _add(self, other)

    def __radd__(self, other: object):
        return _add(other, self)

    def __sub__(self, other: object):
        return _add(self, _scale(other, -1.0))

    def __rsub__(self, other: object):
        return _add(other, _scale(self, -1.0))

    def __neg__(self):
        return _scale(self, -1.0)

    def __mul__(self, other: object):
        return _scale(self, other)

    def __rmul__(self, other: object):
        return _scale(self, other)

    def __truediv__(self, other: object):
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            return NotImplemented
        if other == 0:
            raise ZeroDivisionError("a loss divided by 0")
        return _scale(self, 1.0 / other)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _default_name(loss: nn.Module) -> str:
    name = getattr(loss, "registered_name", "") or getattr(loss, "penalty_name", "")
    if name:
        return name
    if isinstance(loss, CompositeLoss):
        return "composite"
    cls = type(loss).__name__
    cls = cls[: -len("Loss")] if cls.endswith("Loss") and len(cls) > 4 else cls
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", cls).lower() or "loss"


class Term(LossAlgebra, nn.Module):
    """One weighted, named term of a :class:`CompositeLoss`.

    Args:
        loss: The loss module (any ``nn.Module`` returning a scalar tensor, or an object whose
            ``.total`` is one, such as :class:`~losskit.detection.YOLOLoss`), or a registry name.
        weight: A number or a :class:`Schedule`.
        name: The component's name (letters, digits, ``_``); by default the loss's registry name.
        input_key: Read ``input[input_key]`` from a dict of predictions instead of ``input``.
        target_key: Read ``target[target_key]`` from a dict of targets instead of ``target``.

    A loss whose ``takes_inputs`` attribute is ``False`` (the penalties of
    :mod:`losskit.regularization`) is called with no arguments.
    """

    def __init__(self, loss: nn.Module | str, weight: float | Schedule = 1.0, name: str | None = None, *,
                 input_key: str | None = None, target_key: str | None = None) -> None:
        super().__init__()
        if isinstance(loss, str):
            from losskit._core.registry import get

            loss = get(loss)
        if not isinstance(loss, nn.Module):
            raise TypeError(f"a term's loss must be an nn.Module or a registered name, got {type(loss).__name__}")
        self.loss = loss
        self.weight = _check_weight(weight)
        name = _default_name(loss) if name is None else name
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError("a term name must be letters, digits and '_' (not starting with a digit), got "
                             f"{excerpt(name)}")
        self.name = name
        for key_name, key in (("input_key", input_key), ("target_key", target_key)):
            if key is not None and not isinstance(key, str):
                raise TypeError(f"{key_name} must be a string or None, got {type(key).__name__}")
        self.input_key, self.target_key = input_key, target_key

    @property
    def takes_inputs(self) -> bool:
        return bool(getattr(self.loss, "takes_inputs", True))

    def weight_at(self, progress: float) -> float:
        """The weight at a training progress."""
        return self.weight(progress) if isinstance(self.weight, Schedule) else self.weight

    def replace(self, **changes: Any) -> Term:
        """A new term sharing this term's loss module, with ``changes`` to name, weight or keys."""
        fields = dict(loss=self.loss, weight=self.weight, name=self.name, input_key=self.input_key,
                      target_key=self.target_key)
        fields.update(changes)
        return Term(**fields)

    def evaluate(self, input: Any, target: Any) -> tuple[Tensor, Any]:
        """The term's unweighted scalar, and the loss's full output when it is not a plain tensor."""
        if self.takes_inputs:
            out = self.loss(_select(input, self.input_key, "input", self.name),
                            _select(target, self.target_key, "target", self.name))
        else:
            out = self.loss()
        raw = None
        if isinstance(out, CompositeResult):
            raw = out
        elif not isinstance(out, Tensor):
            total = getattr(out, "total", None)
            if not isinstance(total, Tensor):
                raise TypeError(f"term {self.name!r}: the loss returned {type(out).__name__}; a composite needs a "
                                "scalar tensor or an object with a .total tensor")
            raw, out = out, total
        if out.dim() != 0:
            options = self.loss.options() if hasattr(self.loss, "options") else {}
            hint = (" (it was built with reduction='none'; use 'mean' or 'sum' in a composite)"
                    if options.get("reduction") == "none" else "")
            raise ValueError(f"term {self.name!r} returned a tensor of shape {tuple(out.shape)}, but a composite "
                             f"adds scalars{hint}")
        return out, raw

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"name": self.name}
        config["weight"] = self.weight.get_config() if isinstance(self.weight, Schedule) else self.weight
        config["loss"] = _loss_config(self.loss, self.name)
        for key in ("input_key", "target_key"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        return config

    def extra_repr(self) -> str:
        parts = [f"name={self.name!r}", f"weight={self.weight!r}"]
        parts += [f"{k}={getattr(self, k)!r}" for k in ("input_key", "target_key") if getattr(self, k) is not None]
        return ", ".join(parts)

    def forward(self, input: Any = None, target: Any = None) -> Tensor:
        """The unweighted loss of this term (the weight needs the composite's progress)."""
        return self.evaluate(input, target)[0]


def _check_weight(weight: object) -> float | Schedule:
    if isinstance(weight, Schedule):
        return weight
    if isinstance(weight, Mapping):
        return schedule_from_config(weight)
    return _number("weight", weight)


def _select(value: Any, key: str | None, what: str, term: str) -> Any:
    if key is None:
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"term {term!r} reads {what}[{key!r}], so {what} must be a dict, got {type(value).__name__}")
    if key not in value:
        raise KeyError(f"term {term!r} reads {what}[{key!r}], but {what} has keys {sorted(value)}"
                       f"{did_you_mean(key, list(value))}")
    return value[key]


class CompositeLoss(LossAlgebra, nn.Module):
    r"""A weighted sum of named loss terms.

    .. math:: L = \sum_i w_i(f)\, L_i

    with :math:`w_i(f)` a number or a :class:`Schedule` of the training progress :math:`f`. With
    ``weighting="uncertainty"`` (Kendall, Gal & Cipolla, CVPR 2018) each loss term also gets a
    learned :math:`s_i = \log \sigma_i^2` (a parameter in ``log_variance``, starting at 0):

    .. math:: L = \sum_i a\, e^{-s_i}\, w_i(f)\, L_i + b\, s_i

    with :math:`(a, b) = (1, 1)` for ``uncertainty_form="plain"`` (the common implementation),
    :math:`(\tfrac12, \tfrac12)` for ``"regression"`` (the paper's Gaussian likelihood,
    :math:`\frac{1}{2\sigma^2} L + \log\sigma`) and :math:`(1, \tfrac12)` for ``"classification"``
    (:math:`\frac{1}{\sigma^2} L + \log\sigma`). Terms without inputs (penalties) keep their
    fixed weight.

    Args:
        terms: Terms, loss modules, composites (a fixed-weight composite's terms are taken over;
            one with learned weighting becomes a single term), or an iterable of them.
        weighting: ``"fixed"`` or ``"uncertainty"``.
        uncertainty_form: ``"plain"``, ``"regression"`` or ``"classification"``.
        total_steps: The number of :meth:`step` calls over training (epochs, say); needed by
            :meth:`step`, which sets the progress to ``index / (total_steps - 1)``.

    Inputs:
        input, target: Passed to every term that takes inputs (or their ``input_key`` /
        ``target_key`` entries). Both may be omitted when no term takes inputs.

    Returns:
        A :class:`CompositeResult`: the scalar total, carrying the components.

    Raises:
        ValueError: A term returns a non-scalar (``reduction="none"``), a term name is invalid.
        KeyError: A term's ``input_key`` or ``target_key`` is missing from the dict it reads.

    Examples:
        >>> import torch, losskit
        >>> from losskit import nn as lnn
        >>> criterion = 0.5 * lnn.MSELoss() + lnn.L1Loss()
        >>> out = criterion(torch.tensor([1.0, 3.0]), torch.zeros(2))
        >>> out                                  # 0.5 * (1 + 9) / 2 + (1 + 3) / 2
        CompositeResult(4.5000)
        >>> out.items()
        {'total': 4.5, 'mse': 5.0, 'mse/weighted': 2.5, 'l1': 2.0, 'l1/weighted': 2.0}
        >>> criterion.get_config()["terms"][0]
        {'name': 'mse', 'weight': 0.5, 'loss': {'name': 'mse'}}
    """

    def __init__(self, terms: Term | nn.Module | Iterable[Term | nn.Module], *, weighting: str = "fixed",
                 uncertainty_form: str = "plain", total_steps: int | None = None) -> None:
        super().__init__()
        check_one_of("weighting", weighting, WEIGHTINGS)
        check_one_of("uncertainty_form", uncertainty_form, tuple(UNCERTAINTY_FORMS))
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 1):
            raise ValueError(f"total_steps must be a positive integer or None, got {excerpt(total_steps)}")
        self.weighting, self.uncertainty_form, self.total_steps = weighting, uncertainty_form, total_steps
        collected = _collect_terms(terms)
        if not collected:
            raise ValueError("a composite needs at least one term")
        self.terms = nn.ModuleList(_unique_names(collected))
        self.progress = 0.0
        self.step_index = 0
        if weighting == "uncertainty":
            self.log_variance = nn.ParameterDict(
                {t.name: nn.Parameter(torch.zeros(())) for t in self.terms if t.takes_inputs})
        else:
            self.log_variance = None

    # -- progress ------------------------------------------------------------------------------

    def set_progress(self, fraction: float) -> None:
        """Set the fraction of training done (clamped to [0, 1]); also passed on to every term's
        loss that has ``set_progress`` (a :class:`~losskit.detection.YOLOLoss`, a nested composite)."""
        fraction = min(max(check_number("fraction", fraction), 0.0), 1.0)
        self.progress = fraction
        for term in self.terms:
            if callable(getattr(term.loss, "set_progress", None)):
                term.loss.set_progress(fraction)

    def step(self, index: int | None = None) -> None:
        """Move to step ``index`` (0-based) of ``total_steps``, or one step on; progress becomes
        ``index / (total_steps - 1)`` (0 at the first step, 1 at the last)."""
        if self.total_steps is None:
            raise ValueError("step() needs total_steps: CompositeLoss(..., total_steps=epochs), "
                             "or call set_progress(fraction) instead")
        index = self.step_index + 1 if index is None else index
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"index must be a non-negative integer, got {index!r}")
        self.step_index = index
        self.set_progress(min(index / max(self.total_steps - 1, 1), 1.0))

    def get_extra_state(self) -> dict[str, float]:
        return {"progress": self.progress, "step_index": self.step_index}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.progress = float(state["progress"])
        self.step_index = int(state.get("step_index", 0))

    def current_weights(self) -> dict[str, float]:
        """The scheduled weight of each term at the current progress (before learned weighting)."""
        return {t.name: t.weight_at(self.progress) for t in self.terms}

    # -- forward -------------------------------------------------------------------------------

    def forward(self, input: Any = None, target: Any = None) -> CompositeResult:
        unweighted: dict[str, Tensor] = {}
        weighted: dict[str, Tensor] = {}
        weights: dict[str, float | Tensor] = {}
        outputs: dict[str, Any] = {}
        total: Tensor | None = None
        a, b = UNCERTAINTY_FORMS[self.uncertainty_form]
        for term in self.terms:
            value, raw = term.evaluate(input, target)
            w = term.weight_at(self.progress)
            if self.log_variance is not None and term.name in self.log_variance:
                s = self.log_variance[term.name]
                effective = a * torch.exp(-s) * w
                contribution = effective * value + b * s
                weights[term.name] = effective.detach()
            else:
                contribution = w * value
                weights[term.name] = w
            total = contribution if total is None else total + contribution
            unweighted[term.name] = value.detach()
            weighted[term.name] = contribution.detach()
            if raw is not None:
                outputs[term.name] = raw
        result = total.as_subclass(CompositeResult)
        result.unweighted, result.weighted, result.weights, result.outputs = unweighted, weighted, weights, outputs
        return result

    # -- config --------------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """A plain dict that :func:`build` turns back into an equal composite (progress and learned
        parameters are state: they travel in ``state_dict``)."""
        config: dict[str, Any] = {"terms": [t.get_config() for t in self.terms], "weighting": self.weighting}
        if self.weighting == "uncertainty":
            config["uncertainty_form"] = self.uncertainty_form
        if self.total_steps is not None:
            config["total_steps"] = self.total_steps
        return config

    def to_toml(self) -> str:
        """The config as TOML text (see :func:`to_toml`)."""
        return to_toml(self)

    def extra_repr(self) -> str:
        parts = [f"weighting={self.weighting!r}"]
        if self.weighting == "uncertainty":
            parts.append(f"uncertainty_form={self.uncertainty_form!r}")
        if self.total_steps is not None:
            parts.append(f"total_steps={self.total_steps}")
        return ", ".join(parts)


def _collect_terms(terms: object) -> list[Term]:
    if isinstance(terms, CompositeLoss):
        if terms.weighting == "fixed":
            return [t.replace() for t in terms.terms]
        return [Term(terms)]
    if isinstance(terms, Term):
        return [terms.replace()]
    if isinstance(terms, nn.Module):
        return [Term(terms)]
    if isinstance(terms, (str, bytes)) or not isinstance(terms, Iterable):
        raise TypeError(f"terms must be Terms, loss modules or composites, got {type(terms).__name__}")
    collected: list[Term] = []
    for item in terms:
        if isinstance(item, (CompositeLoss, Term, nn.Module)):
            collected.extend(_collect_terms(item))
        else:
            raise TypeError(f"terms must be Terms, loss modules or composites, got an item of type "
                            f"{type(item).__name__}")
    return collected


def _unique_names(terms: list[Term]) -> list[Term]:
    """Rename repeated names ``dice, dice_2, dice_3``, in order."""
    seen: set[str] = set()
    out = []
    for term in terms:
        name, k = term.name, 1
        while name in seen:
            k += 1
            name = f"{term.name}_{k}"
        seen.add(name)
        out.append(term if name == term.name else term.replace(name=name))
    return out


# --- algebra ------------------------------------------------------------------------------------


def _is_scalar(x: object) -> bool:
    return isinstance(x, Schedule) or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _times(a: float | Schedule, b: float | Schedule) -> float | Schedule:
    if isinstance(a, Schedule) or isinstance(b, Schedule):
        return a * b if isinstance(a, Schedule) else b * a
    return float(a) * float(b)


def _as_composite(x: object) -> CompositeLoss:
    if isinstance(x, CompositeLoss):
        return x
    if isinstance(x, (Term, nn.Module)):
        return CompositeLoss(x)
    raise TypeError(f"cannot combine a loss with {type(x).__name__}")


def _scale(x: object, factor: object):
    if isinstance(factor, nn.Module):
        if isinstance(x, nn.Module):
            raise TypeError("cannot multiply two losses; multiply a loss by a number or a schedule")
        return NotImplemented
    if not _is_scalar(factor):
        return NotImplemented
    composite = _as_composite(x)
    if composite.weighting != "fixed":
        return CompositeLoss(Term(composite, factor))
    terms = [t.replace(weight=_times(t.weight, factor)) for t in composite.terms]
    return CompositeLoss(terms, total_steps=composite.total_steps)


def _add(a: object, b: object):
    for x in (a, b):
        if isinstance(x, int) and not isinstance(x, bool) and x == 0:  # sum([...]) starts at 0
            return _as_composite(b if x is a else a)
    if not isinstance(a, nn.Module) or not isinstance(b, nn.Module):
        return NotImplemented
    left, right = _as_composite(a), _as_composite(b)
    steps = left.total_steps if left.total_steps == right.total_steps else None
    return CompositeLoss([left, right], total_steps=steps)


# --- configs ---------------------------------------------------------------------------------------


def _loss_config(loss: nn.Module, term: str) -> dict[str, Any]:
    from losskit._core.module import LossModule

    if isinstance(loss, (LossModule, CompositeLoss)) or getattr(loss, "penalty_name", ""):
        return loss.get_config()
    get_config = getattr(loss, "get_config", None)
    cls = type(loss)
    path = registry.registered_class_path(cls)
    if callable(get_config) and path is not None:
        return {"class": path, **get_config()}
    raise TypeError(f"term {term!r} holds a {registry.class_path(cls)}, which has no losskit config; use a "
                    "registered loss, or a module with get_config() registered with "
                    "losskit._core.registry.register_class")


@contextmanager
def _config_errors(where: str) -> Iterator[None]:
    """Errors raised while building the part of a config at ``where`` (``"terms[1].loss"``) start
    with it, and stay short."""
    try:
        yield
    except (TypeError, ValueError) as error:
        message = str(error)
        if not message.startswith(where):
            message = f"{where}: {message}"
        raise (ValueError if isinstance(error, ValueError) else TypeError)(clip(message)) from None


def _build_loss(config: Any, model: nn.Module | None, where: str) -> nn.Module:
    if isinstance(config, nn.Module):
        return config
    if isinstance(config, str):
        with _config_errors(where):
            terms = _Parser(config, model).parse()
            if len(terms) != 1 or terms[0][0] != 1.0:
                raise ValueError(f"a term's loss must be one loss without a weight, got {excerpt(config)}")
        return terms[0][1]
    if not isinstance(config, Mapping):
        raise TypeError(f"{where or 'a loss'} must be a loss name, a spec string or a config dict, got "
                        f"{type(config).__name__}")
    if "terms" in config:
        return _composite_from_config(config, model, where)
    penalty = _penalty_class(config.get("name"))
    if penalty is not None:
        with _config_errors(where):
            options = {k: v for k, v in config.items() if k != "name"}
            return _make_penalty(penalty, options, model, str(config["name"]))
    return registry.from_config(config, where, model=model)


_TERM_KEYS = ("loss", "weight", "name", "input_key", "target_key")


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _term_from_config(item: Any, model: nn.Module | None, where: str) -> list[Term]:
    if isinstance(item, str):
        with _config_errors(where):
            return list(_as_composite_from_spec(item, model).terms)
    if isinstance(item, (Term, nn.Module)):
        return _collect_terms(item)
    if not isinstance(item, Mapping):
        raise TypeError(f"{where or 'a term'} must be a spec string, a term dict or a loss config, got "
                        f"{type(item).__name__}")
    if "loss" not in item:  # a bare loss config: weight 1
        return [Term(_build_loss(item, model, where))]
    unknown = [str(k) for k in item if k not in _TERM_KEYS]
    if unknown:
        raise ValueError(f"{where or 'the term'} has unknown keys {excerpt(sorted(unknown), 200)}; a term has "
                         f"{', '.join(_TERM_KEYS)}")
    loss = _build_loss(item["loss"], model, _at(where, "loss"))
    with _config_errors(_at(where, "weight")):
        weight = schedule_from_config(item.get("weight", 1.0))
    with _config_errors(where):
        return [Term(loss, weight, item.get("name"), input_key=item.get("input_key"),
                     target_key=item.get("target_key"))]


_COMPOSITE_KEYS = ("terms", "weighting", "uncertainty_form", "total_steps")


def _composite_from_config(config: Mapping[str, Any], model: nn.Module | None, where: str = "") -> CompositeLoss:
    registry.check_nesting(config, where or "the config")
    unknown = [str(k) for k in config if k not in _COMPOSITE_KEYS]
    if unknown:
        raise ValueError(f"{where or 'the composite config'} has unknown keys {excerpt(sorted(unknown), 200)}; a "
                         f"composite config has {', '.join(_COMPOSITE_KEYS)}")
    terms = config["terms"]
    if isinstance(terms, (str, Mapping)):
        terms = [terms]
    if not isinstance(terms, (list, tuple)):
        raise TypeError(f"{_at(where, 'terms')} must be a list of terms (spec strings, term dicts or loss configs), "
                        f"got {type(terms).__name__}")
    collected = [t for i, item in enumerate(terms)
                 for t in _term_from_config(item, model, f"{_at(where, 'terms')}[{i}]")]
    with _config_errors(where or "the composite config"):
        return CompositeLoss(collected, weighting=config.get("weighting", "fixed"),
                             uncertainty_form=config.get("uncertainty_form", "plain"),
                             total_steps=config.get("total_steps"))


def _as_composite_from_spec(spec: str, model: nn.Module | None) -> CompositeLoss:
    terms = _Parser(spec, model).parse()
    return CompositeLoss([Term(loss, weight, name) for weight, loss, name in terms])


def build(spec: Any, *, model: nn.Module | None = None) -> CompositeLoss:
    """A :class:`CompositeLoss` from a spec string, a config dict or list, TOML text or a file.

    Args:
        spec: One of

            * a spec string: ``"0.5*dice + ce"``, ``"focal(gamma=1.5) + 1e-4*l2_penalty"``,
              ``"linear(0.8, 0.1)*bce + 0.5*(dice + ce)"`` (grammar in ``docs/compose.md``);
            * TOML text (a string that starts with ``[`` or has a line break) or a
              :class:`pathlib.Path` to a TOML file, as :func:`to_toml` writes;
            * a config dict ``{"terms": [...], "weighting": ...}`` as
              :meth:`CompositeLoss.get_config` returns, or a single loss config ``{"name": ...}``;
            * a list of terms: spec strings, term dicts ``{"loss": ..., "weight": ..., "name": ...}``
              or loss configs;
            * a composite (returned unchanged) or a loss module (one term).
        model: The model whose parameters the penalties (``l1_penalty``, ``l2_penalty``,
            ``elastic_net_penalty``) read.

    Raises:
        ValueError: A malformed spec or unknown name (with the closest names), a penalty without
            ``model``.
        TypeError: An option the loss does not take.

    Examples:
        >>> import losskit
        >>> criterion = losskit.build("0.5*dice + ce")
        >>> [(t.name, t.weight) for t in criterion.terms]
        [('dice', 0.5), ('cross_entropy', 1.0)]
        >>> losskit.build("0.5*hubr + ce")
        Traceback (most recent call last):
        ...
        ValueError: in '0.5*hubr + ce' at position 4: unknown loss 'hubr'; did you mean 'huber'?
    """
    if isinstance(spec, CompositeLoss):
        return spec
    if isinstance(spec, Path):
        return from_toml(spec.read_text(), model=model)
    if isinstance(spec, str):
        if spec.lstrip().startswith("[") or "\n" in spec.strip():
            return from_toml(spec, model=model)
        return _as_composite_from_spec(spec, model)
    if isinstance(spec, Mapping):
        if "terms" in spec:
            return _composite_from_config(spec, model)
        registry.check_nesting(spec)
        return CompositeLoss(_term_from_config(spec, model, ""))
    if isinstance(spec, (list, tuple)):
        return _composite_from_config({"terms": list(spec)}, model)
    if isinstance(spec, nn.Module):
        return CompositeLoss(spec)
    raise TypeError(f"build takes a spec string, TOML, a config dict or list, or a module; got {type(spec).__name__}")


# --- TOML ---------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else
                                                         ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v, f'{where}.{k}')}"
                                for k, v in _none_to_list(value, where).items()) + " }"
    if value is None:
        raise ValueError(f"{where} is None inside a list, which TOML cannot hold")
    raise TypeError(f"{where}: cannot write a {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _none_to_list(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """TOML has no null: options set to None are listed under the key ``none``."""
    nones = [k for k, v in table.items() if v is None]
    if "none" in table:
        raise ValueError(f"{where} has a key 'none', which the TOML form reserves for options set to None")
    out = {k: v for k, v in table.items() if v is not None}
    if nones:
        out["none"] = nones
    return out


def _list_to_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        out = {k: _list_to_none(v) for k, v in value.items() if k != "none"}
        nones = value.get("none", [])
        if not isinstance(nones, list) or not all(isinstance(k, str) for k in nones):
            raise TypeError(f"a table's 'none' key lists the options set to None, so it must be a list of names, "
                            f"got {excerpt(nones)}")
        for key in nones:
            out[key] = None
        return out
    if isinstance(value, list):
        return [_list_to_none(v) for v in value]
    return value


def to_toml(composite: CompositeLoss) -> str:
    """The composite's config as TOML text; :func:`from_toml` or :func:`build` read it back.

    Each term is a ``[[terms]]`` table with inline ``loss`` (and schedule ``weight``) tables.
    TOML has no null, so options set to ``None`` are listed in the table's ``none`` key
    (``loss = { name = "focal", gamma = 2.0, none = ["alpha"] }``).

    Examples:
        >>> import losskit
        >>> print(losskit.build("0.5*dice + ce").to_toml())
        weighting = "fixed"
        <BLANKLINE>
        [[terms]]
        name = "dice"
        weight = 0.5
        loss = { name = "dice" }
        <BLANKLINE>
        [[terms]]
        name = "cross_entropy"
        weight = 1.0
        loss = { name = "cross_entropy" }
        <BLANKLINE>
    """
    config = composite.get_config()
    lines = [f"{_toml_key(k)} = {_toml_value(v, k)}" for k, v in config.items() if k != "terms"]
    for i, term in enumerate(config["terms"]):
        lines += ["", "[[terms]]"]
        for key, value in _none_to_list(term, f"terms[{i}]").items():
            lines.append(f"{_toml_key(key)} = {_toml_value(value, f'terms[{i}].{key}')}")
    return "\n".join(lines) + "\n"


def _toml_nesting(text: str) -> int:
    """How deeply arrays and inline tables nest in TOML text: brackets and braces outside strings
    and comments (a TOML parser recurses once per level)."""
    depth = deepest = i = 0
    while i < len(text):
        char = text[i]
        if char == "#":
            i = text.find("\n", i)
            if i < 0:
                break
        elif char in "\"'":
            quote = char * 3 if text.startswith(char * 3, i) else char
            end = i + len(quote)
            while True:
                end = text.find(quote, end)
                if end < 0:
                    return deepest  # an unclosed string: the parser reports it
                escapes = 0
                while char == '"' and text[end - 1 - escapes] == "\\":
                    escapes += 1
                if escapes % 2 == 0:
                    break
                end += 1
            i = end + len(quote)
            while len(quote) == 3 and i < len(text) and text[i] == char:  # up to two quotes end a multi-line string
                i += 1
            continue
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
        i += 1
    return deepest


def _load_toml(text: str) -> dict[str, Any]:
    if len(text) > MAX_TOML_LENGTH:
        raise ValueError(f"the TOML composite config is {len(text)} characters long; the limit is {MAX_TOML_LENGTH}")
    if _toml_nesting(text) > registry.MAX_CONFIG_NESTING:
        raise ValueError(f"the TOML composite config nests arrays and tables more than {registry.MAX_CONFIG_NESTING} "
                         "levels deep")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ImportError("reading TOML on Python 3.10 needs the tomli package (pip install tomli)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"invalid TOML composite config: {clip(str(error))}") from None


def from_toml(text: str, *, model: nn.Module | None = None) -> CompositeLoss:
    """A composite from TOML text as :func:`to_toml` writes it."""
    return build(_list_to_none(_load_toml(text)), model=model)


# --- the spec grammar ---------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>[-+*/(),=\[\]])
""", re.VERBOSE)

_CONSTANTS = {"True": True, "true": True, "False": False, "false": False, "None": None, "none": None}


def _penalty_class(name: object):
    from losskit.regularization import PENALTIES

    return PENALTIES.get(str(name).strip().lower()) if isinstance(name, str) else None


def _make_penalty(cls: Any, options: dict[str, Any], model: nn.Module | None, name: str) -> nn.Module:
    if model is None:
        raise ValueError(f"{name} reads a model's parameters: pass it, losskit.build(spec, model=model)")
    return cls(model, **options)


def _spec_excerpt(spec: str, pos: int, width: int = 60) -> str:
    """The spec, or for a long one the part around ``pos``, quoted."""
    if len(spec) <= width:
        return repr(spec)
    start = max(0, min(pos - width // 2, len(spec) - width))
    end = start + width
    part = ("…" if start else "") + spec[start:end] + ("…" if end < len(spec) else "")
    return f"{part!r} (part of a {len(spec)}-character spec)"


class _Parser:
    """Recursive descent over the grammar in ``docs/compose.md``; values are either a scalar
    (number or schedule) or a list of ``(weight, loss, name)`` terms. The length is checked first,
    and the nesting before each level, so no spec reaches Python's recursion limit."""

    def __init__(self, spec: str, model: nn.Module | None) -> None:
        self.spec, self.model = spec, model
        self.tokens: list[tuple[str, str, int]] = []
        self.depth = 0
        if len(spec) > MAX_SPEC_LENGTH:
            raise ValueError(f"the spec {_spec_excerpt(spec, 0)} is longer than {MAX_SPEC_LENGTH} characters; build "
                             "a long composite from a config (a list of terms or TOML)")
        pos = 0
        while pos < len(spec):
            match = _TOKEN.match(spec, pos)
            if match is None:
                self.fail(f"unexpected character {spec[pos]!r}", pos)
            if match.lastgroup != "ws":
                self.tokens.append((match.lastgroup, match.group(), pos))
            pos = match.end()
        self.tokens.append(("end", "", len(spec)))
        self.i = 0

    def fail(self, message: str, pos: int | None = None, error: type[Exception] = ValueError):
        pos = self.tokens[self.i][2] if pos is None else pos
        raise error(f"in {_spec_excerpt(self.spec, pos)} at position {pos}: {clip(message)}")

    @contextmanager
    def nested(self, pos: int) -> Iterator[None]:
        """One level deeper (a parenthesis, bracket, sign or schedule call), within the limit."""
        if self.depth >= MAX_SPEC_NESTING:
            self.fail(f"the spec nests more than {MAX_SPEC_NESTING} levels deep (parentheses, brackets, signs and "
                      "schedule calls count)", pos)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, str, int]:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def expect(self, text: str) -> None:
        kind, got, _ = self.peek()
        if got != text or kind not in ("op",):
            self.fail(f"expected {text!r}, got {self.describe()}")
        self.take()

    def describe(self) -> str:
        kind, text, _ = self.peek()
        return "the end" if kind == "end" else excerpt(text)

    def parse(self) -> list[tuple[float | Schedule, nn.Module, str]]:
        if self.peek()[0] == "end":
            self.fail("the spec is empty; name at least one loss")
        value = self.expr()
        if self.peek()[0] != "end":
            self.fail(f"expected '+', '-', '*' or '/', got {self.describe()}")
        if not isinstance(value, list):
            self.fail("the spec has no loss, only a number or schedule", 0)
        return value

    def expr(self):
        start = self.peek()[2]
        left = self.product()
        while self.peek()[1] in ("+", "-") and self.peek()[0] == "op":
            op, pos = self.take()[1], self.peek()[2]
            right = self.product()
            if not isinstance(left, list) or not isinstance(right, list):
                self.fail("cannot add a number or schedule to a loss; multiply it with one", start
                          if not isinstance(left, list) else pos)
            left = left + (self.scale(right, -1.0) if op == "-" else right)
        return left

    def product(self):
        left = self.unary()
        while self.peek()[1] in ("*", "/") and self.peek()[0] == "op":
            op, pos = self.take()[1], self.peek()[2]
            right = self.unary()
            if op == "/":
                if isinstance(right, (list, Schedule)):
                    self.fail("can only divide by a number", pos)
                if right == 0:
                    self.fail("division by zero", pos)
                right = 1.0 / right
            if isinstance(left, list) and isinstance(right, list):
                self.fail("cannot multiply two losses; multiply a loss by a number or a schedule", pos)
            if isinstance(left, list):
                left = self.scale(left, right)
            elif isinstance(right, list):
                right = self.scale(right, left)
                left = right
            else:
                left = _times(left, right)
        return left

    @staticmethod
    def scale(terms: list, factor: float | Schedule) -> list:
        return [(_times(w, factor), loss, name) for w, loss, name in terms]

    def unary(self):
        if self.peek()[0] == "op" and self.peek()[1] in ("+", "-"):
            with self.nested(self.peek()[2]):
                sign = -1.0 if self.take()[1] == "-" else 1.0
                value = self.unary()
            return self.scale(value, sign) if isinstance(value, list) else _times(value, sign)
        return self.primary()

    def primary(self):
        kind, text, pos = self.peek()
        if kind == "number":
            self.take()
            return float(text)
        if kind == "op" and text == "(":
            with self.nested(pos):
                self.take()
                value = self.expr()
                self.expect(")")
            return value
        if kind == "name":
            if text in _CONSTANTS:
                self.fail(f"{text} is not a loss or a weight")
            self.take()
            args, kwargs = [], {}
            if self.peek()[1] == "(":
                with self.nested(pos):
                    args, kwargs = self.call_args()
            if text in SCHEDULES:
                return self.schedule(text, args, kwargs, pos)
            return [self.loss(text, args, kwargs, pos)]
        self.fail(f"expected a loss name, a number or '(', got {self.describe()}")

    def call_args(self) -> tuple[list[Any], dict[str, Any]]:
        self.expect("(")
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        while self.peek()[1] != ")" or self.peek()[0] != "op":
            kind, text, pos = self.peek()
            if kind == "name" and self.tokens[self.i + 1][1] == "=":
                self.take()
                self.take()
                if text in kwargs:
                    self.fail(f"option {text!r} is given twice", pos)
                kwargs[text] = self.value()
            else:
                if kwargs:
                    self.fail("a positional value after a named option", pos)
                args.append(self.value())
            if self.peek()[1] == ",":
                self.take()
            elif self.peek()[1] != ")":
                self.fail(f"expected ',' or ')', got {self.describe()}")
        self.take()
        return args, kwargs

    def value(self) -> Any:
        kind, text, pos = self.peek()
        with self.nested(pos):
            return self._value(kind, text, pos)

    def _value(self, kind: str, text: str, pos: int) -> Any:
        if kind == "op" and text in ("-", "+"):
            self.take()
            inner = self.value()
            if isinstance(inner, bool) or not isinstance(inner, (int, float, Schedule)):
                self.fail(f"a sign before a non-number {inner!r}", pos)
            return -inner if text == "-" else inner
        if kind == "number":
            self.take()
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "string":
            self.take()
            return ast.literal_eval(text)
        if kind == "op" and text == "[":
            self.take()
            items = []
            while self.peek()[1] != "]":
                items.append(self.value())
                if self.peek()[1] == ",":
                    self.take()
                elif self.peek()[1] != "]":
                    self.fail(f"expected ',' or ']', got {self.describe()}")
            self.take()
            return items
        if kind == "name":
            if text in _CONSTANTS:
                self.take()
                return _CONSTANTS[text]
            if text in SCHEDULES and self.tokens[self.i + 1][1] == "(":
                self.take()
                args, kwargs = self.call_args()
                return self.schedule(text, args, kwargs, pos)
            self.fail(f"expected a value, got the bare word {text!r} (quote strings: {text!r})")
        self.fail(f"expected a value (number, string, True/False/None, list), got {self.describe()}")

    def schedule(self, name: str, args: list[Any], kwargs: dict[str, Any], pos: int) -> Schedule:
        try:
            return SCHEDULES[name](*args, **kwargs)
        except (TypeError, ValueError) as error:
            self.fail(f"{name}(...): {error}", pos, ValueError if isinstance(error, ValueError) else TypeError)

    def loss(self, name: str, args: list[Any], kwargs: dict[str, Any], pos: int) -> tuple[float, nn.Module, str]:
        penalty = _penalty_class(name)
        key = name.lower()
        if penalty is None and key not in registry._LOOKUP and not (
                key.endswith("_loss") and key[:-5] in registry._LOOKUP):
            from losskit.regularization import PENALTIES

            hint = did_you_mean(key, list(registry._LOOKUP) + list(PENALTIES)) or did_you_mean(
                key, list(SCHEDULES))
            self.fail(f"unknown loss {excerpt(name)}{hint}", pos)
        if args:
            self.fail(f"options of {name} must be named: {name}(option=value)", pos)
        try:
            if penalty is not None:
                module = _make_penalty(penalty, kwargs, self.model, name)
                return 1.0, module, module.penalty_name
            module = registry.get(name, **kwargs)
        except (TypeError, ValueError) as error:
            self.fail(str(error), pos, ValueError if isinstance(error, ValueError) else TypeError)
        return 1.0, module, module.registered_name
