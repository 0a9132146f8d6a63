"""Every ```python block of every Markdown page under docs/ runs.

The pages are found when the tests are collected, so a page added later is covered without a
change here. The blocks of one page run in order in one namespace (a later block may use what an
earlier one defined), and the test is named after the page, so a failure says which page broke.

A block that cannot run here (it needs a GPU, ``torchrun``, a peer library that is not
installed, or it is a fragment that uses names the page never defines) is marked by an HTML
comment on the line before its fence, invisible on the rendered page::

    <!-- no-run: needs torchrun -->
    ```python
    ...
    ```

Blocks fenced as ```pycon, ```text, ```bash and so on are not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import losskit

DOCS = Path(__file__).resolve().parent.parent / "docs"

# Pages whose examples another test already runs; running them again here would double the cost.
TESTED_ELSEWHERE = {
    "compose.md": "tests/test_compose.py::test_documentation_examples_run",
    "regularization.md": "tests/test_compose.py::test_documentation_examples_run",
}

# A fence line starting a python block, optionally preceded by a no-run marker line.
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[^\s`]*)[^\n]*$", re.M)
NO_RUN = re.compile(r"<!--\s*no-run\b.*-->\s*$")


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """The ```python blocks of a page: (line number, code, runnable), in page order."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang = match.group("indent"), match.group("lang").lower()
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # the closing fence
        if lang not in ("python", "py"):
            continue
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        runnable = not NO_RUN.search(previous.strip())
        blocks.append((start + 1, "\n".join(body), runnable))
    return blocks


def pages() -> list[str]:
    return sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))


def pages_with_examples() -> list[str]:
    """Pages with at least one runnable python block, not run by another test."""
    return [page for page in pages() if page not in TESTED_ELSEWHERE
            and any(ok for _, _, ok in python_blocks((DOCS / page).read_text()))]


def test_block_parser_finds_fences_and_markers():
    text = "\n".join([
        "# t", "```python", "a = 1", "```", "", "<!-- no-run: needs a GPU -->", "```python",
        "b = torch.cuda.current_device()", "```", "```text", "not code", "```", "```pycon",
        ">>> 1", "```", "    ```python", "    c = a + 1", "    ```",
    ])
    assert python_blocks(text) == [(2, "a = 1", True), (7, "b = torch.cuda.current_device()", False),
                                   (16, "c = a + 1", True)]


def test_docs_pages_are_found():
    assert "guides/reductions.md" in pages()
    assert {"guides/reductions.md", "guides/mixed_precision.md", "index.md"} <= set(pages_with_examples())


@pytest.mark.parametrize("page", pages_with_examples())
def test_page_examples_run(page):
    blocks = python_blocks((DOCS / page).read_text())
    runnable = [(line, code) for line, code, ok in blocks if ok]
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"docs_{Path(page).stem}"}
    try:
        for line, code in runnable:
            try:
                exec(compile(code, f"docs/{page}, block at line {line}", "exec"), namespace)  # noqa: S102
            except Exception as error:
                raise AssertionError(f"docs/{page}: the python block at line {line} failed: "
                                     f"{type(error).__name__}: {error}") from error
    finally:
        losskit.set_checks(True)  # a page that switched value checks off leaves them as the suite expects
