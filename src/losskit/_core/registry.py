"""Names for losses: ``losskit.get("focal", gamma=1.5)``, ``losskit.available()``.

Each module form is registered once under a canonical name (its function's name without the
``_loss`` suffix) and any number of aliases. Unknown names answer with the closest matches.

The registry is also the allowlist of configs. A config names a registered loss
(``{"name": "focal"}``), or a class by its path (``{"class": "losskit.detection.yolo.YOLOLoss"}``)
that is registered here: every registered loss, and the classes marked with
:func:`register_class` (the parameter penalties, the YOLO criterion). A class path is looked up,
never imported, so a config cannot reach any other callable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from losskit._core.checks import clip, did_you_mean, excerpt

if TYPE_CHECKING:
    from losskit._core.module import LossModule


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type[LossModule]
    family: str
    aliases: tuple[str, ...] = field(default=())


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
    """Class decorator: register a :class:`LossModule` under ``name`` and ``aliases``."""

    def decorate(cls: type[LossModule]) -> type[LossModule]:
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


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a loss name must be a string such as 'dice', got {type(name).__name__} {excerpt(name)}")
    key = name.strip().lower().replace("-", "_")
    if key in _LOOKUP:
        return _LOOKUP[key]
    if key.endswith("_loss") and key[: -len("_loss")] in _LOOKUP:
        return _LOOKUP[key[: -len("_loss")]]
    raise ValueError(f"unknown loss {excerpt(name)}{did_you_mean(key, _LOOKUP)} (losskit.available() lists every name)")


def entry(name: str) -> Entry:
    """The registry entry for a name or alias."""
    return _ENTRIES[_canonical(name)]


def get(spec: str | Mapping[str, Any] | LossModule, **overrides: Any) -> LossModule:
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
    from losskit._core.module import LossModule

    if isinstance(spec, LossModule):
        if not overrides:
            return spec
        spec = spec.get_config()
    if isinstance(spec, str):
        return entry(spec).cls(**overrides)
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
                             "losskit.build(config, model=model)")
        arguments: tuple[Any, ...] = (model,)
    else:
        arguments = ()
    try:
        return cls(*arguments, **options)
    except (TypeError, ValueError) as error:
        raise (ValueError if isinstance(error, ValueError) else TypeError)(clip(f"{prefix}{error}")) from None


def available(family: str | None = None) -> list[str]:
    """Canonical names of the registered losses, sorted; only ``family``'s when given.

    Examples:
        >>> import losskit
        >>> "huber" in losskit.available("regression")
        True
    """
    families = sorted({e.family for e in _ENTRIES.values()})
    if family is not None and family not in families:
        raise ValueError(f"unknown family {family!r}; families are {families}")
    return sorted(n for n, e in _ENTRIES.items() if family is None or e.family == family)


def families() -> list[str]:
    """The loss families that have registered losses."""
    return sorted({e.family for e in _ENTRIES.values()})
