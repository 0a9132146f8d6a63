"""A griffe extension that turns the reST bits of losskit's docstrings into Markdown.

The docstrings are Google style (read by ``help()`` and run as doctests), with a few reST
constructs that Markdown does not know:

* ``.. math::`` blocks become ``$$ ... $$`` blocks and ``:math:`x``` becomes ``$x$``
  (rendered by ``pymdownx.arithmatex`` and MathJax);
* ``:func:`x```, ``:class:`x```, ``:meth:`x```, ``:mod:`x``` become inline code;
* a paragraph ending in ``::`` followed by an indented literal block becomes a paragraph ending
  in ``:`` followed by a fenced Python block;
* an argument line that documents several parameters at once (``weight, reduction: As in
  ...``) becomes one line per parameter.

Docstrings completed at import time (``losskit._core.docs.shared_docs`` fills placeholders, and
module forms take their function's docstring) are read from the imported objects, so the site
shows what ``help()`` shows. Only the text the docs site renders changes; the source is left
alone.
"""

from __future__ import annotations

import importlib
import inspect
import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):`~?([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_BLOCK = re.compile(r"^(\s*)\.\. math::\s*(.*)$")
_LITERAL = re.compile(r"^(\s*)(\S.*?)::\s*$")
_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Other Parameters|Attributes):\s*$")
_SEVERAL = re.compile(r"^(\s*)(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)\s*:(.*)$")


def _split_several(lines: list[str]) -> list[str]:
    """``a, b: text`` in an argument section becomes ``a: text`` and ``b: text``."""
    out: list[str] = []
    section: int | None = None  # indentation of the current argument section's title
    i = 0
    while i < len(lines):
        line = lines[i]
        title = _SECTION.match(line)
        if title:
            section = len(title.group(1))
        elif line.strip() and section is not None and _indent(line) <= section:
            section = None
        several = _SEVERAL.match(line) if section is not None else None
        if several and len(several.group(1)) > section:
            pad = several.group(1)
            rest, i = _take_block(lines, i + 1, len(pad))
            for name in (n.strip() for n in several.group(2).split(",")):
                out += [pad + name + ":" + several.group(3), *rest]
            continue
        out.append(line)
        i += 1
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _take_block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """The lines after ``start`` indented deeper than ``base`` (blank lines included)."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
        end += 1
    while end > start and not lines[end - 1].strip():  # trailing blank lines stay outside
        end -= 1
    return lines[start:end], end


def convert(text: str) -> str:
    """The Markdown form of one docstring."""
    lines = _split_several(text.splitlines())
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        math = _MATH_BLOCK.match(line)
        literal = _LITERAL.match(line) if not math else None
        if math:
            pad = math.group(1)
            block, i = _take_block(lines, i + 1, len(pad))
            body = [math.group(2)] if math.group(2).strip() else []
            body += [b for b in textwrap.dedent("\n".join(block)).splitlines() if b.strip()]
            if out and out[-1].strip():
                out.append("")
            out += [pad + "$$", *(pad + b for b in body), pad + "$$", ""]
            continue
        if literal and i + 1 < len(lines):
            pad = literal.group(1)
            block, end = _take_block(lines, i + 1, len(pad))
            if any(b.strip() for b in block):
                out += [pad + literal.group(2) + ":", ""]
                code = textwrap.dedent("\n".join(block)).strip("\n").splitlines()
                out += [pad + "```python", *((pad + c) if c.strip() else "" for c in code), pad + "```", ""]
                i = end
                continue
        out.append(line)
        i += 1
    text = "\n".join(out)
    text = _MATH_ROLE.sub(lambda m: "$" + m.group(1).strip() + "$", text)
    return _ROLE.sub(lambda m: "`" + m.group(1) + "`", text)


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
