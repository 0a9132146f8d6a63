"""losskit's docstrings as Markdown, for the docs site and ``losskit info`` alike.

The docstrings are Google style (read by ``help()`` and run as doctests), with a few reST
constructs that Markdown does not know; :func:`convert` rewrites them:

* ``.. math::`` blocks become ``$$ ... $$`` blocks, one per equation (equations are separated by
  a blank line, as in reST), and ``:math:`x``` becomes ``$x$``;
* ``:func:`x```, ``:class:`x```, ``:meth:`x```, ``:mod:`x``` become inline code;
* a paragraph ending in ``::`` followed by an indented literal block becomes a paragraph ending
  in ``:`` followed by a fenced Python block;
* an argument line that documents several parameters at once (``weight, reduction: As in
  ...``) becomes one line per parameter.

The docs site's griffe extension (``docs/_hooks/griffe_rst.py``) applies it before griffe parses
a docstring, and ``losskit info`` parses the same Markdown with griffe.
"""

from __future__ import annotations

import re
import textwrap

__all__ = ["convert"]

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


def _equations(inline: str, block: list[str]) -> list[list[str]]:
    """The equations of a ``.. math::`` directive: its inline argument and each blank-line-separated
    paragraph of its body."""
    paragraphs = textwrap.dedent("\n".join(block)).split("\n\n")
    equations = [[inline.strip()]] if inline.strip() else []
    equations += [[line for line in p.splitlines() if line.strip()] for p in paragraphs]
    return [e for e in equations if e]


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
            if out and out[-1].strip():
                out.append("")
            for equation in _equations(math.group(2), block):
                out += [pad + "$$", *(pad + b for b in equation), pad + "$$", ""]
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
