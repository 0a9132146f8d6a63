"""Build-time generation for the docs site (registered under ``hooks:`` in mkdocs.yml).

* ``on_files`` draws each family's losses and gradients (every family in
  ``losskit.arena.plots.PROBE_FAMILIES``) with :func:`losskit.arena.plots.plot_losses` and adds
  the PNGs to the site as
  ``families/plots/<family>.png``; nothing generated is stored in the repository.
* ``on_page_markdown`` expands two markers in the family pages from the registry, so a page
  lists every registered loss of its family without being edited:
  ``<!-- losskit:losses FAMILY -->`` (one section per loss: names, module, API entry) and
  ``<!-- losskit:plot FAMILY -->`` (the generated figure).
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path

from mkdocs.structure.files import File

# Options the 1-D probe cannot invent; LDAM is drawn at scale 1 so that its default scale of 30
# does not flatten every other curve of the figure.
PLOT_OPTIONS = {
    "gaussian_nll": {"var": 1.0},
    "balanced_softmax": {"class_counts": [90, 10]},
    "ldam": {"class_counts": [90, 10], "scale": 1.0},
    "logit_adjusted_cross_entropy": {"class_prior": [0.9, 0.1]},
}
_MARKER = re.compile(r"^<!-- losskit:(losses|plot) (\w+) -->$", re.MULTILINE)


def _plot_options() -> dict:
    import torch

    options = {k: dict(v) for k, v in PLOT_OPTIONS.items()}
    options["gaussian_nll"]["var"] = torch.ones(())
    options["seesaw"] = {"class_counts": torch.tensor([90.0, 10.0])}
    return options


def on_files(files, config, **kwargs):
    import losskit
    from losskit.arena.plots import PROBE_FAMILIES, plot_losses

    with tempfile.TemporaryDirectory() as tmp:
        for family in PROBE_FAMILIES:
            path = Path(tmp) / f"{family}.png"
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a loss missing from the figure fails the build
                plot_losses(losskit.available(family), path, options=_plot_options())
            files.append(File.generated(config, f"families/plots/{family}.png", content=path.read_bytes()))
    return files


def _losses(family: str) -> str:
    from losskit._core import registry

    names = registry.available(family)
    if not names:
        raise ValueError(f"no registered losses in family {family!r}")
    parts = []
    for name in names:
        entry = registry.entry(name)
        fn = entry.cls.function
        aliases = ", ".join(f"`{a}`" for a in entry.aliases)
        parts += [
            f"## `{name}`",
            "",
            f"Function `losskit.{fn.__name__}` · module `losskit.nn.{entry.cls.__name__}` · "
            f'`losskit.get("{name}")`' + (f" · aliases {aliases}" if aliases else ""),
            "",
            f"::: {fn.__module__}.{fn.__name__}",
            "    options:",
            "      show_root_heading: false",
            "      heading_level: 3",
            "",
        ]
    return "\n".join(parts)


def _plot(family: str) -> str:
    return (f"![{family} losses and their gradients along the 1-D probe](plots/{family}.png)\n\n"
            f"*Drawn at build time by `losskit.arena.plots.plot_losses(losskit.available(\"{family}\"), ...)`.*")


def on_page_markdown(markdown, page, config, files, **kwargs):
    return _MARKER.sub(lambda m: _losses(m.group(2)) if m.group(1) == "losses" else _plot(m.group(2)), markdown)


def on_config(config, **kwargs):
    """Leave out of the nav the guide pages that are not written yet (docs/guides/*.md)."""
    docs = Path(config["docs_dir"])
    nav = []
    for item in config["nav"] or []:
        if isinstance(item, dict) and "Guides" in item:
            present = [g for g in item["Guides"] if (docs / next(iter(g.values()))).is_file()]
            if not present:
                continue
            item = {"Guides": present}
        nav.append(item)
    config["nav"] = nav
    return config
