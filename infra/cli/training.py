"""``lakesight train`` and ``lakesight models``: training, registration, promotion, and the registry's view."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from infra.cli._output import out, print_json, render_rows, say, stdout_to_stderr
from infra.settings import get_settings

EpochsOption = Annotated[int, typer.Option(min=1, help="Training epochs")]
ModelOption = Annotated[str, typer.Option(help="cnn | mobilenetv3small | efficientnetb0 | resnet50")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Global batch size")]
MixedPrecisionOption = Annotated[bool, typer.Option("--mixed-precision", help="float16 compute on a GPU")]
StrategyOption = Annotated[
    str,
    typer.Option(
        help="How --workers share the training: tf (MultiWorkerMirroredStrategy) or horovod (Gloo all-reduce; "
        "the legacy stack, make install-legacy)"
    ),
]
FeedOption = Annotated[
    str,
    typer.Option(
        help="How rows of the pinned Delta version reach the workers: arrow (snapshot -> Arrow -> tf.data) or "
        "petastorm (Petastorm's Spark converter; the legacy stack)"
    ),
]


def register(app: typer.Typer) -> None:
    app.command()(train)
    group = typer.Typer(
        help="The registered model's versions; 'decide' judges the challenger on live labels, 'rollback' moves "
        "the champion back."
    )
    group.callback(invoke_without_command=True)(models)
    group.command("decide")(decide)
    group.command("rollback")(rollback)
    app.add_typer(group, name="models")


def train_options(**values: Any) -> Any:
    """Checked :class:`training.pipeline.TrainOptions` from the options given (None: the default)."""
    from training.pipeline import TrainOptions

    options = TrainOptions(**{k: v for k, v in values.items() if v is not None})
    options.check()
    return options


def train(
    version: Annotated[
        int | None, typer.Option("--version", min=0, help="Delta version of images (default: latest)")
    ] = None,
    epochs: EpochsOption = 25,
    batch_size: BatchSizeOption = 64,
    model: ModelOption = "cnn",
    weights: Annotated[Path | None, typer.Option(help="Local weights file for the model (never downloaded)")] = None,
    mixed_precision: MixedPrecisionOption = False,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes as Spark barrier tasks (see --strategy)")] = 1,
    strategy: StrategyOption = "tf",
    feed: FeedOption = "arrow",
    search: Annotated[int, typer.Option(min=0, help="Random hyperparameter trials as parallel Spark tasks")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Register and evaluate, but move no alias")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON line on stdout (for launchers)")] = False,
) -> None:
    """Train on the images table, register the model, evaluate it against the champion and promote it."""
    from training.pipeline import train as run_train

    settings = get_settings()
    options = train_options(
        version=version,
        epochs=epochs,
        batch_size=batch_size,
        model=model,
        weights=str(weights) if weights else None,
        mixed_precision=mixed_precision,
        workers=workers,
        strategy=strategy,
        feed=feed,
        search=search,
        dry_run=dry_run,
    )
    with stdout_to_stderr():
        result = run_train(settings, options, progress=say)
    if as_json:
        sys.stdout.write(json.dumps(result.contract(), default=str) + "\n")
        sys.stdout.flush()
        return
    rows = [{"what": k, "value": str(v)} for k, v in result.contract().items()]
    rows += [
        {"what": "reason", "value": result.reason},
        {"what": "device", "value": result.device},
        {"what": "train images/s", "value": f"{result.train_images_per_s:.1f}"},
    ]
    render_rows("training", rows)


def models(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """List the registered model's versions with their aliases, test scores and Delta version."""
    from infra.registry import list_versions

    if ctx.invoked_subcommand is not None:
        return

    settings = get_settings()
    rows = list_versions(settings)
    if as_json:
        print_json(rows)
    else:
        render_rows(f"model versions of {settings.model_name}", rows)


def decide(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Judge the challenger on live labels now: waiting, refused or promoted (what every label merge does)."""
    from infra.core.promotion import decide as decide_now
    from infra.lake import Lake

    settings = get_settings()
    decision = decide_now(settings, Lake(settings))
    shown: dict[str, Any] = {"challenger": None} if decision is None else decision.as_dict()
    if as_json:
        print_json(shown)
    elif decision is None:
        out.print(f"model {settings.model_name!r} has no challenger waiting for live evidence")
    else:
        rows = [{"what": key, "value": str(value)} for key, value in shown.items()]
        render_rows(f"challenger version {decision.challenger_version}", rows)


def rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded on the version rolled back from)")],
    to: Annotated[str | None, typer.Option(help="Version to make champion (default: the previous champion)")] = None,
) -> None:
    """Move the champion alias back; the running stream and model server follow within champion_check_s."""
    from infra.core.promotion import rollback as move_back

    settings = get_settings()
    done = move_back(settings, reason=reason, to=to)
    print_json(
        {
            "model_name": settings.model_name,
            "from_version": done.from_version,
            "champion": done.to_version,
            "reason": done.reason,
            "picked_up_within_s": settings.champion_check_s,
        }
    )
