"""A griffe extension that turns the reST bits of losskit's docstrings into Markdown with
:func:`losskit.cli.docstrings.convert` (``losskit info`` reads them the same way); the site renders
the ``$$ ... $$`` and ``$x$`` formulas with ``pymdownx.arithmatex``.

Docstrings completed at import time (``losskit._core.docs.shared_docs`` fills placeholders, and
module forms take their function's docstring) are read from the imported objects, so the site
shows what ``help()`` shows. Only the text the docs site renders changes; the source is left
alone.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import griffe

from losskit.cli.docstrings import convert


def _runtime_doc(obj: Any) -> str | None:
    """The docstring of the imported object at ``obj.path``, or None."""
    module = obj.module.path
    if module.split(".")[-1] == "__main__":
        return None
    try:
        target: Any = importlib.import_module(module)
        for part in obj.path[len(module) + 1:].split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        return None
    doc = target.__dict__.get("__doc__") if isinstance(target, type) else getattr(target, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else None


class RestToMarkdown(griffe.Extension):
    """Rewrite every docstring of a loaded package once, before it is parsed."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()

        def visit(obj: Any) -> None:
            if id(obj) in seen or getattr(obj, "is_alias", False):
                return
            seen.add(id(obj))
            if obj.is_function or obj.is_class:
                runtime = _runtime_doc(obj)
                if runtime and obj.docstring is not None:
                    obj.docstring.value = runtime
                elif runtime:
                    obj.docstring = griffe.Docstring(runtime, lineno=obj.lineno, parent=obj)
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value)
            for member in obj.members.values():
                visit(member)

        visit(pkg)
