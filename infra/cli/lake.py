"""``lakesight ingest`` and ``lakesight tables``: files into the images table, and what the lake holds."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.cli._output import console, print_json, render_rows
from infra.images import IMAGE_GLOB
from infra.settings import get_settings


def register(app: typer.Typer) -> None:
    app.command()(ingest)
    app.command()(tables)


def ingest(
    source: Annotated[str, typer.Argument(help="Folder (or abfss:// URI) of image files")],
    labeled: Annotated[bool, typer.Option("--labeled", help="Take each image's label from its folder name")] = False,
    classes: Annotated[str | None, typer.Option(help="Comma-separated known classes; others are reported")] = None,
    glob: Annotated[str, typer.Option(help="File name filter")] = IMAGE_GLOB,
    max_files_per_trigger: Annotated[int, typer.Option(min=1, help="Files per micro-batch")] = 2000,
) -> None:
    """Ingest image files not seen before into the images table (a trigger-once stream)."""
    from streams.ingest import ingest as run_ingest

    settings = get_settings()
    known = [c.strip() for c in classes.split(",")] if classes else None
    with console.status("ingesting…") as status:
        report = run_ingest(
            settings,
            source,
            labeled=labeled,
            classes=known,
            glob=glob,
            max_files_per_trigger=max_files_per_trigger,
            on_batch=lambda r: status.update(f"ingesting… {r.files} files, {r.batches} batches"),
        )
    if report.unknown_labels:
        console.print(f"[yellow]not a known class (ingested without label):[/] {dict(report.unknown_labels)}")
    print_json(report.as_dict())


def tables() -> None:
    """Show the lake's tables with their version, row and file counts."""
    from infra.lake import Lake

    render_rows("tables", Lake(get_settings()).summary())
