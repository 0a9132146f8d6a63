"""What a registered loss is, in plain text: ``loss_info("huber")`` (``losskit info huber``).

The text is generated from the code: the registry entry (name, family, aliases, module class),
the function's signature (the keyword-only options and their defaults, which the module's
constructor shares), the loss's example inputs and plot probe (:mod:`losskit.examples`), the
function's docstring (summary, description, the ``.. math::`` block, the "To reproduce" lists,
References), and the lines of the family's module docstring that show how to reproduce a peer
with this loss.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from typing import Any

__all__ = ["loss_info"]

_HEADER = re.compile(r"^[A-Z][A-Za-z0-9 ,'/()<>-]*:$")
_PEER = re.compile(r"reproduce|peer", re.IGNORECASE)
_NOTES = re.compile(r"^(notes?|warnings?|caution)$", re.IGNORECASE)
_SKIPPED_SECTIONS = {"args", "arguments", "shape", "returns", "raises", "examples", "example", "yields"}


def _split_sections(doc: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The lines before the first section header, and each ``Header:`` with its (dedented) lines."""
    lines = inspect.cleandoc(doc).splitlines()
    intro: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for index, line in enumerate(lines):
        following = next((n for n in lines[index + 1:] if n.strip()), "")
        is_header = (
            _HEADER.match(line) is not None and len(line) <= 60
            and following.startswith((" ", "\t"))
        )
        if is_header:
            sections.append((line[:-1], []))
        elif sections:
            sections[-1][1].append(line)
        else:
            intro.append(line)
    return intro, [(title, textwrap.dedent("\n".join(body)).strip("\n").splitlines()) for title, body in sections]


def _split_math(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """Prose lines and the ``.. math::`` blocks (their indented bodies, dedented)."""
    prose: list[str] = []
    blocks: list[list[str]] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip().startswith(".. math::"):
            indent = len(line) - len(line.lstrip())
            inline = line.strip()[len(".. math::"):].strip()
            body = [inline] if inline else []
            index += 1
            while index < len(lines) and (not lines[index].strip()
                                          or len(lines[index]) - len(lines[index].lstrip()) > indent):
                body.append(lines[index])
                index += 1
            blocks.append(textwrap.dedent("\n".join(body)).strip("\n").splitlines())
            continue
        prose.append(line)
        index += 1
    return prose, blocks


def _render_description(lines: list[str], count: int) -> list[str]:
    """The intro after its summary, in order, each ``.. math::`` block replaced by a pointer to
    the formula section (``[formula below]``, or ``[formula 2 below]`` when there are several)."""
    out: list[str] = []
    index, number = 0, 0
    while index < len(lines):
        line = lines[index]
        if line.strip().startswith(".. math::"):
            indent = len(line) - len(line.lstrip())
            index += 1
            while index < len(lines) and (not lines[index].strip()
                                          or len(lines[index]) - len(lines[index].lstrip()) > indent):
                index += 1
            number += 1
            out += ["[formula below]" if count == 1 else f"[formula {number} below]", ""]
            continue
        if line.strip() or (out and out[-1].strip()):
            out.append(line)
        index += 1
    while out and not out[-1].strip():
        out.pop()
    return out


def _paragraphs(lines: list[str]) -> list[list[str]]:
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


def _items(paragraph: list[str]) -> list[list[str]]:
    """A paragraph as items: a table's rows, a list's bullets, or the whole paragraph."""
    if any(set(line.strip()) <= {"=", " "} and line.strip() for line in paragraph):
        rules = [i for i, line in enumerate(paragraph) if set(line.strip()) <= {"=", " "}]
        header = set(range(rules[0] + 1, rules[1])) if len(rules) >= 2 else set()
        rows: list[list[str]] = []
        for i, line in enumerate(paragraph):
            if i in rules or i in header:
                continue
            if line[:1].isspace() and rows:
                rows[-1].append(line)
            else:
                rows.append([line])
        return rows
    if paragraph[0].lstrip().startswith(("* ", "- ")):
        bullets: list[list[str]] = []
        for line in paragraph:
            if line.lstrip().startswith(("* ", "- ")) or not bullets:
                bullets.append([line])
            else:
                bullets[-1].append(line)
        return bullets
    return [paragraph]


def _family_peer_lines(fn: Any, cls: type) -> list[str]:
    """Items of the family module's "to reproduce a peer" text that name this function or class."""
    module = inspect.getmodule(fn)
    doc = inspect.cleandoc(getattr(module, "__doc__", None) or "")
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if _PEER.search(line)), None)
    if start is None:
        return []
    names = re.compile(rf"\b(?:{re.escape(fn.__name__)}|{re.escape(cls.__name__)})\b")
    paragraphs = _paragraphs(lines[start:])
    found: list[str] = []
    for paragraph in paragraphs[1:]:  # the first is the block's own heading
        for item in _items(paragraph):
            if names.search("\n".join(item)):
                found.extend(textwrap.dedent("\n".join(item)).splitlines())
    return found


def _options(cls: type, fn: Any) -> list[tuple[str, str]]:
    """(name, default) for the module's constructor: the function's keyword-only options, plus any
    option the module class adds itself."""
    rows: list[tuple[str, str]] = []

    def add(params):
        for p in params:
            if p.kind is p.KEYWORD_ONLY and all(p.name != name for name, _ in rows):
                rows.append((p.name, "required" if p.default is p.empty else repr(p.default)))

    init = cls.__dict__.get("__init__")
    if init is not None:
        add(inspect.signature(init).parameters.values())
    add(inspect.signature(fn).parameters.values())
    return rows


def _describe(value: Any) -> str:
    """A tensor as its dtype and shape, anything else as its (clipped) repr."""
    import torch

    if isinstance(value, torch.Tensor):
        return f"tensor {str(value.dtype).removeprefix('torch.')} {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _example(name: str, fn: Any) -> list[str]:
    """The example call of the table of example inputs (:mod:`losskit.examples`), and the probe
    ``losskit plot`` draws."""
    import torch

    from losskit import examples

    case = examples.spec(name).make(2, torch.Generator().manual_seed(0))
    sweep = examples.sweep(name)
    first, second = list(inspect.signature(fn).parameters)[:2]
    rows = [(first, case.input), (second, case.target), *case.kwargs.items()]
    width = max(len(key) for key, _ in rows)
    lines = [f"{key.ljust(width)} = {_describe(value)}" for key, value in rows]
    return [*lines, f"plot probe: {sweep.kind}; x axis: {sweep.axis.label}"]


def _indent(lines: list[str], prefix: str = "  ") -> list[str]:
    return [prefix + line if line.strip() else "" for line in lines]


def loss_info(name: str) -> str:
    """A plain-text description of a registered loss (name or alias).

    Gives the canonical name, family, aliases, the function and module class, the constructor's
    options with their defaults, and from the docstring: the summary and description, the
    formula, the "to reproduce <peer>" lines (the function's and the family's) and the references.

    Raises:
        ValueError: For an unknown name, with the registry's "did you mean" suggestions.

    Examples:
        >>> loss_info("mae").splitlines()[0].split(":")[0]  # an alias gives the canonical name
        'l1 (regression)'
        >>> print(loss_info("huber").split("options (constructor defaults):")[1].splitlines()[1])
          delta      = 1.0
    """
    import losskit  # noqa: F401  (registers every loss)
    from losskit._core.registry import entry

    found = entry(name)
    cls = found.cls
    fn = cls.function
    fn = getattr(fn, "__func__", fn)
    intro, sections = _split_sections(fn.__doc__ or "")
    paragraphs = _paragraphs(intro)
    summary = " ".join(line.strip() for line in paragraphs[0]) if paragraphs else ""
    body = [line for paragraph in paragraphs[1:] for line in [*paragraph, ""]]
    _, math_blocks = _split_math(body)

    out = [f"{found.name} ({found.family}): {summary}".rstrip(": ")]
    out.append("")
    out.append(f"aliases:   {', '.join(found.aliases) if found.aliases else '(none)'}")
    out.append(f"function:  losskit.{fn.__name__}  (losskit.functional.{fn.__name__})")
    out.append(f"module:    losskit.nn.{cls.__name__}  (losskit.get({found.name!r}, **options))")
    own_doc = cls.__dict__.get("__doc__") or ""
    if own_doc and not own_doc.rstrip().endswith((fn.__doc__ or "").rstrip()):
        own = _paragraphs(inspect.cleandoc(own_doc).splitlines())
        out += _indent([line.strip() for line in own[0]], "           ") if own else []

    options = _options(cls, fn)
    if options:
        out += ["", "options (constructor defaults):"]
        width = max(len(option) for option, _ in options)
        out += [f"  {option.ljust(width)} = {default}" for option, default in options]

    out += ["", "example inputs (losskit.examples, 2 samples):", *_indent(_example(found.name, fn))]

    description = _render_description(body, len(math_blocks))
    if description:
        out += ["", "description:", *_indent(description)]
    for number, block in enumerate(math_blocks, start=1):
        out += ["", "formula:" if len(math_blocks) == 1 else f"formula {number}:", *_indent(block)]

    for title, body in sections:
        if title.lower() in _SKIPPED_SECTIONS or not (_PEER.search(title) or _NOTES.match(title)):
            continue
        out += ["", f"{title.lower()}:", *_indent(body)]
    family_lines = _family_peer_lines(fn, cls)
    if family_lines:
        out += ["", f"to reproduce a peer (from losskit.functional.{fn.__module__.rsplit('.', 1)[-1]}):",
                *_indent(family_lines)]
    for title, body in sections:
        if title.lower() == "references":
            out += ["", "references:", *_indent(body)]
    return "\n".join(out).rstrip() + "\n"
