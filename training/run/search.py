"""Random hyperparameter search: N trials as parallel Spark tasks, each a nested MLflow run.

Every trial logs its params, per-epoch metrics and its model to its own child run; the best
trial by validation accuracy (the test split stays for promotion) is registered.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import replace

from infra.errors import LakesightError
from infra.settings import Settings
from infra.spark import get_spark
from training.run.loop import HyperParams
from training.run.worker import (
    TRIAL,
    WorkerError,
    WorkerJob,
    WorkerOutcome,
    relay_log,
    run_in_subprocess,
    threads_per_task,
)

log = logging.getLogger(__name__)

# Backbones a search tries by default: the ones that train from scratch in minutes on a CPU.
SEARCH_MODELS = ("cnn", "mobilenetv3small")
BATCH_SIZES = (32, 64, 128)
DENSE_UNITS = (64, 128, 256)


class SearchError(LakesightError, RuntimeError):
    """No trial finished."""


def sample_trials(
    count: int, base: HyperParams, *, seed: int = 0, models: Sequence[str] = SEARCH_MODELS
) -> list[HyperParams]:
    """``count`` random variations of ``base``: learning rate, dropout, dense units, batch size, backbone."""
    rng = random.Random(seed)
    trials = []
    for index in range(count):
        trials.append(
            replace(
                base,
                learning_rate=round(10 ** rng.uniform(-3.5, -2.3), 6),
                dropout=round(rng.uniform(0.1, 0.5), 3),
                dense_units=rng.choice(DENSE_UNITS),
                batch_size=rng.choice(BATCH_SIZES),
                model=rng.choice(list(models)),
                seed=base.seed + index,
            )
        )
    return trials


def best_trial(outcomes: Sequence[WorkerOutcome]) -> WorkerOutcome:
    """Highest validation accuracy, then lowest validation loss, among finished trials."""
    finished = [o for o in outcomes if o.ok and o.model_uri]
    if not finished:
        # Each trial's whole error is in the log already (run_search); here, what each one said first.
        errors = "; ".join(f"{o.name}: {_first_line(o.error)}" for o in outcomes)
        raise SearchError(f"no search trial finished: {errors}")
    return max(finished, key=lambda o: (o.val_accuracy or 0.0, -(o.val_loss or 0.0)))


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "no error text"


def _trial_task(threads: int | None):
    def task(job: WorkerJob) -> WorkerOutcome:  # runs on an executor
        try:
            return run_in_subprocess(job, threads=threads)
        except WorkerError as exc:  # one failed trial must not sink the search
            return WorkerOutcome(name=job.name, ok=False, error=str(exc), hyper=job.hyper, run_id=job.run_id)

    return task


def run_search(
    settings: Settings,
    job: WorkerJob,
    trials: Sequence[HyperParams],
    *,
    experiment_id: str,
    parent_run_id: str,
) -> list[WorkerOutcome]:
    """Run one ``job`` per trial in parallel Spark tasks, each logging to a child run of ``parent_run_id``."""
    from infra.registry import client

    mlflow_client = client(settings)
    jobs = []
    for index, hyper in enumerate(trials):
        child = mlflow_client.create_run(
            experiment_id,
            run_name=f"trial-{index}",
            tags={"mlflow.parentRunId": parent_run_id, "trial": str(index)},
        )
        jobs.append(
            replace(
                job, kind=TRIAL, hyper=hyper, run_id=child.info.run_id, register=False, name=f"{job.name}-trial-{index}"
            )
        )
    spark = get_spark(settings, "lakesight-train")
    threads = threads_per_task(spark.sparkContext, len(jobs))
    outcomes = spark.sparkContext.parallelize(jobs, len(jobs)).map(_trial_task(threads)).collect()
    for outcome in outcomes:
        relay_log(outcome.name, outcome.log)
        if not outcome.ok:
            # Whole (the end of the trial's log, ERROR_TAIL_BYTES): its traceback is the end of it.
            log.warning("search trial %s failed: %s", outcome.name, outcome.error)
            if outcome.run_id:
                mlflow_client.set_terminated(outcome.run_id, status="FAILED")
    return outcomes
