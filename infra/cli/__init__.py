"""The ``lakesight`` command: the composition root, the one place that wires every package together.

Each subcommand reads its options and calls one function of ``streams``, ``training``,
``handlers``, ``serving`` or ``infra``; those are imported inside the commands, so ``--help`` is instant and no
other ``infra`` module imports the domain packages (the import contracts in pyproject.toml;
docs/ARCHITECTURE.md). Errors derived from :class:`infra.errors.LakesightError` end the command
with one line on stderr at the single boundary in :mod:`infra.cli._output`.
"""

from __future__ import annotations

import sys

from infra.cli import bench, config, data, featurize, handlers, lake, local, serving, streams, training
from infra.cli._output import app

__all__ = ["app", "main"]

for _module in (config, data, lake, featurize, local, handlers, serving, streams, training, bench):
    _module.register(app)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
