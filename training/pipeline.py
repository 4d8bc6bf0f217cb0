"""``train(settings, options)``: the whole retraining step behind ``lakesight train``.

Snapshot (pinned Delta version) -> train (local, multi-worker or a search) -> register the
model version tagged with the Delta version -> evaluate it and the champion on the same test
rows -> promote (or only report, on a dry run). The command, the handlers' launcher, the demo
and the tests all call this one function.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infra import registry
from infra.errors import UsageError
from infra.settings import Settings
from training.data.feed import TEST, TRAIN, VALIDATION, ArrayFeed, Snapshot, TrainingDataError, load_snapshot
from training.evaluation import evaluate_version, promote
from training.model.models import DEFAULT_MODEL, MODELS
from training.run.loop import EpochMetrics, HyperParams, check_batch_splits, fit
from training.run.search import SEARCH_MODELS
from training.run.strategy import ARROW, HOROVOD, LEGACY_NAMES, PETASTORM, TF_DISTRIBUTE, check_available
from training.run.worker import DISTRIBUTED, WorkerJob, WorkerOutcome, log_model
from training.tracking import log_dataset, log_evaluation, run_tags, snapshot_params

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class TrainOptions:
    version: int | None = None  # Delta version of images; latest when None
    epochs: int = 25
    batch_size: int = 64
    model: str = DEFAULT_MODEL
    weights: str | None = None  # local weights file; nothing is downloaded
    mixed_precision: bool = False
    workers: int = 1  # >1: worker processes on Spark barrier tasks, distributed by ``strategy``
    strategy: str = TF_DISTRIBUTE  # tf (MultiWorkerMirroredStrategy) or horovod (the legacy stack)
    feed: str = ARROW  # arrow (Delta snapshot -> Arrow -> tf.data) or petastorm (the legacy stack)
    search: int = 0  # >0: that many random trials as parallel Spark tasks
    search_models: tuple[str, ...] = SEARCH_MODELS
    dry_run: bool = False  # evaluate and report, move no alias
    learning_rate: float = 2e-3
    dropout: float = 0.3
    dense_units: int = 128
    image_size: int | None = None  # from the data when None
    max_steps_per_epoch: int | None = None
    seed: int = 0

    def hyper(self) -> HyperParams:
        return HyperParams(
            model=self.model.lower(),
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            dropout=self.dropout,
            dense_units=self.dense_units,
            weights=self.weights,
            mixed_precision=self.mixed_precision,
            seed=self.seed,
            max_steps_per_epoch=self.max_steps_per_epoch,
        )

    def check(self) -> None:
        """Refuse contradictory or out-of-range options before any work starts."""
        if self.model.lower() not in MODELS:
            raise UsageError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError("epochs and batch size must be at least 1")
        if self.workers < 1 or self.search < 0:
            raise UsageError("workers must be at least 1 and search at least 0")
        if self.workers > 1 and self.search:
            raise UsageError("--workers and --search cannot be combined: a search runs one process per trial")
        check_available(self.strategy, self.feed)
        legacy = [f"--{o} {v}" for o, v in (("strategy", self.strategy), ("feed", self.feed)) if v in LEGACY_NAMES]
        if legacy and self.workers < 2:
            raise UsageError(f"{' and '.join(legacy)} train on Spark barrier tasks: give --workers 2 or more")
        # Before any Spark job: each worker is one replica (a CPU, or one GPU each).
        check_batch_splits(self.batch_size, self.workers)
        unknown = set(self.search_models) - set(MODELS)
        if unknown:
            raise UsageError(f"unknown search models {sorted(unknown)}")


@dataclass
class TrainResult:
    model_version: str
    promoted: bool
    alias: str | None
    accuracy: float
    champion_accuracy: float | None
    run_id: str
    delta_version: int
    champion_version: str | None = None
    reason: str = ""
    mode: str = "local"
    device: str = ""
    seconds: float = 0.0
    train_seconds: float = 0.0
    train_images: int = 0
    val_accuracy: float | None = None
    rows: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def train_images_per_s(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds else 0.0

    def contract(self) -> dict[str, Any]:
        """Exactly the keys the handlers' launcher reads from ``lakesight train --json``."""
        return {
            "model_version": self.model_version,
            "promoted": self.promoted,
            "alias": self.alias,
            "accuracy": self.accuracy,
            "champion_accuracy": self.champion_accuracy,
            "run_id": self.run_id,
            "delta_version": self.delta_version,
        }


def _evaluation_rows(snapshot: Snapshot) -> tuple[list[bytes], list[str], str]:
    """The held-out rows both models are scored on: test, else validation, else all (tiny data)."""
    for split in (TEST, VALIDATION):
        rows = snapshot.indices(split)
        if len(rows):
            return [snapshot.contents[i] for i in rows], [snapshot.labels[i] for i in rows], split
    log.warning("no held-out rows in images@%d: evaluating on the training rows", snapshot.delta_version)
    return list(snapshot.contents), list(snapshot.labels), "all"


def train(settings: Settings, options: TrainOptions | None = None, *, progress: Progress | None = None) -> TrainResult:
    """Train on ``images`` at ``options.version``, register, evaluate and promote. See module doc.

    Raises ``ValueError`` for bad options, :class:`TrainingDataError` when the data cannot be
    trained on and :class:`infra.registry.RegistryError` when MLflow cannot be reached; all
    before any training starts.
    """
    import mlflow

    options = options or TrainOptions()
    options.check()
    say = progress or (lambda message: log.info("%s", message))
    started = time.perf_counter()
    registry.configure_mlflow(settings)
    say("reading the images snapshot")
    snapshot = load_snapshot(settings, version=options.version, image_size=options.image_size)
    train_rows = snapshot.indices(TRAIN)
    if not len(train_rows):
        raise TrainingDataError(f"images@{snapshot.delta_version} has no rows on the train side of the split")
    say(
        f"images@{snapshot.delta_version}: {snapshot.rows} labeled rows {snapshot.split_counts()}, "
        f"{len(snapshot.class_names)} classes, {snapshot.image_size}px, skipped {dict(snapshot.skipped) or 0}"
    )
    eval_contents, eval_truth, eval_split = _evaluation_rows(snapshot)
    hyper = options.hyper()
    mode = "search" if options.search else DISTRIBUTED if options.workers > 1 else "local"
    experiment_id = registry.ensure_experiment(settings, settings.model_name)

    run_name = f"{mode}-{hyper.model}-v{snapshot.delta_version}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        run_id = run.info.run_id
        mlflow.set_tags({**run_tags(snapshot), "mode": mode, "evaluation_split": eval_split})
        mlflow.log_params(
            {
                **hyper.as_params(),
                **snapshot_params(snapshot),
                "workers": options.workers,
                "search": options.search,
                "strategy": options.strategy,
                "feed": options.feed,
            }
        )
        log_dataset(snapshot)
        job = WorkerJob(
            kind=DISTRIBUTED,
            # Pickled into Spark tasks and the workers' job files: no secrets (Settings.for_executors).
            settings=settings.for_executors(),
            hyper=hyper,
            delta_version=snapshot.delta_version,
            image_size=snapshot.image_size,
            class_names=snapshot.class_names,
            train_rows=len(train_rows),
            run_id=run_id,
            register=True,
            input_example=snapshot.contents[int(train_rows[0])],
            name=f"run-{run_id[:8]}",
            strategy=options.strategy,
            feed=options.feed,
        )
        if options.search:
            chosen, outcomes = _train_search(settings, job, options, experiment_id, run_id, say)
        elif options.workers > 1:
            chosen, outcomes = _train_distributed(settings, job, snapshot, options.workers, say)
        else:
            chosen = _train_local(job, snapshot, say)
            outcomes = [chosen]
        version = chosen.model_version
        if version is None:
            raise RuntimeError("training finished without a registered model version")
        registry.set_version_tags(
            settings, version, {registry.TAG_DELTA_VERSION: snapshot.delta_version, "mode": mode, "model": hyper.model}
        )
        say(f"registered {settings.model_name} version {version}; evaluating on {len(eval_truth)} {eval_split} rows")
        new = evaluate_version(settings, version, eval_contents, eval_truth)
        log_evaluation(eval_truth, new.predicted, snapshot.class_names)
        decision = promote(settings, version, eval_contents, eval_truth, new=new, dry_run=options.dry_run)
        rate = _rate(chosen.train_images, chosen.train_seconds)
        mlflow.log_metrics({"train_seconds": chosen.train_seconds, "train_images_per_s": rate})
    result = TrainResult(
        model_version=version,
        promoted=decision.promoted,
        alias=decision.alias,
        accuracy=decision.accuracy,
        champion_accuracy=decision.champion_accuracy,
        run_id=run_id,
        delta_version=snapshot.delta_version,
        champion_version=decision.champion_version,
        reason=decision.reason,
        mode=mode,
        device=chosen.device,
        seconds=time.perf_counter() - started,
        train_seconds=chosen.train_seconds,
        train_images=chosen.train_images,
        val_accuracy=chosen.val_accuracy,
        rows=snapshot.split_counts(),
        skipped=dict(snapshot.skipped),
        workers=[_outcome_summary(o) for o in outcomes],
    )
    say(
        f"version {version}: test accuracy {decision.accuracy:.4f}"
        + (f" vs champion {decision.champion_accuracy:.4f}" if decision.champion_accuracy is not None else "")
        + f" -> {'dry run, no alias' if options.dry_run else decision.alias or registry.REJECTED} ({decision.reason})"
    )
    return result


def _rate(images: int, seconds: float) -> float:
    return images / seconds if seconds else 0.0


def _outcome_summary(outcome: WorkerOutcome) -> dict[str, Any]:
    return {
        "name": outcome.name,
        "worker_index": outcome.worker_index,
        "ok": outcome.ok,
        "weights_digest": outcome.weights_digest,
        "val_accuracy": outcome.val_accuracy,
        "model": outcome.hyper.model if outcome.hyper else None,
        "train_images": outcome.train_images,
    }


def _epoch_message(metrics: EpochMetrics, epochs: int) -> str:
    text = f"epoch {metrics.epoch + 1}/{epochs}: loss {metrics.loss:.4f} accuracy {metrics.accuracy:.4f}"
    if metrics.val_accuracy is not None:
        text += f" val_accuracy {metrics.val_accuracy:.4f}"
    return text + f" ({metrics.images / metrics.seconds:.0f} img/s)"


def _train_local(job: WorkerJob, snapshot: Snapshot, say: Progress) -> WorkerOutcome:
    """Train in this process (GPU when TensorFlow sees one) and log/register to the active run."""
    import mlflow

    from training.run.loop import weights_digest
    from training.run.strategy import LocalStrategy, setup_device

    device = setup_device(mixed_precision=job.hyper.mixed_precision)
    say(f"training {job.hyper.model} for {job.hyper.epochs} epochs on {device}")
    mlflow.set_tag("device", device)
    train_idx, val_idx = snapshot.indices(TRAIN), snapshot.indices(VALIDATION)

    def on_epoch(metrics: EpochMetrics) -> None:
        mlflow.log_metrics(metrics.as_metrics(), step=metrics.epoch)
        say(_epoch_message(metrics, job.hyper.epochs))

    validation = (snapshot.decoded(val_idx), snapshot.label_ids(val_idx))
    result = fit(
        ArrayFeed(snapshot.decoded(train_idx), snapshot.label_ids(train_idx)),
        validation,
        num_classes=len(snapshot.class_names),
        hyper=job.hyper,
        strategy=LocalStrategy(),
        on_epoch=on_epoch,
    )
    say("logging and registering the model")
    info = log_model(job, result.model, reference_images=validation[0])
    return WorkerOutcome(
        name=job.name,
        device=device,
        weights_digest=weights_digest(result.model),
        train_images=result.train_images,
        train_seconds=result.train_seconds,
        val_accuracy=result.val_accuracy,
        history=result.history,
        model_uri=info.model_uri,
        model_version=str(info.registered_model_version),
        run_id=job.run_id,
        hyper=job.hyper,
    )


_STRATEGY_NAMES = {TF_DISTRIBUTE: "MultiWorkerMirroredStrategy", HOROVOD: "Horovod (Gloo)"}


def _train_distributed(
    settings: Settings, job: WorkerJob, snapshot: Snapshot, workers: int, say: Progress
) -> tuple[WorkerOutcome, list[WorkerOutcome]]:
    import mlflow

    from training.run.distributed import DistributedError, train_distributed

    if job.feed == PETASTORM:
        from training.legacy.petastorm_feed import convert_snapshot

        say(f"materialising images@{snapshot.delta_version} through Petastorm's Spark converter")
        job.feed_source = convert_snapshot(settings, snapshot, workers=workers, seed=job.hyper.seed)
        mlflow.log_params({"petastorm_train_rows": job.feed_source.train_rows})
    say(
        f"training {job.hyper.model} on {workers} {_STRATEGY_NAMES[job.strategy]} workers (Spark barrier tasks), "
        f"fed by {job.feed}"
    )
    try:
        outcomes = train_distributed(settings, job, workers)
    finally:
        if job.feed_source is not None:
            job.feed_source.delete()
    chief = outcomes[0]
    digests = {o.weights_digest for o in outcomes}
    mlflow.set_tags({"device": chief.device, "workers_identical_weights": str(len(digests) == 1)})
    if len(digests) != 1:
        raise DistributedError(f"workers ended with different weights: {[o.weights_digest[:12] for o in outcomes]}")
    return chief, outcomes


def _train_search(
    settings: Settings, job: WorkerJob, options: TrainOptions, experiment_id: str, run_id: str, say: Progress
) -> tuple[WorkerOutcome, list[WorkerOutcome]]:
    import mlflow

    from training.run.search import best_trial, run_search, sample_trials

    trials = sample_trials(options.search, job.hyper, seed=options.seed, models=options.search_models)
    say(f"searching: {len(trials)} trials as parallel Spark tasks")
    outcomes = run_search(settings, job, trials, experiment_id=experiment_id, parent_run_id=run_id)
    best = best_trial(outcomes)
    assert best.model_uri is not None and best.hyper is not None
    registered = mlflow.register_model(best.model_uri, settings.model_name)
    best.model_version = str(registered.version)
    mlflow.set_tags({"best_trial": best.name, "best_trial_run_id": best.run_id or "", "device": best.device})
    mlflow.log_params({f"best_{k}": v for k, v in best.hyper.as_params().items()})
    mlflow.log_metrics({"best_val_accuracy": best.val_accuracy or 0.0, "trials_finished": sum(o.ok for o in outcomes)})
    say(f"best trial {best.name} ({best.hyper.model}): val_accuracy {best.val_accuracy}; version {best.model_version}")
    return best, outcomes
