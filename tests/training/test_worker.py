"""Training processes launched from Spark tasks: batch checks, thread caps, errors and logs brought back."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from infra.errors import UsageError
from infra.settings import Settings
from training.pipeline import TrainOptions, train
from training.run.loop import HyperParams
from training.run.worker import (
    DISTRIBUTED,
    ERROR_TAIL_BYTES,
    WorkerError,
    WorkerJob,
    relay_log,
    run_in_subprocess,
    threads_per_task,
)


def test_a_batch_that_does_not_split_over_the_workers_is_refused_before_any_work(settings: Settings) -> None:
    # Unreachable tracking server: the refusal must come first, before MLflow or Spark is touched.
    unreachable = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9"})
    with pytest.raises(UsageError, match=r"batch size 64 does not split over 3 workers.*--batch-size 63 or 66"):
        train(unreachable, TrainOptions(workers=3))
    TrainOptions(workers=3, batch_size=63).check()
    TrainOptions(workers=4, batch_size=2).check()  # fewer images than replicas: one each


def _context(master: str, parallelism: int = 2, **conf: str) -> Any:
    return SimpleNamespace(master=master, defaultParallelism=parallelism, getConf=lambda: dict(conf))


def test_threads_are_capped_to_the_task_cores_on_any_master() -> None:
    assert threads_per_task(_context("spark://head:7077", 2), 3) == 1  # spark.task.cpus defaults to 1
    assert threads_per_task(_context("spark://head:7077", 8, **{"spark.task.cpus": "4"}), 2) == 4
    assert threads_per_task(_context("yarn", 8, **{"spark.task.cpus": "2"}), 8) == 2
    assert threads_per_task(_context("local[8]", 8), 2) == 4  # one machine's cores, shared
    assert threads_per_task(_context("local[2]", 2), 5) == 1


def test_relayed_log_lines_reach_the_drivers_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="training.run.worker"):
        relay_log("run-1-worker-1", "epoch 1 done\n\nepoch 2 done\n")
    assert [r.getMessage() for r in caplog.records] == [
        "[run-1-worker-1] epoch 1 done",
        "[run-1-worker-1] epoch 2 done",
    ]


@pytest.mark.slow
def test_a_failed_worker_brings_its_whole_traceback_back(settings: Settings) -> None:
    # No images table: the process fails in load_snapshot, deep in a traceback longer than 500 characters.
    job = WorkerJob(
        kind=DISTRIBUTED,
        settings=settings,
        hyper=HyperParams(epochs=1),
        delta_version=0,
        image_size=8,
        class_names=["a", "b"],
        train_rows=1,
        name="failing",
    )
    with pytest.raises(WorkerError) as raised:
        run_in_subprocess(job, timeout_s=300)
    message = str(raised.value)
    assert "Traceback (most recent call last)" in message
    assert "TrainingDataError" in message.splitlines()[-1]  # the end of the traceback: what failed
    assert 500 < len(message) <= ERROR_TAIL_BYTES + 300


def _fail_like_a_worker(_: Any) -> Any:  # runs on an executor
    detail = "\n".join(f"worker log line {i}" for i in range(200))
    raise WorkerError(f"run-x-worker-1 exited with 1 after 3s (log /x on host):\n{detail}")


@pytest.mark.spark
def test_a_distributed_failure_names_the_worker_and_logs_its_whole_error(
    spark: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from training.run.distributed import _worker_failure

    with pytest.raises(Exception) as raised:  # whatever pyspark wraps it in
        spark.sparkContext.parallelize([1], 1).map(_fail_like_a_worker).collect()
    with caplog.at_level(logging.INFO, logger="training.run.worker"):
        error = _worker_failure(raised.value)
    assert str(error) == (
        "multi-worker training failed on an executor: run-x-worker-1 exited with 1 after 3s (log /x on host) "
        "(its log is above)"
    )
    relayed = [r.getMessage() for r in caplog.records]
    assert "[failed worker] worker log line 0" in relayed and "[failed worker] worker log line 199" in relayed
