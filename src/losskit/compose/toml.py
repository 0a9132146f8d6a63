"""Composite configs as TOML: read with ``tomllib`` (``tomli`` on Python 3.10), written with
``tomli_w`` (the ``toml`` extra: ``pip install losskit[toml]``).

TOML has no null, so options set to ``None`` are listed under the table's ``none`` key
(``loss = { name = "focal", none = ["alpha"] }``). TOML text comes from outside: its length and
nesting are checked before the parser sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from losskit._core import registry
from losskit._core.checks import clip, excerpt

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None
try:
    import tomli_w
except ModuleNotFoundError:
    tomli_w = None

__all__ = ["MAX_TOML_LENGTH", "load_toml", "to_toml"]

MAX_TOML_LENGTH = 1_000_000  # characters of TOML text


def _listed_nones(value: Any, where: str) -> Any:
    """``value`` with every table's options set to None moved to its ``none`` key."""
    if isinstance(value, Mapping):
        if "none" in value:
            raise ValueError(f"{where} has a key 'none', which the TOML form reserves for options set to None")
        out = {k: _listed_nones(v, f"{where}.{k}") for k, v in value.items() if v is not None}
        nones = [k for k, v in value.items() if v is None]
        if nones:
            out["none"] = nones
        return out
    if isinstance(value, (list, tuple)):
        if any(v is None for v in value):
            raise ValueError(f"{where} is None inside a list, which TOML cannot hold")
        return [_listed_nones(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _restored_nones(value: Any) -> Any:
    if isinstance(value, Mapping):
        out = {k: _restored_nones(v) for k, v in value.items() if k != "none"}
        nones = value.get("none", [])
        if not isinstance(nones, list) or not all(isinstance(k, str) for k in nones):
            raise TypeError(f"a table's 'none' key lists the options set to None, so it must be a list of names, "
                            f"got {excerpt(nones)}")
        for key in nones:
            out[key] = None
        return out
    if isinstance(value, list):
        return [_restored_nones(v) for v in value]
    return value


def to_toml(composite: Any) -> str:
    """The composite's config (``composite.get_config()``) as TOML text; :func:`from_toml` or
    :func:`~losskit.build` read it back.

    ``tomli_w`` writes the terms as an array of inline tables when they fit on a line, as
    ``[[terms]]`` tables otherwise. Options set to ``None`` are listed in the table's ``none`` key.

    Raises:
        ImportError: ``tomli_w`` is not installed.
        ValueError: A config table has a key named ``none``, or a list holds ``None``.

    Examples:
        >>> import losskit
        >>> print(losskit.build("0.5*dice + ce").to_toml())
        weighting = "fixed"
        terms = [
            { name = "dice", weight = 0.5, loss = { name = "dice" } },
            { name = "cross_entropy", weight = 1.0, loss = { name = "cross_entropy" } },
        ]
        <BLANKLINE>
    """
    if tomli_w is None:
        raise ImportError("writing TOML needs the tomli_w package (pip install losskit[toml])")
    config = dict(composite.get_config())
    terms = config.pop("terms")
    table = {**_listed_nones(config, "the composite config"), "terms": _listed_nones(terms, "terms")}
    try:
        return tomli_w.dumps(table)
    except TypeError as error:
        raise TypeError(f"the composite config cannot be written as TOML: {clip(str(error))}") from None


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


def load_toml(text: str) -> dict[str, Any]:
    """The config in TOML text, with the tables' ``none`` lists turned back into options set to
    ``None``; the text's length and nesting are checked before it is parsed."""
    if len(text) > MAX_TOML_LENGTH:
        raise ValueError(f"the TOML composite config is {len(text)} characters long; the limit is {MAX_TOML_LENGTH}")
    if _toml_nesting(text) > registry.MAX_CONFIG_NESTING:
        raise ValueError(f"the TOML composite config nests arrays and tables more than {registry.MAX_CONFIG_NESTING} "
                         "levels deep")
    if tomllib is None:
        raise ImportError("reading TOML on Python 3.10 needs the tomli package (pip install losskit[toml])")
    try:
        return _restored_nones(tomllib.loads(text))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"invalid TOML composite config: {clip(str(error))}") from None
