"""``lakesight featurize``: embeddings of any images into a lake table (``streams.featurize``)."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.cli._output import print_json, say, stdout_to_stderr
from infra.images import IMAGE_GLOB
from infra.settings import get_settings


def register(app: typer.Typer) -> None:
    app.command()(featurize)


def featurize(
    source: Annotated[
        str,
        typer.Argument(
            help="A folder of images (recursive), a lake table with path and content columns (e.g. images), "
            "or a blob container as container:NAME or container:NAME/PREFIX"
        ),
    ],
    out: Annotated[
        str, typer.Option("--out", help="The table to write under the lake root (not one of lakesight's own)")
    ],
    version: Annotated[
        str | None, typer.Option("--version", help="Registered model version (default: the champion)")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per model call (memory is bounded by it)")] = 256,
    glob: Annotated[str, typer.Option(help="File name filter (folder and container sources)")] = IMAGE_GLOB,
) -> None:
    """Write the embeddings of SOURCE's images into the table --out, with the champion or --version.

    SOURCE: a folder (recursive, --glob), a lake table with path and content columns, or container:NAME/PREFIX.

    Columns: path, content_hash, embedding (L2-normalised, at most 128 floats), predicted_label, confidence,
    model_name, model_version, featurized_at, error.

    One row per image, MERGEd on path: a re-run updates rows, never duplicates them. Unreadable or corrupt
    images become rows with error set. A model without embeddings is refused before any work.

    Progress goes to stderr; stdout gets a JSON summary (rows, errors, table, model_version, dims, seconds).
    """
    from streams.featurize import FeaturizeReport
    from streams.featurize import featurize as run_featurize

    settings = get_settings()

    def progress(report: FeaturizeReport) -> None:
        rate = report.rows / report.seconds if report.seconds else 0.0
        say(f"featurized {report.rows} images ({report.errors} errors), {rate:.0f} images/s")

    with stdout_to_stderr():  # TensorFlow's and MLflow's chatter: stdout is the summary alone
        report = run_featurize(settings, source, out, version=version, batch=batch, glob=glob, on_progress=progress)
    say(f"{report.rows} images into {report.table} with version {report.model_version} ({report.dims} dims)")
    print_json(report.as_dict())
