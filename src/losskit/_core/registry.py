"""Names for losses: ``losskit.get("focal", gamma=1.5)``, ``losskit.available()``.

Each module form is registered once under a canonical name (its function's name without the
``_loss`` suffix) and any number of aliases. Unknown names answer with the closest matches.

The parameter penalties of :mod:`losskit.regularization` are registered too, as the family
``"penalty"``: they read a model's parameters instead of an input and a target
(``takes_inputs = False``), so :func:`available` and :func:`families` list them only when that
family is asked for (``available("penalty")``).

The registry is also the allowlist of configs. A config names a registered loss
(``{"name": "focal"}``), or a class by its path (``{"class": "losskit.detection.yolo.YOLOLoss"}``)
that is registered here: every registered loss, and the classes marked with
:func:`register_class` (the parameter penalties, the YOLO criterion). A class path is looked up,
never imported, so a config cannot reach any other callable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from losskit._core.checks import clip, did_you_mean, excerpt

PENALTY_FAMILY = "penalty"


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type[nn.Module]
    family: str
    aliases: tuple[str, ...] = field(default=())

    @property
    def takes_inputs(self) -> bool:
        """Whether the module is called with an input and a target (a penalty reads a model)."""
        return getattr(self.cls, "takes_inputs", True) is not False


_ENTRIES: dict[str, Entry] = {}  # canonical name -> entry
_LOOKUP: dict[str, str] = {}  # canonical name or alias -> canonical name
_CLASSES: dict[str, type] = {}  # "module.QualName" -> class: what a config's "class" key may name

MAX_CONFIG_NESTING = 32  # dicts and lists inside each other in one config


def class_path(cls: type) -> str:
    """The path a config writes for ``cls``: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_class(cls: type) -> type:
    """Class decorator: let configs build ``cls`` from ``{"class": "<module>.<QualName>", **options}``.

    For losskit modules outside the loss registry that have ``get_config()`` (a detection
    criterion, a penalty). A class whose ``takes_inputs`` is ``False`` is built as
    ``cls(model, **options)``.
    """
    _CLASSES[class_path(cls)] = cls
    return cls


def registered_class_path(cls: type) -> str | None:
    """The path under which configs may name ``cls``, or ``None`` when it is not registered."""
    path = class_path(cls)
    return path if _CLASSES.get(path) is cls else None


def register(name: str, *aliases: str, family: str):
    """Class decorator: register a :class:`~losskit.LossModule` (or a penalty) under ``name`` and
    ``aliases``."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        for key in (name, *aliases):
            if key in _LOOKUP:
                raise ValueError(f"loss name {key!r} is already registered for {_LOOKUP[key]!r}")
        entry = Entry(name, cls, family, tuple(aliases))
        _ENTRIES[name] = entry
        for key in (name, *aliases):
            _LOOKUP[key] = name
        cls.registered_name = name
        return register_class(cls)

    return decorate


def is_registered(cls: type) -> bool:
    """Whether ``cls`` itself (not a subclass) is registered under a name."""
    found = _ENTRIES.get(getattr(cls, "registered_name", ""))
    return found is not None and found.cls is cls


def canonical_key(name: str) -> str:
    """The form names are compared in: stripped, lower case, ``-`` as ``_``."""
    return name.strip().lower().replace("-", "_")


def names() -> list[str]:
    """Every registered name and alias, penalties included."""
    return sorted(_LOOKUP)


def find(name: str) -> Entry | None:
    """The entry for a name or alias in any spelling :func:`canonical_key` accepts, with or
    without a ``_loss`` suffix; ``None`` for an unknown name."""
    if not isinstance(name, str):
        raise TypeError(f"a loss name must be a string such as 'dice', got {type(name).__name__} {excerpt(name)}")
    key = canonical_key(name)
    if key not in _LOOKUP and key.endswith("_loss"):
        key = key[: -len("_loss")]
    return _ENTRIES[_LOOKUP[key]] if key in _LOOKUP else None


def entry(name: str) -> Entry:
    """The registry entry for a name or alias; an unknown name raises ``ValueError`` with the
    closest names."""
    found = find(name)
    if found is None:
        hint = did_you_mean(canonical_key(name), _LOOKUP)
        raise ValueError(f"unknown loss {excerpt(name)}{hint} (losskit.available() lists every name)")
    return found


def get(spec: str | Mapping[str, Any] | nn.Module, **overrides: Any) -> nn.Module:
    """Build a loss module from a name, an alias or a config dict.

    Args:
        spec: A registered name or alias (``"focal"``), a config dict as returned by
            :meth:`LossModule.get_config` (``{"name": "focal", "gamma": 1.5}``) or naming a
            registered class (``{"class": "losskit.detection.yolo.YOLOLoss", "num_classes": 3}``),
            or a module, returned unchanged when no overrides are given.
        **overrides: Options that replace those in ``spec``.

    Raises:
        ValueError: For an unknown name (with the closest names), a dict without ``"name"`` or
            ``"class"``, a class that is not registered, or a config nested too deep.
        TypeError: For an option the loss does not take, or a ``"name"`` that is not a string.

    Examples:
        >>> import losskit
        >>> losskit.get("focal", gamma=1.5)
        SigmoidFocalLoss(gamma=1.5)
        >>> losskit.get({"name": "huber", "delta": 0.5})
        HuberLoss(delta=0.5)
        >>> losskit.get("hubr")
        Traceback (most recent call last):
        ...
        ValueError: unknown loss 'hubr'; did you mean 'huber'? (losskit.available() lists every name)
    """
    if isinstance(spec, nn.Module) and is_registered(type(spec)):
        if not overrides:
            return spec
        spec = spec.get_config()
    if isinstance(spec, str):
        found = entry(spec)
        if not found.takes_inputs:
            return from_config({"name": found.name, **overrides})  # explains that the model is needed
        return found.cls(**overrides)
    if isinstance(spec, Mapping):
        return from_config({**spec, **overrides})
    raise TypeError(f"spec must be a name, a config dict or a LossModule, got {type(spec).__name__}")


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else f"the config's {key!r}"


def check_nesting(config: object, where: str = "") -> None:
    """Refuse dicts and lists nested deeper than :data:`MAX_CONFIG_NESTING`, before anything
    recurses into them."""
    stack = [(config, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children = list(value.values())
        elif isinstance(value, (list, tuple)):
            children = list(value)
        else:
            continue
        if depth > MAX_CONFIG_NESTING:
            raise ValueError(f"{where or 'the config'} nests dicts and lists more than {MAX_CONFIG_NESTING} "
                             "levels deep")
        stack.extend((child, depth + 1) for child in children)


def config_class(path: object, where: str = "") -> type:
    """The registered class a config's ``"class"`` names; nothing is imported."""
    if not isinstance(path, str):
        raise TypeError(f"{_key(where, 'class')} must be a class path string, got {type(path).__name__}")
    cls = _CLASSES.get(path)
    if cls is None:
        criteria = sorted(p for p, c in _CLASSES.items() if getattr(c, "registered_name", "") == "")
        raise ValueError(f"{_key(where, 'class')} must name a registered loss, penalty or criterion class, got "
                         f"{excerpt(path)} (classes outside the loss registry: "
                         f"{', '.join(criteria)}; a registered loss is named by 'name')")
    return cls


def _options(config: Mapping[Any, Any], skip: str, where: str) -> dict[str, Any]:
    bad = [k for k in config if not isinstance(k, str)]
    if bad:
        raise TypeError(f"{where or 'a loss config'}: option names must be strings, got {excerpt(bad[0])}")
    return {k: v for k, v in config.items() if k != skip}


def from_config(config: Mapping[str, Any], where: str = "", model: Any = None) -> Any:
    """The module a loss config describes: ``{"name": ..., **options}`` or ``{"class": ..., **options}``.

    ``where`` (such as ``"terms[0].loss"``) starts every error message; ``model`` is passed to the
    classes that read a model's parameters (``takes_inputs = False``: the penalties).
    """
    check_nesting(config, where)
    if "class" in config:
        if "name" in config:
            raise ValueError(f"{where or 'a loss config'} has both 'name' and 'class'; give one of them")
        cls = config_class(config["class"], where)
        options = _options(config, "class", where)
    elif "name" in config:
        try:
            cls = entry(config["name"]).cls
        except (TypeError, ValueError) as error:
            raise type(error)(f"{_key(where, 'name')}: {error}") from None
        options = _options(config, "name", where)
    else:
        keys = excerpt(sorted(map(str, config)), 200)
        raise ValueError(f"{where or 'a loss config'} needs a 'name' key (a registered loss) or a 'class' key, "
                         f"got keys {keys}")
    prefix = f"{where}: " if where else ""
    if getattr(cls, "takes_inputs", True) is False:  # a penalty: it reads a model's parameters
        if model is None:
            raise ValueError(f"{prefix}{cls.__name__} reads a model's parameters: pass it, "
                             "losskit.build(spec, model=model)")
        arguments: tuple[Any, ...] = (model,)
    else:
        arguments = ()
    try:
        return cls(*arguments, **options)
    except (TypeError, ValueError) as error:
        raise (ValueError if isinstance(error, ValueError) else TypeError)(clip(f"{prefix}{error}")) from None


def available(family: str | None = None) -> list[str]:
    """Canonical names of the registered losses, sorted; only ``family``'s when given (the
    penalties only when ``family="penalty"``).

    Examples:
        >>> import losskit
        >>> "huber" in losskit.available("regression")
        True
        >>> losskit.available("penalty")
        ['elastic_net_penalty', 'l1_penalty', 'l2_penalty']
    """
    known = sorted({e.family for e in _ENTRIES.values()})
    if family is not None and family not in known:
        raise ValueError(f"unknown family {family!r}; families are {known}")
    if family is None:
        return sorted(n for n, e in _ENTRIES.items() if e.takes_inputs)
    return sorted(n for n, e in _ENTRIES.items() if e.family == family)


def families() -> list[str]:
    """The loss families that have registered losses (the ``"penalty"`` family is not one)."""
    return sorted({e.family for e in _ENTRIES.values() if e.takes_inputs})
