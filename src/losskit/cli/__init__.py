"""The ``losskit`` command (:mod:`losskit.cli.main`) and the loss inspection it runs: ``info``
(:mod:`losskit.cli.info`) and ``plot`` (:mod:`losskit.cli.plots`)."""

from losskit.cli.main import main

__all__ = ["main"]
