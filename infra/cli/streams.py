"""``lakesight score``: the scoring stream (``streams.scoring``)."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.cli._output import configure_logging, print_json
from infra.images import IMAGE_GLOB
from infra.settings import get_settings


def register(app: typer.Typer) -> None:
    app.command()(score)


def score(
    source: Annotated[
        str, typer.Option(help="A folder of images, or 'arrivals' for blob arrival records")
    ] = "arrivals",
    once: Annotated[bool, typer.Option("--once", help="Score what is there now (availableNow) and exit")] = False,
    trigger: Annotated[float | None, typer.Option(min=0.05, help="Seconds between micro-batches")] = None,
    glob: Annotated[str, typer.Option(help="File name filter (folder source)")] = IMAGE_GLOB,
    log_level: Annotated[str, typer.Option(help="Log level; debug also logs the Azure SDK's requests")] = "info",
) -> None:
    """Score new images with the champion model into the images table until stopped (SIGTERM/Ctrl-C).

    Left running, set LAKESIGHT_SCORE_CLEAN_SOURCE=archive (with LAKESIGHT_SCORE_ARCHIVE_DIR) or
    delete: scored files then leave the source folder, and the stream starts a fresh checkpoint
    every LAKESIGHT_SCORE_CHECKPOINT_MAX_FILES files, so listing time and memory stay bounded.
    """
    from streams.scoring.query import run_scoring

    configure_logging(log_level, force=True)
    settings = get_settings()
    report = run_scoring(
        settings, source=None if source == "arrivals" else source, once=once, glob=glob, trigger_s=trigger
    )
    print_json(report.as_dict())
