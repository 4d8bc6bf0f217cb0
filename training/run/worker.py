"""One training process launched from a Spark task: a multi-worker member or a search trial.

Each runs in a fresh interpreter (``python -m training.run.worker JOB RESULT``) rather than inside
the Spark Python worker: TensorFlow configures collective ops once per process, and Spark
reuses its Python workers, so a second distributed run in the same worker would fail. The
process reads the pinned Delta version itself, keeps its shard, trains, and (chief / trial)
logs to MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.errors import LakesightError
from infra.processes import log_tail
from infra.registry import TF_THREADS_ENV
from infra.settings import Settings
from training.run.loop import EpochMetrics, HyperParams
from training.run.strategy import ARROW, PETASTORM, TF_DISTRIBUTE, setup_device, worker_strategy

log = logging.getLogger(__name__)

DISTRIBUTED = "distributed"
TRIAL = "trial"
# A training process's log stays on the executor that ran it; what comes back to the driver:
# the end of its log with a failure (its traceback, whole), and with its outcome (its log lines).
ERROR_TAIL_BYTES = 8 * 1024
LOG_TAIL_BYTES = 64 * 1024


class WorkerError(LakesightError, RuntimeError):
    """A training process failed; the message holds the tail of its log."""


@dataclass
class WorkerJob:
    kind: str  # DISTRIBUTED or TRIAL
    settings: Settings
    hyper: HyperParams
    delta_version: int
    image_size: int
    class_names: list[str]
    train_rows: int
    run_id: str | None = None  # the MLflow run the chief (or the trial) logs to
    register: bool = False  # register the model (distributed chief); trials only log it
    input_example: bytes = b""
    name: str = "worker"
    strategy: str = TF_DISTRIBUTE  # training.run.strategy.STRATEGIES
    feed: str = ARROW  # training.run.strategy.FEEDS
    feed_source: Any = None  # what the feed reads, made on the driver (petastorm: its converters)


@dataclass
class WorkerOutcome:
    name: str
    worker_index: int = 0
    num_workers: int = 1
    ok: bool = True
    error: str | None = None
    weights_digest: str = ""
    train_images: int = 0
    train_seconds: float = 0.0
    val_accuracy: float | None = None
    val_loss: float | None = None
    history: list[EpochMetrics] = field(default_factory=list)
    model_uri: str | None = None
    model_version: str | None = None
    run_id: str | None = None
    hyper: HyperParams | None = None
    device: str = ""
    log: str = ""  # the end of the process's log (LOG_TAIL_BYTES), for the driver's log


def _log_epoch(metrics: EpochMetrics) -> None:
    import mlflow

    mlflow.log_metrics(metrics.as_metrics(), step=metrics.epoch)


def run_job(job: WorkerJob) -> WorkerOutcome:
    """Train as ``job`` says, in this process, under ``job.strategy`` and reading ``job.feed``."""
    device = setup_device(mixed_precision=job.hyper.mixed_precision)
    # Before any other TensorFlow work: collective ops are configured when the strategy is made.
    strategy = worker_strategy(job.strategy)
    with _worker_data(job, chief=strategy.is_chief) as (train, validation):
        outcome = _train_and_log(job, strategy, train, validation, device)
    if strategy.num_workers > 1:
        strategy.barrier()
    return outcome


@contextlib.contextmanager
def _worker_data(job: WorkerJob, *, chief: bool) -> Iterator[tuple[Any, Any]]:
    """The train feed and the validation rows (images, label ids) of the pinned Delta version."""
    if job.feed == PETASTORM:
        from training.legacy.petastorm_feed import open_feed

        with open_feed(job.feed_source, chief=chief) as data:
            yield data
        return
    from training.data.feed import TRAIN, VALIDATION, ArrayFeed, load_snapshot

    snapshot = load_snapshot(
        job.settings, version=job.delta_version, image_size=job.image_size, decode_only=(TRAIN, VALIDATION)
    )
    snapshot.class_names = list(job.class_names)  # the driver's classes: ids must agree
    train_idx, val_idx = snapshot.indices(TRAIN), snapshot.indices(VALIDATION)
    train = ArrayFeed(snapshot.decoded(train_idx), snapshot.label_ids(train_idx))
    yield train, (snapshot.decoded(val_idx), snapshot.label_ids(val_idx))


def _train_and_log(job: WorkerJob, strategy: Any, train: Any, validation: Any, device: str) -> WorkerOutcome:
    from training.run.loop import fit, weights_digest

    outcome = WorkerOutcome(
        name=job.name, worker_index=strategy.worker_index, num_workers=strategy.num_workers, device=device
    )
    logs_to_mlflow = strategy.is_chief and job.run_id is not None

    import mlflow

    if logs_to_mlflow:
        from infra.registry import configure_mlflow

        configure_mlflow(job.settings)
        mlflow.start_run(run_id=job.run_id)
        if job.kind == TRIAL:
            mlflow.log_params(job.hyper.as_params())
    try:
        result = fit(
            train,
            validation,
            num_classes=len(job.class_names),
            hyper=job.hyper,
            strategy=strategy,
            train_rows=job.train_rows,
            on_epoch=_log_epoch if logs_to_mlflow else None,
        )
        outcome.weights_digest = weights_digest(result.model)
        outcome.train_images = result.train_images
        outcome.train_seconds = result.train_seconds
        outcome.history = result.history
        outcome.hyper = job.hyper
        if result.history:
            outcome.val_accuracy = result.history[-1].val_accuracy
            outcome.val_loss = result.history[-1].val_loss
        if logs_to_mlflow:
            info = log_model(job, result.model, reference_images=validation[0] if validation else None)
            outcome.model_uri = info.model_uri
            outcome.model_version = _registered_version(info)
            outcome.run_id = job.run_id
    finally:
        if logs_to_mlflow:
            mlflow.end_run()
    return outcome


def log_model(job: WorkerJob, model: Any, *, reference_images: Any = None) -> Any:
    """Log the trained model (float32, outside any strategy) to the active run; maybe register it.

    ``reference_images`` (the held-out split) become the model's reference (``training.packaging``).
    """
    from training.packaging import log_classifier
    from training.run.loop import architecture, portable_copy

    classes = len(job.class_names)
    serving = portable_copy(model, job.hyper, num_classes=classes)
    return log_classifier(
        serving,
        architecture=architecture(job.hyper, image_size=job.image_size, num_classes=classes),
        class_names=job.class_names,
        image_size=job.image_size,
        input_example=job.input_example,
        registered_model_name=job.settings.model_name if job.register else None,
        reference_images=reference_images,
    )


def _registered_version(info: Any) -> str | None:
    version = getattr(info, "registered_model_version", None)
    return None if version is None else str(version)


# Launching ------------------------------------------------------------------------------------
def _die_with_parent() -> Any:
    """Linux: a pre-exec hook that ends the child when the Spark task that started it goes
    (a killed barrier stage must not leave a worker blocked in an all-reduce forever)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded before the fork, not after
    except OSError:
        return None
    sigterm = int(signal.SIGTERM)
    return lambda: libc.prctl(1, sigterm)  # PR_SET_PDEATHSIG


def run_in_subprocess(
    job: WorkerJob, *, env: dict[str, str] | None = None, threads: int | None = 1, timeout_s: float | None = None
) -> WorkerOutcome:
    """Run ``job`` in a fresh Python process; return its outcome or raise :class:`WorkerError`.

    Its output goes to ``<logs_dir>/training/<name>.log``. ``threads`` caps TensorFlow's pools.
    """
    logs = job.settings.logs_dir / "training"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{job.name}.log"
    child_env = {**os.environ, **(env or {})}
    if threads:  # processes sharing one machine's cores each get their share
        child_env[TF_THREADS_ENV] = str(threads)
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="lakesight-worker-") as folder:
        job_path, result_path = Path(folder) / "job.pkl", Path(folder) / "outcome.pkl"
        job_path.write_bytes(pickle.dumps(job))
        started = time.perf_counter()
        with open(log_path, "wb") as log_file:
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "training.run.worker", str(job_path), str(result_path)],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=child_env,
                    timeout=timeout_s,
                    preexec_fn=_die_with_parent(),
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise WorkerError(f"{job.name} ran past {timeout_s}s; log: {log_path}") from exc
        if done.returncode != 0 or not result_path.exists():
            raise WorkerError(
                f"{job.name} exited with {done.returncode} after {time.perf_counter() - started:.0f}s "
                f"(log {log_path} on {socket.gethostname()}):\n{log_tail(log_path, ERROR_TAIL_BYTES)}"
            )
        outcome: WorkerOutcome = pickle.loads(result_path.read_bytes())
        outcome.log = log_tail(log_path, LOG_TAIL_BYTES)
        return outcome


def relay_log(name: str, text: str, *, level: int = logging.INFO) -> None:
    """Write a training process's log lines (brought back from its executor) to this process's log."""
    for line in text.splitlines():
        if line.strip():
            log.log(level, "[%s] %s", name, line)


def threads_per_task(context: Any, tasks: int) -> int:
    """TensorFlow threads for each of ``tasks`` training processes that Spark tasks launch at once.

    On a ``local*`` master the tasks share this machine's cores; on a cluster each gets the cores
    Spark gives a task (``spark.task.cpus``, 1 by default): TensorFlow's default of every core of
    the executor's machine oversubscribed trials sharing it (docs/PLATFORM.md).
    """
    if context.master.startswith("local"):
        slots = max(1, int(context.defaultParallelism))
        return max(1, slots // max(1, min(slots, tasks)))
    return max(1, int(context.getConf().get("spark.task.cpus", "1")))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    job_path, result_path = Path(args[0]), Path(args[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    job: WorkerJob = pickle.loads(job_path.read_bytes())
    outcome = run_job(job)
    temp = result_path.with_suffix(".tmp")
    temp.write_bytes(pickle.dumps(outcome))
    temp.replace(result_path)
    return 0


if __name__ == "__main__":
    # Run the module's own copy, so pickled jobs and outcomes name training.run.worker, not __main__.
    from training.run.worker import main as module_main

    sys.exit(module_main())
