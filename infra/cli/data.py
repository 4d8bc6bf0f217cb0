"""``lakesight data digits|shapes``: sample images written to a folder or uploaded to a container."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from infra.cli._output import print_json, progress_bar, sub_app
from infra.errors import UsageError
from infra.settings import Settings, get_settings

OutOption = Annotated[Path | None, typer.Option("--out", help="Folder to write <split>/<label>/<name>.png")]
ContainerOption = Annotated[str | None, typer.Option(help="Upload to this blob container instead")]
HoldoutOption = Annotated[float, typer.Option(min=0.0, max=0.9, help="Share kept as holdout")]


def register(app: typer.Typer) -> None:
    group = sub_app("data", "Generate sample images (digits, synthetic shapes).")
    group.command("digits")(digits)
    group.command("shapes")(shapes)


def _image_sink(out_dir: Path | None, container: str | None, settings: Settings) -> dict[str, Any]:
    from infra.blob import BlobStore
    from infra.blob_names import validate_container_name

    if (out_dir is None) == (container is None):
        raise UsageError("give exactly one of --out DIR or --container NAME")
    if container is None:
        return {"out_dir": out_dir}
    validate_container_name(container)  # a one-line error (BlobNameError) before anything is created
    store = BlobStore(settings)
    store.ensure_containers([container])
    return {"upload": lambda name, data: store.upload(container, name, data, content_type="image/png")}


def _write(images: Iterator[tuple[str, bytes]], total: int, out_dir: Path | None, container: str | None) -> None:
    from infra.local.sample_data import write_images

    sink = _image_sink(out_dir, container, get_settings())
    with progress_bar() as progress:
        task = progress.add_task("writing images", total=total)
        counts = write_images(images, on_written=lambda _name: progress.advance(task), **sink)
    print_json({"written": counts, "out": str(out_dir) if out_dir else f"container:{container}"})


def digits(
    out_dir: OutOption = None,
    container: ContainerOption = None,
    size: Annotated[int, typer.Option(min=8, max=512, help="Side of the square RGB images")] = 32,
    holdout: HoldoutOption = 0.2,
) -> None:
    """Write scikit-learn's 1,797 digits as RGB PNGs with a deterministic train / holdout split."""
    from infra.local.sample_data import digits_images

    _write(digits_images(size=size, holdout_fraction=holdout), 1797, out_dir, container)


def shapes(
    out_dir: OutOption = None,
    container: ContainerOption = None,
    count: Annotated[int, typer.Option(min=0, help="Number of images")] = 1000,
    size: Annotated[int, typer.Option(min=8, max=1024, help="Side of the square images")] = 64,
    classes: Annotated[
        str, typer.Option(help="Comma-separated classes: circle,square,triangle,cross")
    ] = "circle,square,triangle,cross",
    weights: Annotated[str | None, typer.Option(help="Comma-separated class weights (balance)")] = None,
    colour: Annotated[str, typer.Option(help="'random' or a colour name / #rrggbb")] = "random",
    background: Annotated[str, typer.Option(help="black, white, gradient, noise or texture")] = "black",
    noise: Annotated[float, typer.Option(min=0.0, max=255.0, help="Gaussian pixel noise std")] = 0.0,
    rotation: Annotated[float, typer.Option(min=0.0, max=180.0, help="Max rotation in degrees")] = 0.0,
    brightness: Annotated[
        float, typer.Option(min=0.05, max=10.0, help="Scale every pixel (lighting drift); 1.0 leaves them")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same images)")] = 0,
    holdout: HoldoutOption = 0.2,
) -> None:
    """Write synthetic shape images, with knobs to create drift between batches."""
    from infra.local.sample_data import ShapeKnobs, shape_images

    try:
        parsed_weights = tuple(float(w) for w in weights.split(",")) if weights else None
    except ValueError as exc:
        raise UsageError(f"--weights must be comma-separated numbers, not {weights!r}") from exc
    knobs = ShapeKnobs(
        count=count,
        size=size,
        classes=tuple(c.strip() for c in classes.split(",") if c.strip()),
        weights=parsed_weights,
        colour=colour,
        background=background,
        noise=noise,
        rotation=rotation,
        brightness=brightness,
        seed=seed,
        holdout_fraction=holdout,
    )
    knobs.validate()
    _write(shape_images(knobs), count, out_dir, container)
