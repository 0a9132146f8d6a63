"""Names for losses: ``losskit.get("focal", gamma=1.5)``, ``losskit.available()``.

Each module form is registered once under a canonical name (its function's name without the
``_loss`` suffix) and any number of aliases. Unknown names answer with the closest matches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from losskit._core.checks import did_you_mean

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
        return cls

    return decorate


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    if key in _LOOKUP:
        return _LOOKUP[key]
    if key.endswith("_loss") and key[: -len("_loss")] in _LOOKUP:
        return _LOOKUP[key[: -len("_loss")]]
    raise ValueError(f"unknown loss {name!r}{did_you_mean(key, _LOOKUP)} (losskit.available() lists every name)")


def entry(name: str) -> Entry:
    """The registry entry for a name or alias."""
    return _ENTRIES[_canonical(name)]


def get(spec: str | Mapping[str, Any] | LossModule, **overrides: Any) -> LossModule:
    """Build a loss module from a name, an alias or a config dict.

    Args:
        spec: A registered name or alias (``"focal"``), a config dict as returned by
            :meth:`LossModule.get_config` (``{"name": "focal", "gamma": 1.5}``), or a module,
            returned unchanged when no overrides are given.
        **overrides: Options that replace those in ``spec``.

    Raises:
        ValueError: For an unknown name (with the closest names) or a dict without ``"name"``.
        TypeError: For an option the loss does not take.

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
        if "name" not in spec:
            raise ValueError(f"a loss config needs a 'name' key, got keys {sorted(spec)}")
        options = {k: v for k, v in spec.items() if k != "name"}
        options.update(overrides)
        return entry(spec["name"]).cls(**options)
    raise TypeError(f"spec must be a name, a config dict or a LossModule, got {type(spec).__name__}")


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
