"""The spec grammar of :func:`~losskit.build`: ``"0.5*dice + linear(0.8, 0.1)*focal(gamma=1.5)"``.

Recursive descent over the grammar in ``docs/compose.md``. Specs come from outside (command
lines, files): they are parsed with bounded length and nesting, so that no spec reaches Python's
recursion limit or makes a megabyte message, and values are literals (never evaluated code).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from losskit._core import registry
from losskit._core.checks import clip, did_you_mean, excerpt
from losskit.compose.schedules import SCHEDULES, Schedule, times

__all__ = ["MAX_SPEC_LENGTH", "MAX_SPEC_NESTING", "parse_spec"]

MAX_SPEC_LENGTH = 4096  # characters of a spec string
MAX_SPEC_NESTING = 32  # parentheses, brackets, signs and schedule calls inside each other

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>[-+*/(),=\[\]])
""", re.VERBOSE)

_CONSTANTS = {"True": True, "true": True, "False": False, "false": False, "None": None, "none": None}


def _spec_excerpt(spec: str, pos: int, width: int = 60) -> str:
    """The spec, or for a long one the part around ``pos``, quoted."""
    if len(spec) <= width:
        return repr(spec)
    start = max(0, min(pos - width // 2, len(spec) - width))
    end = start + width
    part = ("…" if start else "") + spec[start:end] + ("…" if end < len(spec) else "")
    return f"{part!r} (part of a {len(spec)}-character spec)"


def tokenize(spec: str) -> list[tuple[str, str, int]]:
    """The tokens of a spec as ``(kind, text, position)``, whitespace left out, ending with
    ``("end", "", len(spec))``; ``ValueError`` at the first character no token starts with."""
    tokens = []
    pos = 0
    while pos < len(spec):
        match = _TOKEN.match(spec, pos)
        if match is None:
            raise ValueError(f"in {_spec_excerpt(spec, pos)} at position {pos}: unexpected character {spec[pos]!r}")
        if match.lastgroup != "ws":
            tokens.append((match.lastgroup, match.group(), pos))
        pos = match.end()
    tokens.append(("end", "", len(spec)))
    return tokens


def split_specs(text: str) -> list[str]:
    """Comma-separated specs, as ``losskit compare --losses`` takes them: a comma inside
    parentheses, brackets or a string belongs to a spec's options.

    Examples:
        >>> split_specs("ce, focal(gamma=2.0, alpha=[0.25, 0.75]) ,0.5*dice+ce")
        ['ce', 'focal(gamma=2.0, alpha=[0.25, 0.75])', '0.5*dice+ce']
    """
    specs, depth, start = [], 0, 0
    for kind, token, pos in tokenize(text):
        if kind == "op" and token in ("(", "["):
            depth += 1
        elif kind == "op" and token in (")", "]"):
            depth -= 1
        elif kind == "end" or (kind == "op" and token == "," and depth == 0):
            specs.append(text[start:pos].strip())
            start = pos + 1
    return [spec for spec in specs if spec]


class _Parser:
    """Recursive descent over the grammar in ``docs/compose.md``; values are either a scalar
    (number or schedule) or a list of ``(weight, loss, name)`` terms. The length is checked first,
    and the nesting before each level, so no spec reaches Python's recursion limit."""

    def __init__(self, spec: str, model: nn.Module | None) -> None:
        self.spec, self.model = spec, model
        self.depth = 0
        if len(spec) > MAX_SPEC_LENGTH:
            raise ValueError(f"the spec {_spec_excerpt(spec, 0)} is longer than {MAX_SPEC_LENGTH} characters; build "
                             "a long composite from a config (a list of terms or TOML)")
        self.tokens = tokenize(spec)
        self.i = 0

    def fail(self, message: str, pos: int | None = None, error: type[Exception] = ValueError):
        pos = self.tokens[self.i][2] if pos is None else pos
        raise error(f"in {_spec_excerpt(self.spec, pos)} at position {pos}: {clip(message)}")

    @contextmanager
    def nested(self, pos: int) -> Iterator[None]:
        """One level deeper (a parenthesis, bracket, sign or schedule call), within the limit."""
        if self.depth >= MAX_SPEC_NESTING:
            self.fail(f"the spec nests more than {MAX_SPEC_NESTING} levels deep (parentheses, brackets, signs and "
                      "schedule calls count)", pos)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, str, int]:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def expect(self, text: str) -> None:
        kind, got, _ = self.peek()
        if got != text or kind not in ("op",):
            self.fail(f"expected {text!r}, got {self.describe()}")
        self.take()

    def describe(self) -> str:
        kind, text, _ = self.peek()
        return "the end" if kind == "end" else excerpt(text)

    def parse(self) -> list[tuple[float | Schedule, nn.Module, str]]:
        if self.peek()[0] == "end":
            self.fail("the spec is empty; name at least one loss")
        value = self.expr()
        if self.peek()[0] != "end":
            self.fail(f"expected '+', '-', '*' or '/', got {self.describe()}")
        if not isinstance(value, list):
            self.fail("the spec has no loss, only a number or schedule", 0)
        return value

    def expr(self):
        start = self.peek()[2]
        left = self.product()
        while self.peek()[1] in ("+", "-") and self.peek()[0] == "op":
            op, pos = self.take()[1], self.peek()[2]
            right = self.product()
            if not isinstance(left, list) or not isinstance(right, list):
                self.fail("cannot add a number or schedule to a loss; multiply it with one", start
                          if not isinstance(left, list) else pos)
            left = left + (self.scale(right, -1.0) if op == "-" else right)
        return left

    def product(self):
        left = self.unary()
        while self.peek()[1] in ("*", "/") and self.peek()[0] == "op":
            op, pos = self.take()[1], self.peek()[2]
            right = self.unary()
            if op == "/":
                if isinstance(right, (list, Schedule)):
                    self.fail("can only divide by a number", pos)
                if right == 0:
                    self.fail("division by zero", pos)
                right = 1.0 / right
            if isinstance(left, list) and isinstance(right, list):
                self.fail("cannot multiply two losses; multiply a loss by a number or a schedule", pos)
            if isinstance(left, list):
                left = self.scale(left, right)
            elif isinstance(right, list):
                right = self.scale(right, left)
                left = right
            else:
                left = times(left, right)
        return left

    @staticmethod
    def scale(terms: list, factor: float | Schedule) -> list:
        return [(times(w, factor), loss, name) for w, loss, name in terms]

    def unary(self):
        if self.peek()[0] == "op" and self.peek()[1] in ("+", "-"):
            with self.nested(self.peek()[2]):
                sign = -1.0 if self.take()[1] == "-" else 1.0
                value = self.unary()
            return self.scale(value, sign) if isinstance(value, list) else times(value, sign)
        return self.primary()

    def primary(self):
        kind, text, pos = self.peek()
        if kind == "number":
            self.take()
            return float(text)
        if kind == "op" and text == "(":
            with self.nested(pos):
                self.take()
                value = self.expr()
                self.expect(")")
            return value
        if kind == "name":
            if text in _CONSTANTS:
                self.fail(f"{text} is not a loss or a weight")
            self.take()
            args, kwargs = [], {}
            if self.peek()[1] == "(":
                with self.nested(pos):
                    args, kwargs = self.call_args()
            if text in SCHEDULES:
                return self.schedule(text, args, kwargs, pos)
            return [self.loss(text, args, kwargs, pos)]
        self.fail(f"expected a loss name, a number or '(', got {self.describe()}")

    def call_args(self) -> tuple[list[Any], dict[str, Any]]:
        self.expect("(")
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        while self.peek()[1] != ")" or self.peek()[0] != "op":
            kind, text, pos = self.peek()
            if kind == "name" and self.tokens[self.i + 1][1] == "=":
                self.take()
                self.take()
                if text in kwargs:
                    self.fail(f"option {text!r} is given twice", pos)
                kwargs[text] = self.value()
            else:
                if kwargs:
                    self.fail("a positional value after a named option", pos)
                args.append(self.value())
            if self.peek()[1] == ",":
                self.take()
            elif self.peek()[1] != ")":
                self.fail(f"expected ',' or ')', got {self.describe()}")
        self.take()
        return args, kwargs

    def value(self) -> Any:
        kind, text, pos = self.peek()
        with self.nested(pos):
            return self._value(kind, text, pos)

    def _value(self, kind: str, text: str, pos: int) -> Any:
        if kind == "op" and text in ("-", "+"):
            self.take()
            inner = self.value()
            if isinstance(inner, bool) or not isinstance(inner, (int, float, Schedule)):
                self.fail(f"a sign before a non-number {inner!r}", pos)
            return -inner if text == "-" else inner
        if kind == "number":
            self.take()
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "string":
            self.take()
            return ast.literal_eval(text)
        if kind == "op" and text == "[":
            self.take()
            items = []
            while self.peek()[1] != "]":
                items.append(self.value())
                if self.peek()[1] == ",":
                    self.take()
                elif self.peek()[1] != "]":
                    self.fail(f"expected ',' or ']', got {self.describe()}")
            self.take()
            return items
        if kind == "name":
            if text in _CONSTANTS:
                self.take()
                return _CONSTANTS[text]
            if text in SCHEDULES and self.tokens[self.i + 1][1] == "(":
                self.take()
                args, kwargs = self.call_args()
                return self.schedule(text, args, kwargs, pos)
            self.fail(f"expected a value, got the bare word {text!r} (quote strings: {text!r})")
        self.fail(f"expected a value (number, string, True/False/None, list), got {self.describe()}")

    def schedule(self, name: str, args: list[Any], kwargs: dict[str, Any], pos: int) -> Schedule:
        try:
            return SCHEDULES[name](*args, **kwargs)
        except (TypeError, ValueError) as error:
            self.fail(f"{name}(...): {error}", pos, ValueError if isinstance(error, ValueError) else TypeError)

    def loss(self, name: str, args: list[Any], kwargs: dict[str, Any], pos: int) -> tuple[float, nn.Module, str]:
        found = registry.find(name)
        if found is None:
            key = registry.canonical_key(name)
            hint = did_you_mean(key, registry.names()) or did_you_mean(key, list(SCHEDULES))
            self.fail(f"unknown loss {excerpt(name)}{hint}", pos)
        if args:
            self.fail(f"options of {name} must be named: {name}(option=value)", pos)
        try:
            module = registry.from_config({"name": found.name, **kwargs}, model=self.model)
        except (TypeError, ValueError) as error:
            self.fail(str(error), pos, ValueError if isinstance(error, ValueError) else TypeError)
        return 1.0, module, module.registered_name


def parse_spec(spec: str, model: nn.Module | None = None) -> list[tuple[float | Schedule, nn.Module, str]]:
    """The terms of a spec string, as ``(weight, loss module, name)``; ``model`` is given to the
    penalties."""
    return _Parser(spec, model).parse()
