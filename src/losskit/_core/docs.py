"""Docstring text shared by a family of losses, written once.

A family's functions put placeholders such as ``{box_args}`` in their docstrings, and the
decorator returned by :func:`shared_docs` fills them in at import time, so help(), the docs and
the doctests all see the complete text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def shared_docs(**sections: str) -> Callable[[F], F]:
    """A decorator that replaces ``{name}`` in a docstring with ``sections[name]``."""

    def fill(fn: F) -> F:
        doc = fn.__doc__ or ""
        for name, text in sections.items():
            doc = doc.replace("{" + name + "}", text.strip("\n"))
        fn.__doc__ = doc
        return fn

    return fill
