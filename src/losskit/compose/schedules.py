"""Weights as functions of the training progress: :class:`Schedule` and its kinds.

A schedule maps the fraction of training done, ``progress`` in [0, 1], to a weight. Schedules
multiply with numbers and with each other (a :class:`Product`), and round-trip through
:meth:`Schedule.get_config` and :func:`schedule_from_config`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from losskit._core import registry
from losskit._core.checks import check_number, did_you_mean, excerpt

__all__ = ["Constant", "Cosine", "Linear", "Product", "Schedule", "Step", "Warmup", "constant", "cosine", "linear",
           "schedule_from_config", "step", "warmup"]


def finite_number(name: str, value: object) -> float:
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
        object.__setattr__(self, "value", finite_number("value", self.value))

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
        object.__setattr__(self, "start", finite_number("start", self.start))
        object.__setattr__(self, "end", finite_number("end", self.end))
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
        values = tuple(finite_number(f"values[{i}]", v) for i, v in enumerate(self.values))
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
        object.__setattr__(self, "start", finite_number("start", self.start))
        then = self.then
        if isinstance(then, Mapping):
            then = schedule_from_config(then)
        elif not isinstance(then, Schedule):
            then = Constant(finite_number("then", then))
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


def times(a: float | Schedule, b: float | Schedule) -> float | Schedule:
    """The product of two weights, each a number or a schedule."""
    if isinstance(a, Schedule) or isinstance(b, Schedule):
        return a * b if isinstance(a, Schedule) else b * a
    return float(a) * float(b)


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

