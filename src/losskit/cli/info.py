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

import griffe
from pylatexenc import latex2text, latexwalker
from pylatexenc.macrospec import MacroSpec

from losskit.cli.docstrings import convert

__all__ = ["loss_info"]

_PEER = re.compile(r"reproduce|peer", re.IGNORECASE)
_NOTES = re.compile(r"^(notes?|warnings?|caution)$", re.IGNORECASE)
# convert() writes each equation as its own $$ block; a directive's equations follow one another.
_EQUATION = re.compile(r"^\$\$\n(.*?)\n\$\$$", re.MULTILINE | re.DOTALL)
_FORMULA = re.compile(r"^\$\$\n.*?\n\$\$$(?:\n+\$\$\n.*?\n\$\$$)*", re.MULTILINE | re.DOTALL)
_INLINE_FORMULA = re.compile(r"\$([^$\n]+)\$")


def _tex_contexts():
    """pylatexenc's contexts, with the macros losskit's docstrings use that it does not know."""
    walker = latexwalker.get_default_latex_context_db()
    walker.add_context_category("losskit", prepend=True, macros=[MacroSpec("tfrac", "{{"), MacroSpec("dfrac", "{{")])
    text = latex2text.get_default_latex_context_db()
    text.add_context_category("losskit", prepend=True, macros=[
        *(latex2text.MacroTextSpec(frac, simplify_repl="%(1)s/%(2)s") for frac in ("tfrac", "dfrac")),
        latex2text.MacroTextSpec("|", simplify_repl="\u2016"),  # a norm's double bar
        *(latex2text.MacroTextSpec(name, simplify_repl=f"{name} ") for name in ("log", "exp"))])
    return walker, text


_WALKER, _TEXT = _tex_contexts()


def _tex_text(tex: str) -> str:
    """A TeX formula as Unicode text: ``\\sigma(x)`` reads ``σ(x)``, ``\\tfrac12`` reads ``1/2``."""
    nodes, _, _ = latexwalker.LatexWalker(tex, latex_context=_WALKER).get_latex_nodes()
    return " ".join(latex2text.LatexNodes2Text(latex_context=_TEXT, math_mode="text").nodelist_to_text(nodes).split())


def _readable(markdown: str) -> str:
    """Docstring Markdown (:func:`losskit.cli.docstrings.convert`) as plain text: inline formulas
    in Unicode, literals in single backticks."""
    return _INLINE_FORMULA.sub(lambda m: _tex_text(m.group(1)), markdown).replace("``", "`")


def _parse(doc: str) -> list[Any]:
    """The docstring's griffe sections, as the docs site reads them (Google style, reST converted)."""
    return griffe.Docstring(convert(inspect.cleandoc(doc))).parse(
        "google", warnings=False, warn_missing_types=False, warn_unknown_params=False)


def _description(text: str) -> tuple[str, list[str], list[list[str]]]:
    """The summary, the description with each formula replaced by a pointer (``[formula below]``,
    or ``[formula 2 below]`` when there are several), and the formulas: their TeX, the equations
    of one formula separated by a blank line."""
    summary, _, body = text.partition("\n\n")
    formulas = []
    for formula in _FORMULA.finditer(body):
        equations = [m.group(1).splitlines() for m in _EQUATION.finditer(formula.group())]
        formulas.append([line for i, lines in enumerate(equations) for line in ([""] if i else []) + lines])
    numbers = iter(range(1, len(formulas) + 1))
    body = _FORMULA.sub(lambda m: "[formula below]" if len(formulas) == 1 else f"[formula {next(numbers)} below]",
                        body)
    lines = _readable(body).strip("\n").splitlines()
    return " ".join(_readable(summary).split()), lines, formulas


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
    return _readable(convert("\n".join(found))).splitlines() if found else []


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
    sections = _parse(fn.__doc__ or "")
    texts = [section.value for section in sections if section.kind.value == "text"]
    summary, description, formulas = _description(texts[0] if texts else "")
    notes = [(section.title, _readable(section.value.description).splitlines()) for section in sections
             if section.kind.value == "admonition"]

    out = [f"{found.name} ({found.family}): {summary}".rstrip(": ")]
    out.append("")
    out.append(f"aliases:   {', '.join(found.aliases) if found.aliases else '(none)'}")
    out.append(f"function:  losskit.{fn.__name__}  (losskit.functional.{fn.__name__})")
    out.append(f"module:    losskit.nn.{cls.__name__}  (losskit.get({found.name!r}, **options))")
    own_doc = cls.__dict__.get("__doc__") or ""
    if own_doc and not own_doc.rstrip().endswith((fn.__doc__ or "").rstrip()):
        own = _paragraphs(_readable(convert(inspect.cleandoc(own_doc))).splitlines())
        out += _indent([line.strip() for line in own[0]], "           ") if own else []

    options = _options(cls, fn)
    if options:
        out += ["", "options (constructor defaults):"]
        width = max(len(option) for option, _ in options)
        out += [f"  {option.ljust(width)} = {default}" for option, default in options]

    out += ["", "example inputs (losskit.examples, 2 samples):", *_indent(_example(found.name, fn))]

    if description:
        out += ["", "description:", *_indent(description)]
    for number, formula in enumerate(formulas, start=1):
        out += ["", "formula:" if len(formulas) == 1 else f"formula {number}:", *_indent(formula)]

    for title, body in notes:
        if _PEER.search(title) or _NOTES.match(title):
            out += ["", f"{title.lower()}:", *_indent(body)]
    family_lines = _family_peer_lines(fn, cls)
    if family_lines:
        out += ["", f"to reproduce a peer (from losskit.functional.{fn.__module__.rsplit('.', 1)[-1]}):",
                *_indent(family_lines)]
    for title, body in notes:
        if title.lower() == "references":
            out += ["", "references:", *_indent(body)]
    return "\n".join(out).rstrip() + "\n"
