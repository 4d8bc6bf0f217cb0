"""The ``lakesight`` command. Each subcommand reads its options and calls one function.

Heavy modules (Spark, TensorFlow, the jobs in ``streams``/``training``/``handlers``) are
imported inside the commands, so ``--help`` is instant and ``infra`` keeps the dependency
direction of DESIGN.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from infra.settings import Settings, get_settings

console = Console(stderr=True, soft_wrap=True)
out = Console()

app = typer.Typer(
    name="lakesight",
    help="Event-driven deep-learning image classification on a lakehouse.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
data_app = typer.Typer(help="Generate sample images (digits, synthetic shapes).", no_args_is_help=True)
stack_app = typer.Typer(help="Start, stop and inspect the local services (Azurite).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print JSON figures.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(stack_app, name="stack")
app.add_typer(bench_app, name="bench")


def fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def settings_or_exit() -> Settings:
    try:
        return get_settings()
    except ValueError as exc:
        fail(f"invalid settings: {exc}")
        raise  # unreachable; keeps type checkers content


def print_json(payload: Any) -> None:
    out.print_json(json.dumps(payload, default=str))


def progress_bar(total: int | None = None, description: str = "working"):
    """A rich progress bar on stderr, shared by long commands."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def render_rows(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        out.print(f"{title}: none")
        return
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    out.print(table)


# ------------------------------------------------------------------------------------------------
# config
@app.command()
def config(
    reference: Annotated[bool, typer.Option("--reference", help="Print every setting as a Markdown table")] = False,
) -> None:
    """Print the effective settings (secrets masked), or the reference of every setting."""
    if reference:
        from infra.settings import reference_markdown

        out.print(reference_markdown(), markup=False, highlight=False, soft_wrap=True)
        return
    print_json(settings_or_exit().public_dict())


# ------------------------------------------------------------------------------------------------
# data
def _image_sink(out_dir: Path | None, container: str | None, settings: Settings):
    from infra.blob import BlobStore

    if (out_dir is None) == (container is None):
        fail("give exactly one of --out DIR or --container NAME")
    if container is None:
        return {"out_dir": out_dir}
    try:
        settings.model_validate({**settings.model_dump(), "images_container": container})
    except ValueError:
        fail(f"{container!r} is not a valid blob container name (3-63 lowercase letters, digits, '-')")
    store = BlobStore(settings)
    store.ensure_containers([container])
    return {"upload": lambda name, data: store.upload(container, name, data, content_type="image/png")}


def _write_with_progress(images, total: int, sink: dict[str, Any]) -> dict[str, int]:
    from infra.sample_data import write_images

    with progress_bar() as progress:
        task = progress.add_task("writing images", total=total)
        return write_images(images, on_written=lambda _name: progress.advance(task), **sink)


@data_app.command("digits")
def data_digits(
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder to write <split>/<label>/<name>.png")] = None,
    container: Annotated[str | None, typer.Option(help="Upload to this blob container instead")] = None,
    size: Annotated[int, typer.Option(min=8, max=512, help="Side of the square RGB images")] = 32,
    holdout: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share kept as holdout")] = 0.2,
) -> None:
    """Write scikit-learn's 1,797 digits as RGB PNGs with a deterministic train / holdout split."""
    from infra.sample_data import digits_images

    settings = settings_or_exit()
    counts = _write_with_progress(
        digits_images(size=size, holdout_fraction=holdout), 1797, _image_sink(out_dir, container, settings)
    )
    print_json({"written": counts, "out": str(out_dir) if out_dir else f"container:{container}"})


@data_app.command("shapes")
def data_shapes(
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder to write <split>/<label>/<name>.png")] = None,
    container: Annotated[str | None, typer.Option(help="Upload to this blob container instead")] = None,
    count: Annotated[int, typer.Option(min=0, help="Number of images")] = 1000,
    size: Annotated[int, typer.Option(min=8, max=1024, help="Side of the square images")] = 64,
    classes: Annotated[str, typer.Option(help="Comma-separated classes: circle,square,triangle,cross")] = (
        "circle,square,triangle,cross"
    ),
    weights: Annotated[str | None, typer.Option(help="Comma-separated class weights (balance)")] = None,
    colour: Annotated[str, typer.Option(help="'random' or a colour name / #rrggbb")] = "random",
    background: Annotated[str, typer.Option(help="black, white, gradient or noise")] = "black",
    noise: Annotated[float, typer.Option(min=0.0, max=255.0, help="Gaussian pixel noise std")] = 0.0,
    rotation: Annotated[float, typer.Option(min=0.0, max=180.0, help="Max rotation in degrees")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same images)")] = 0,
    holdout: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share kept as holdout")] = 0.2,
) -> None:
    """Write synthetic shape images, with knobs to create drift between batches."""
    from infra.sample_data import ShapeKnobs, shape_images

    settings = settings_or_exit()
    try:
        knobs = ShapeKnobs(
            count=count,
            size=size,
            classes=tuple(c.strip() for c in classes.split(",") if c.strip()),
            weights=tuple(float(w) for w in weights.split(",")) if weights else None,
            colour=colour,
            background=background,
            noise=noise,
            rotation=rotation,
            seed=seed,
            holdout_fraction=holdout,
        )
        knobs.validate()
    except ValueError as exc:
        fail(str(exc))
    counts = _write_with_progress(shape_images(knobs), count, _image_sink(out_dir, container, settings))
    print_json({"written": counts, "out": str(out_dir) if out_dir else f"container:{container}"})


# ------------------------------------------------------------------------------------------------
# ingest and tables
@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="Folder (or abfss:// URI) of image files")],
    labeled: Annotated[bool, typer.Option("--labeled", help="Take each image's label from its folder name")] = False,
    classes: Annotated[str | None, typer.Option(help="Comma-separated known classes; others are reported")] = None,
    glob: Annotated[str, typer.Option(help="File name filter")] = "*.{png,jpg,jpeg,gif,bmp,webp,tif,tiff}",
    max_files_per_trigger: Annotated[int, typer.Option(min=1, help="Files per micro-batch")] = 2000,
) -> None:
    """Ingest image files not seen before into the images table (a trigger-once stream)."""
    from infra.lake import LakeError
    from streams.ingest import IngestError
    from streams.ingest import ingest as run_ingest

    settings = settings_or_exit()
    known = [c.strip() for c in classes.split(",")] if classes else None
    try:
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
    except (IngestError, LakeError) as exc:
        fail(str(exc))
    if report.unknown_labels:
        console.print(f"[yellow]not a known class (ingested without label):[/] {dict(report.unknown_labels)}")
    print_json(report.as_dict())


@app.command()
def tables() -> None:
    """Show the lake's tables with their version, row and file counts."""
    from infra.lake import Lake, LakeError

    try:
        rows = Lake(settings_or_exit()).summary()
    except LakeError as exc:
        fail(str(exc))
    render_rows("tables", rows)


# ------------------------------------------------------------------------------------------------
# stack
@stack_app.command("start")
def stack_start() -> None:
    """Start Azurite (from the project's npm install) and create the containers."""
    from infra.stack import Azurite, StackError, check_java

    settings = settings_or_exit()
    try:
        check_java()
        pid = Azurite(settings).start()
    except StackError as exc:
        fail(str(exc))
    console.print(f"azurite running (pid {pid}) on port {settings.blob_port}")


@stack_app.command("stop")
def stack_stop() -> None:
    """Stop the local services started by 'stack start'."""
    from infra.stack import Azurite

    stopped = Azurite(settings_or_exit()).stop()
    console.print("azurite stopped" if stopped else "azurite was not running")


@stack_app.command("status")
def stack_status_cmd() -> None:
    """Show whether the local services are running."""
    from infra.stack import stack_status

    render_rows("local stack", stack_status(settings_or_exit()))


# ------------------------------------------------------------------------------------------------
# event handlers (handlers/)
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings.handler_host)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: settings.handler_port)")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the Event Grid webhook (POST /api/events, GET /healthz) with uvicorn."""
    from handlers.server import serve as run_server

    run_server(settings_or_exit(), host=host, port=port, log_level=log_level)


@app.command()
def relay(
    url: Annotated[str | None, typer.Option(help="Handler events URL (default: from settings)")] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between container polls")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Poll once, print the count and exit")] = False,
) -> None:
    """Announce new Azurite blobs to the handler as Event Grid BlobCreated events (each once)."""
    import logging

    from handlers.relay import Relay

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    watcher = Relay(settings_or_exit(), endpoint=url)
    try:
        if once:
            print_json({"announced": watcher.poll()})
        else:
            console.print(f"relaying {watcher.containers} to {watcher.endpoint} (Ctrl-C stops)")
            watcher.run(interval=interval)
    except KeyboardInterrupt:
        pass
    finally:
        watcher.close()


@bench_app.command("events")
def bench_events_cmd(
    events: Annotated[int, typer.Option(min=1, help="Unique BlobCreated events")] = 5000,
    batch: Annotated[int, typer.Option(min=1, max=5000, help="Events per request")] = 50,
    concurrency: Annotated[int, typer.Option(min=1, help="Concurrent publisher clients")] = 4,
    duplicates: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of events delivered twice")] = 0.1,
) -> None:
    """Send BlobCreated batches with the Event Grid SDK to a local webhook; print throughput JSON."""
    from handlers.bench import bench_events

    print_json(bench_events(events=events, batch=batch, concurrency=concurrency, duplicate_fraction=duplicates))


# ------------------------------------------------------------------------------------------------
# demo
@app.command()
def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Run the whole story on the digits data: stream, label hand-off, retraining, promotion (≈5-10 min)."""
    from infra.demo import DemoError, run_demo
    from infra.stack import StackError

    settings = settings_or_exit()
    try:
        report = run_demo(settings, console)
    except (DemoError, StackError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; every demo process was stopped", code=130)
    if as_json:
        print_json(report.__dict__)
        return
    render_rows("demo summary", [
        {"what": "images uploaded / scored", "value": f"{report.images_uploaded} / {report.images_scored}"},
        {"what": "sent to labeling / labels merged", "value": f"{report.sent_to_labeling} / {report.labels_merged}"},
        {"what": "v1 holdout accuracy", "value": f"{report.v1_holdout_accuracy} (version {report.v1})"},
        {"what": "v2 holdout accuracy", "value": f"{report.v2_holdout_accuracy} (version {report.v2})"},
        {"what": "champion now", "value": str(report.champion)},
        {"what": "last images scored by version", "value": json.dumps(report.final_wave_versions)},
        {"what": "retraining decisions", "value": str(len(report.decisions))},
        {"what": "total time", "value": f"{report.seconds}s"},
    ])
    out.print(f"state: {report.state_dir}  ·  MLflow UI: mlflow ui --backend-store-uri "
              f"sqlite:///{report.state_dir}/mlflow.db  ·  status page: lakesight serve, then http://127.0.0.1:"
              f"{settings.handler_port}/")


# ------------------------------------------------------------------------------------------------
# always-on local deployment
@app.command()
def up() -> None:
    """Start every local service (Azurite, MLflow UI, handler, relay, scoring stream) under a supervisor."""
    from infra.stack import StackError, check_java
    from infra.supervisor import up as start_supervisor

    settings = settings_or_exit()
    try:
        check_java()
        pid = start_supervisor(settings)
    except StackError as exc:
        fail(str(exc))
    console.print(f"supervisor running (pid {pid}); logs in {settings.logs_dir}; 'lakesight status' to watch")


@app.command()
def down() -> None:
    """Stop the supervisor and every service it runs."""
    from infra.supervisor import down as stop_supervisor

    stopped = stop_supervisor(settings_or_exit())
    console.print("stopped" if stopped else "nothing was running")


@app.command(hidden=True)
def supervise() -> None:
    """Run the supervisor in the foreground (what 'up' starts detached)."""
    from infra.supervisor import serve_forever

    serve_forever(settings_or_exit())


# ------------------------------------------------------------------------------------------------
# scoring stream (streams/)
@app.command()
def score(
    source: Annotated[str, typer.Option(help="A folder of images, or 'arrivals' for blob arrival records")] = (
        "arrivals"
    ),
    once: Annotated[bool, typer.Option("--once", help="Score what is there now (availableNow) and exit")] = False,
    trigger: Annotated[float | None, typer.Option(min=0.05, help="Seconds between micro-batches")] = None,
    glob: Annotated[str, typer.Option(help="File name filter (folder source)")] = (
        "*.{png,jpg,jpeg,gif,bmp,webp,tif,tiff}"
    ),
) -> None:
    """Score new images with the champion model into the images table until stopped (SIGTERM/Ctrl-C).

    Left running, set LAKESIGHT_SCORE_CLEAN_SOURCE=archive (with LAKESIGHT_SCORE_ARCHIVE_DIR) or
    delete: scored files then leave the source folder, and the stream starts a fresh checkpoint
    every LAKESIGHT_SCORE_CHECKPOINT_MAX_FILES files, so listing time and memory stay bounded.
    """
    import logging

    from infra.lake import LakeError
    from streams.score import ScoreError, run_scoring

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    settings = settings_or_exit()
    try:
        report = run_scoring(
            settings, source=None if source == "arrivals" else source, once=once, glob=glob, trigger_s=trigger
        )
    except (ScoreError, LakeError) as exc:
        fail(str(exc))
    print_json(report.as_dict())


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole snapshot as JSON")] = False,
) -> None:
    """Show the live pipeline: services, stream progress and backlog, champion, pending labels, decisions."""
    from infra.status import snapshot

    snap = snapshot(settings_or_exit())
    if as_json:
        print_json(snap)
        return
    stream = snap.get("stream") or {}
    progress = stream.get("last_progress") or {}
    images = snap.get("images") or {}
    models = snap.get("models") or {}
    render_rows("pipeline", [
        {"what": "scoring stream",
         "value": f"{stream.get('state', 'never ran')} (model {stream.get('model_version')})"},
        {"what": "last batch",
         "value": f"{progress.get('input_rows')} rows, {progress.get('processed_rows_per_s')} rows/s, "
                  f"backlog {progress.get('backlog')}"},
        {"what": "images / scored / errors", "value": f"{images.get('images')} / {images.get('scored')} / "
                                                     f"{images.get('errors')}"},
        {"what": "pending labels / human labels", "value": f"{images.get('pending_labels')} / "
                                                          f"{images.get('human_labels')}"},
        {"what": "champion", "value": str(models.get("champion"))},
    ])
    services = (snap.get("services") or {}).get("children") or []
    render_rows("services", [{k: c.get(k) for k in ("name", "pid", "restarts", "last_exit")} for c in services])
    decisions = snap.get("decisions") or []
    columns = ("decided_at", "trigger", "retrain", "new_labels", "psi", "reasons")
    render_rows("recent retraining decisions", [{k: d.get(k) for k in columns} for d in decisions[:5]])


@bench_app.command("score")
def bench_score_cmd(
    images: Annotated[int, typer.Option(min=100, help="Images to score end to end")] = 20000,
    model: Annotated[str, typer.Option(help="'default' (training's CNN) or 'tiny' (pipeline capacity)")] = "default",
    offered: Annotated[float, typer.Option(min=1, help="Images/s offered in the latency phase")] = 100.0,
    latency_seconds: Annotated[
        float, typer.Option(min=2, help="Seconds of steady load on the continuous stream; make it long for a soak")
    ] = 20.0,
    seed_rows: Annotated[int, typer.Option(min=0, help="Rows seeded for the large-table MERGE phase")] = 200_000,
    clean_source: Annotated[
        str, typer.Option(help="Continuous phase: 'archive' scored files (as an always-on stream should) or 'off'")
    ] = "archive",
) -> None:
    """Benchmark the scoring stream (throughput, latency, MERGE cost, memory); print JSON."""
    from streams.bench import bench_score

    if model not in ("default", "tiny"):
        fail("--model must be 'default' or 'tiny'")
    if clean_source not in ("archive", "off"):
        fail("--clean-source must be 'archive' or 'off'")
    print_json(
        bench_score(
            settings_or_exit(),
            images=images,
            model=model,
            offered_per_s=offered,
            latency_s=latency_seconds,
            seed_rows=seed_rows,
            clean_source=clean_source,
            log=lambda message: console.print(f"[dim]{message}[/]"),
        )
    )


# ------------------------------------------------------------------------------------------------
# training (training/)
def _stdout_to_stderr():
    """While training runs, send everything written to stdout (ours, TensorFlow's, Spark's) to
    stderr, so that ``--json`` leaves exactly one line on stdout."""
    import contextlib
    import os

    @contextlib.contextmanager
    def redirect():
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)

    return redirect()


def _train_options(**values: Any):
    from training.pipeline import TrainOptions

    options = TrainOptions(**{k: v for k, v in values.items() if v is not None})
    try:
        options.check()
    except ValueError as exc:
        fail(str(exc))
    return options


def _training_errors() -> tuple[type[BaseException], ...]:
    from infra.lake import LakeError
    from infra.registry import RegistryError
    from training.distributed import DistributedError
    from training.search import SearchError
    from training.worker import WorkerError

    return (ValueError, RegistryError, LakeError, DistributedError, SearchError, WorkerError)


@app.command()
def train(
    version: Annotated[
        int | None, typer.Option("--version", min=0, help="Delta version of images (default: latest)")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs")] = 25,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Global batch size")] = 64,
    model: Annotated[str, typer.Option(help="cnn | mobilenetv3small | efficientnetb0 | resnet50")] = "cnn",
    weights: Annotated[Path | None, typer.Option(help="Local weights file for the model (never downloaded)")] = None,
    mixed_precision: Annotated[bool, typer.Option("--mixed-precision", help="float16 compute on a GPU")] = False,
    workers: Annotated[int, typer.Option(min=1, help="MultiWorkerMirroredStrategy workers as Spark barrier tasks")] = 1,
    search: Annotated[int, typer.Option(min=0, help="Random hyperparameter trials as parallel Spark tasks")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Register and evaluate, but move no alias")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line on stdout (for launchers)")] = False,
) -> None:
    """Train on the images table, register the model, evaluate it against the champion and promote it."""
    from training.pipeline import train as run_train

    settings = settings_or_exit()
    options = _train_options(
        version=version,
        epochs=epochs,
        batch_size=batch_size,
        model=model,
        weights=str(weights) if weights else None,
        mixed_precision=mixed_precision,
        workers=workers,
        search=search,
        dry_run=dry_run,
    )
    try:
        with _stdout_to_stderr():
            result = run_train(settings, options, progress=lambda message: console.print(f"[dim]{message}[/]"))
    except _training_errors() as exc:
        fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(result.contract(), default=str) + "\n")
        sys.stdout.flush()
        return
    render_rows("training", [{"what": k, "value": str(v)} for k, v in result.contract().items()]
                + [{"what": "reason", "value": result.reason}, {"what": "device", "value": result.device},
                   {"what": "train images/s", "value": f"{result.train_images_per_s:.1f}"}])


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """List the registered model's versions with their aliases, test scores and Delta version."""
    from infra.registry import RegistryError, list_versions

    settings = settings_or_exit()
    try:
        rows = list_versions(settings)
    except RegistryError as exc:
        fail(str(exc))
    if as_json:
        print_json(rows)
    else:
        render_rows(f"model versions of {settings.model_name}", rows)


@bench_app.command("train")
def bench_train_cmd(
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs")] = 25,
    model: Annotated[str, typer.Option(help="cnn | mobilenetv3small | efficientnetb0 | resnet50")] = "cnn",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Global batch size")] = 64,
    workers: Annotated[int, typer.Option(min=1, help="MultiWorkerMirroredStrategy workers")] = 1,
    mixed_precision: Annotated[bool, typer.Option("--mixed-precision", help="float16 compute on a GPU")] = False,
    state: Annotated[Path | None, typer.Option(help="Folder for the digits and the bench's own lake/MLflow")] = None,
) -> None:
    """Train on the digits (train split ingested into a fresh lake) and print holdout accuracy, time, img/s."""
    from training.bench import bench_train

    settings = settings_or_exit()
    options = _train_options(
        epochs=epochs, model=model, batch_size=batch_size, workers=workers, mixed_precision=mixed_precision
    )
    try:
        with _stdout_to_stderr():
            figures = bench_train(
                settings, options, state_dir=state, progress=lambda message: console.print(f"[dim]{message}[/]")
            )
    except _training_errors() as exc:
        fail(str(exc))
    print_json(figures)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
