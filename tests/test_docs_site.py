"""The documentation site builds with warnings as errors, so a broken docstring fails CI.

``mkdocs build --strict`` renders every loss's docstring through mkdocstrings (a docstring
griffe cannot parse, an argument documented under a wrong name or a broken link is a warning)
and draws the loss-and-gradient figures of the probed families from the code.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import losskit
from losskit.cli.plots import PROBE_FAMILIES

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"



def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(_installed(m) for m in ("mkdocs", "material", "mkdocstrings_handlers.python")),
        reason="the docs build needs mkdocs, mkdocs-material and mkdocstrings-python (the dev extra)",
    ),
]


def test_docs_site_builds_strictly(tmp_path):
    """One build (about 6 s on 2 cores), checked page by page below."""
    site = _build(tmp_path / "site")
    _check_home_and_family_pages(site)
    _check_every_registered_loss_is_documented(site)
    _check_plots(site)
    _check_reference_topic_and_guide_pages(site)
    _check_formulas_render_offline(site)


def _build(out: Path) -> Path:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        print(result.stdout)
        print(result.stderr)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    return out


def _check_home_and_family_pages(site: Path) -> None:
    assert (site / "index.html").is_file()
    for family in [*losskit.families(), "large_vocab"]:
        assert (site / "families" / family / "index.html").is_file(), family


def _check_every_registered_loss_is_documented(site: Path) -> None:
    from losskit._core import registry

    for family in losskit.families():
        page = (site / "families" / family / "index.html").read_text(encoding="utf-8")
        for name in losskit.available(family):
            function = registry.entry(name).cls.function.__name__
            assert f'id="{name}"' in page, (family, name)
            assert f"losskit.{function}" in page, (family, name)
        assert ".. math::" not in page and ":math:`" not in page and ":func:`" not in page, family


def _check_plots(site: Path) -> None:
    assert set(losskit.families()) <= set(PROBE_FAMILIES), "every family has a probe"
    for family in losskit.families():
        png = site / "families" / "plots" / f"{family}.png"
        assert png.is_file(), family
        assert png.read_bytes()[:8] == PNG_SIGNATURE, family
        assert f"plots/{family}.png" in (site / "families" / family / "index.html").read_text(encoding="utf-8")
    assert not list((ROOT / "docs").rglob("*.png")), "generated figures belong in the built site only"


def _check_reference_topic_and_guide_pages(site: Path) -> None:
    for page in ["core", "boxes", "detection", "segmentation", "compose", "regularization",
                 "distributed", "rl", "arena"]:
        assert (site / "reference" / page / "index.html").is_file(), page
    for page in ["compose", "regularization", "distributed", "contrastive", "large_vocab", "rl"]:
        assert (site / page / "index.html").is_file(), page
    for guide in (ROOT / "docs" / "guides").glob("*.md"):
        assert (site / "guides" / guide.stem / "index.html").is_file(), guide.name


def _check_formulas_render_offline(site: Path) -> None:
    """Formulas are MathML written at build time: no page loads a script from the network, and no
    TeX is left for a script to typeset."""
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"<script[^>]+src=\"https?://", text), page
        assert 'class="arithmatex"' not in text, page
    classification = (site / "families" / "classification" / "index.html").read_text(encoding="utf-8")
    assert classification.count('<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">') >= 5
