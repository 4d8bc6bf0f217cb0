"""``lakesight bench score|events|train|serve|drift|labeling``: benchmarks that print JSON figures.

The cross-package set-up lives here, in the composition root: ``bench score`` and ``bench serve``
register the model they measure (training's CNN or a tiny one) and hand the stream's or the model
server's benchmark a registered champion; ``bench train`` ingests the digits with the ingest
stream and hands training a lake.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from infra.cli._output import print_json, say, stdout_to_stderr, sub_app
from infra.cli.training import (
    BatchSizeOption,
    EpochsOption,
    FeedOption,
    MixedPrecisionOption,
    ModelOption,
    StrategyOption,
    train_options,
)
from infra.errors import UsageError
from infra.settings import LAKE_ENGINES, Settings, get_settings

BENCH_MODELS = ("default", "tiny")
CLEAN_SOURCES = ("archive", "off")
DIGIT_CLASSES = [str(d) for d in range(10)]


def register(app: typer.Typer) -> None:
    group = sub_app("bench", "Benchmarks that print JSON figures.")
    group.command("score")(bench_score)
    group.command("events")(bench_events)
    group.command("train")(bench_train)
    group.command("serve")(bench_serve)
    group.command("drift")(bench_drift)
    group.command("labeling")(bench_labeling)


def run_score_bench(
    settings: Settings,
    *,
    model: str = "default",
    shadow: bool = False,
    engines: list[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Register ``model`` as champion in a fresh bench state, then run every phase of the stream's benchmark.

    With ``shadow``, the same network with other weights becomes the challenger for the shadow pass.
    """
    from infra.registry import CHALLENGER
    from streams.bench import score as bench
    from training.bench.toy_models import build_keras, register_champion, register_version

    if model not in BENCH_MODELS:
        raise UsageError(f"--model must be one of {', '.join(BENCH_MODELS)}, not {model!r}")
    base = bench.bench_state(settings)
    log = options.get("log", say)
    log(f"registering the {model} model")
    keras_model = build_keras(model, bench.IMAGE_SIZE, len(bench.CLASSES))
    version = register_champion(base, keras_model, class_names=bench.CLASSES, image_size=bench.IMAGE_SIZE)

    def add_challenger(target: Settings) -> str:
        challenger = build_keras(model, bench.IMAGE_SIZE, len(bench.CLASSES), seed=1)
        return register_version(
            target, challenger, class_names=bench.CLASSES, image_size=bench.IMAGE_SIZE, alias=CHALLENGER
        )

    if shadow:
        options["add_challenger"] = add_challenger
    if engines:
        return bench.bench_engines(base, engines, model={"kind": model, "version": version}, **options)
    return bench.bench_score(base, model={"kind": model, "version": version}, **options)


def bench_score(
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
    shadow: Annotated[
        bool, typer.Option("--shadow", help="Also run the throughput pass with a challenger shadow-scoring")
    ] = False,
    shadow_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="With --shadow: the share of images the challenger scores")
    ] = 1.0,
    shadow_rounds: Annotated[
        int, typer.Option(min=1, help="With --shadow: passes with shadow off, then on, this many times")
    ] = 3,
    engine: Annotated[
        list[str] | None,
        typer.Option(
            help="Lake engine to measure (delta-rs, spark); repeat it to run each in turn and print them side by "
            "side. Default: the configured engine alone"
        ),
    ] = None,
    master: Annotated[str | None, typer.Option(help="Spark master URL (default: the configured one)")] = None,
    photos: Annotated[
        int, typer.Option(min=0, help="JPEGs of 640x480 for the photo profile, where decode dominates; 0 skips it")
    ] = 2000,
    lull_seconds: Annotated[
        float,
        typer.Option(
            min=0,
            help="Idle seconds before the last image of the lull phase (Spark reaps idle workers "
            "after 60 s); 0 skips it",
        ),
    ] = 90.0,
) -> None:
    """Benchmark the scoring stream (throughput and steady state against the physical limit on PNGs and
    photos, latency, the first batch after a lull, MERGE cost, memory; shadow on vs off); print JSON."""
    if clean_source not in CLEAN_SOURCES:
        raise UsageError(f"--clean-source must be one of {', '.join(CLEAN_SOURCES)}")
    unknown = sorted(set(engine or ()) - set(LAKE_ENGINES))
    if unknown:
        raise UsageError(f"--engine must be one of {', '.join(LAKE_ENGINES)}, not {', '.join(unknown)}")
    settings = get_settings()
    if master:
        settings = settings.model_copy(update={"spark_master": master})
    figures = run_score_bench(
        settings,
        engines=list(dict.fromkeys(engine)) if engine else None,
        model=model,
        shadow=shadow,
        shadow_fraction=shadow_fraction,
        shadow_rounds=shadow_rounds,
        images=images,
        offered_per_s=offered,
        latency_s=latency_seconds,
        seed_rows=seed_rows,
        clean_source=clean_source,
        photos=photos,
        lull_s=lull_seconds,
        log=say,
    )
    print_json(figures)


def bench_events(
    events: Annotated[int, typer.Option(min=1, help="Unique BlobCreated events")] = 5000,
    batch: Annotated[
        int, typer.Option(min=1, max=5000, help="Events per request (fewer where a request would pass 1 MB)")
    ] = 50,
    concurrency: Annotated[int, typer.Option(min=1, help="Concurrent publisher clients")] = 4,
    duplicates: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of events delivered twice")] = 0.1,
) -> None:
    """Send BlobCreated batches with the Event Grid SDK to a local webhook; print throughput JSON."""
    from handlers.bench import bench_events as run

    print_json(run(events=events, batch=batch, concurrency=concurrency, duplicate_fraction=duplicates))


def digits_lake(settings: Settings, folder: Path) -> tuple[Settings, Path, int]:
    """A fresh lake under ``folder`` holding the digits' train split (labeled); returns its settings,
    the holdout folder and the number of images ingested."""
    from infra.local.sample_data import digits_images, write_images
    from streams.ingest import ingest

    local = Settings(state_dir=folder / "state", spark_master=settings.spark_master, spark_conf=settings.spark_conf)
    digits = folder / "digits"
    if not (digits / "holdout").is_dir():
        say(f"writing the digits to {digits}")
        write_images(digits_images(), out_dir=digits)
    say("ingesting the train split (labeled)")
    report = ingest(local, str(digits / "train"), labeled=True, classes=DIGIT_CLASSES)
    return local, digits / "holdout", report.inserted


def bench_train(
    epochs: EpochsOption = 25,
    model: ModelOption = "cnn",
    batch_size: BatchSizeOption = 64,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes as Spark barrier tasks (see --strategy)")] = 1,
    strategy: StrategyOption = "tf",
    feed: FeedOption = "arrow",
    mixed_precision: MixedPrecisionOption = False,
    state: Annotated[Path | None, typer.Option(help="Folder for the digits and the bench's own lake/MLflow")] = None,
) -> None:
    """Train on the digits (train split ingested into a fresh lake) and print holdout accuracy, time, img/s."""
    from training.bench.train import bench_train as run

    options = train_options(
        epochs=epochs,
        model=model,
        batch_size=batch_size,
        workers=workers,
        strategy=strategy,
        feed=feed,
        mixed_precision=mixed_precision,
    )
    folder = state or Path(tempfile.mkdtemp(prefix="lakesight-bench-"))
    with stdout_to_stderr():
        local, holdout, ingested = digits_lake(get_settings(), folder)
        figures = run(local, options, holdout=holdout, ingested_images=ingested, progress=say)
    print_json(figures)


SERVE_IMAGE_SIZE = 64
SERVE_CLASSES = ["circle", "square", "triangle", "star"]


def bench_serve(
    seconds: Annotated[float, typer.Option(min=1, help="Seconds of load per case")] = 5.0,
    model: Annotated[str, typer.Option(help="'default' (training's CNN) or 'tiny' (the server's own capacity)")] = (
        "default"
    ),
) -> None:
    """Benchmark lakesight serve-model: one JSON row per concurrency and request size, and the raw model."""
    import numpy as np

    from infra.local.sample_data import png_bytes
    from infra.processes import Service, free_port, lakesight_argv
    from serving.bench import raw_model_images_per_s, run_cases
    from training.bench.toy_models import build_keras, register_champion

    if model not in BENCH_MODELS:
        raise UsageError(f"--model must be one of {', '.join(BENCH_MODELS)}, not {model!r}")
    folder = Path(tempfile.mkdtemp(prefix="lakesight-bench-serve-"))
    settings = Settings(state_dir=folder / "state", model_port=free_port())
    rng = np.random.default_rng(0)
    images = [png_bytes(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(32)]
    with stdout_to_stderr():
        say(f"registering the {model} model")
        keras_model = build_keras(model, SERVE_IMAGE_SIZE, len(SERVE_CLASSES))
        version = register_champion(settings, keras_model, class_names=SERVE_CLASSES, image_size=SERVE_IMAGE_SIZE)
        say("measuring the raw model")
        raw = raw_model_images_per_s(settings, images)
        server = Service("model-server", settings)
        server.spawn(lakesight_argv("serve-model", "--log-level", "warning"), env=settings.to_env())
        try:
            base_url = f"http://127.0.0.1:{settings.model_port}"
            _wait_for_health(base_url, server)
            rows = run_cases(base_url, settings.model_secret(), images, seconds=seconds, progress=say)
        finally:
            server.stop()
    print_json(
        {
            "model": {"kind": model, "version": version, "image_size": SERVE_IMAGE_SIZE},
            "cores": os.cpu_count(),
            "raw_model_images_per_s": raw,
            "cases": [{**row, "ratio_to_raw": round(row["images_per_s"] / raw, 3)} for row in rows],
        }
    )


def _wait_for_health(base_url: str, server: Any, timeout: float = 120.0) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.pid() is None:
            raise UsageError(f"the model server exited; see {server.log_file}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise UsageError(f"the model server did not answer within {timeout:g} s; see {server.log_file}")


def bench_drift(
    windows: Annotated[int, typer.Option(min=1, help="Windows of training-distribution images (false alarms)")] = 20,
    images: Annotated[int, typer.Option(min=20, help="Images per window")] = 100,
    shift_windows: Annotated[int, typer.Option(min=1, help="Windows of each shifted scenario")] = 3,
) -> None:
    """Benchmark the stream's drift monitor: false alarms, windows to detect shifted images, cost per window.

    Trains the default CNN on the shapes generator for ~25 s (the reference distribution), then feeds
    the monitor windows of new default shapes and of darker, brighter, rotated and gradient-background
    ones (docs/DRIFT.md).
    """
    from streams.bench.drift import bench_drift as run
    from training.bench.toy_models import train_shapes_champion

    folder = Path(tempfile.mkdtemp(prefix="lakesight-bench-drift-"))
    settings = Settings(state_dir=folder / "state")
    with stdout_to_stderr():
        say("training the reference model on the shapes generator")
        version = train_shapes_champion(settings)
        figures = run(settings, windows=windows, images=images, shift_windows=shift_windows, log=say)
    print_json({"model_version": version, **figures})


def labeling_config(
    settings: Settings,
    *,
    rounds: int | None = None,
    labels: int | None = None,
    window: int | None = None,
    seeds: int | None = None,
    steps: int | None = None,
    processes: int | None = None,
    quick: bool = False,
    full: bool = False,
    scenarios: list[str] | None = None,
    strategies: list[str] | None = None,
) -> Any:
    """The label-efficiency benchmark's set-up: the headline (or the quick or full grid), the options
    given, and the stream's labeling settings from ``settings``."""
    from infra.core.labeling.strategies import STRATEGIES
    from training.bench.labeling import BenchConfig
    from training.bench.labeling_data import SCENARIOS

    unknown = sorted(set(scenarios or ()) - set(SCENARIOS))
    if unknown:
        raise UsageError(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    unknown = sorted(set(strategies or ()) - set(STRATEGIES))
    if unknown:
        raise UsageError(f"unknown strategy {', '.join(unknown)}; choose from {', '.join(STRATEGIES)}")
    given = {
        "rounds": rounds,
        "labels": labels,
        "window": window,
        "seeds": seeds,
        "steps": steps,
        "processes": processes,
    }
    overrides: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    if full:
        overrides.update(scenarios=SCENARIOS, strategies=STRATEGIES, full=True)
    overrides["min_distance"] = settings.labeling_min_distance
    overrides["max_class_share"] = settings.labeling_max_class_share
    overrides["explore_share"] = settings.labeling_explore_share
    overrides["duplicate_fraction"] = settings.labeling_duplicate_fraction
    overrides["warm_floor"] = settings.labeling_warm_floor
    if scenarios:
        overrides["scenarios"] = tuple(name for name in SCENARIOS if name in scenarios)
    if strategies:
        overrides["strategies"] = tuple(name for name in STRATEGIES if name in strategies)
    config = BenchConfig.quick(**overrides) if quick else BenchConfig(**overrides)
    if config.labels > config.window:
        raise UsageError(f"--window {config.window} is smaller than --labels {config.labels}")
    if config.seeds < 2:
        raise UsageError("--seeds must be at least 2: the intervals resample seeds")
    return config


def bench_labeling(
    rounds: Annotated[int | None, typer.Option(min=1, help="Rounds (windows) after v0 (default 10; quick 2)")] = None,
    labels: Annotated[
        int | None, typer.Option(min=1, help="Labels each strategy sends per round (default 50; quick 10)")
    ] = None,
    window: Annotated[
        int | None, typer.Option(min=1, help="Fresh images per round, seen once (default 250; quick 50)")
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(min=2, help="Paired seeds (data and initial weights) (default 8; quick 2)")
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            min=1, help="Optimizer steps per training, whatever the labeled set's size (default 240; quick 2)"
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Worker processes of one TensorFlow thread each, a source and seed at a time "
            "(default: one per core; 0: all in this process)",
        ),
    ] = None,
    quick: Annotated[bool, typer.Option(help="A tiny version (tests): seconds, figures that mean little")] = False,
    full: Annotated[
        bool, typer.Option(help="The full grid: every strategy in every scenario (with the no-drift controls)")
    ] = False,
    scenario: Annotated[
        list[str] | None,
        typer.Option(help="Run only this scenario (shapes_drift, digits_duplicates, ...); repeatable"),
    ] = None,
    strategy: Annotated[list[str] | None, typer.Option(help="Run only this strategy; repeatable")] = None,
) -> None:
    """Label efficiency of the default labeling strategy against random after drift; print JSON.

    Per seed, v0 is trained on distribution A of a source (shapes, digits); each round is a window of
    fresh images (drifted B, or A in the control) of which each strategy labels --labels with the
    stream's selection (infra.core.labeling: exploration share, pixel near-duplicates, the default's
    cold/warm phase); the model is retrained and scored on a fixed holdout. The figures are paired by
    seed with bootstrap 90 % intervals. LAKESIGHT_LABELING_* settings apply as in the stream.
    Progress goes to stderr; docs/LABELING.md explains the figures.
    """
    from training.bench.labeling import run_label_bench

    config = labeling_config(
        get_settings(),
        rounds=rounds,
        labels=labels,
        window=window,
        seeds=seeds,
        steps=steps,
        processes=processes,
        quick=quick,
        full=full,
        scenarios=scenario,
        strategies=strategy,
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with stdout_to_stderr():
        figures = run_label_bench(config, progress=say)
    print_json(figures)
