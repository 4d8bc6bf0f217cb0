"""Multi-worker training: N worker processes launched as Spark barrier tasks.

Barrier mode starts all N tasks together (or none), which a synchronous all-reduce cluster
needs. Each task learns its peers through the barrier and starts its worker process with the
environment its strategy reads:

* ``tf`` (MultiWorkerMirroredStrategy): each task picks a free port, shares ``host:port`` through
  ``BarrierTaskContext.allGather`` (returned in task order) and builds ``TF_CONFIG`` from that list;
* ``horovod`` (the legacy stack): task 0 serves Horovod's Gloo rendezvous for the slot plan made
  from the barrier's task infos (``training.legacy.horovod_strategy``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from infra.errors import LakesightError, executor_error
from infra.processes import free_port
from infra.settings import Settings
from infra.spark import get_spark
from training.run.strategy import HOROVOD
from training.run.worker import WorkerJob, WorkerOutcome, relay_log, run_in_subprocess, threads_per_task

log = logging.getLogger(__name__)


class DistributedError(LakesightError, RuntimeError):
    """The multi-worker run could not start or a worker failed."""


@contextlib.contextmanager
def tf_config_environment(context: Any, index: int) -> Iterator[dict[str, str]]:
    """``TF_CONFIG`` for barrier task ``index``: every task's executor address and a port of its own."""
    from training.run.strategy import tf_config

    # The executor's address as Spark knows it; the port is ours.
    host = context.getTaskInfos()[index].address.rsplit(":", 1)[0] or socket.gethostname()
    addresses = context.allGather(f"{host}:{free_port('')}")
    yield {"TF_CONFIG": tf_config(addresses, index)}


def _worker_environment(strategy: str) -> Callable[[Any, int], Any]:
    if strategy == HOROVOD:
        from training.legacy.horovod_strategy import gloo_environment

        return gloo_environment
    return tf_config_environment


def _barrier_task(job: WorkerJob, threads: int | None):
    def task(_rows):  # runs on an executor
        from pyspark import BarrierTaskContext

        context = BarrierTaskContext.get()
        index = context.partitionId()
        worker = replace(job, name=f"{job.name}-worker-{index}")
        with _worker_environment(job.strategy)(context, index) as env:
            yield run_in_subprocess(worker, env=env, threads=threads)

    return task


def train_distributed(settings: Settings, job: WorkerJob, workers: int) -> list[WorkerOutcome]:
    """Run ``job`` on ``workers`` barrier tasks; outcomes in worker order (the chief first)."""
    if workers < 2:
        raise DistributedError("multi-worker training needs at least 2 workers")
    spark = get_spark(settings, "lakesight-train")
    slots = spark.sparkContext.defaultParallelism
    if slots < workers:
        raise DistributedError(
            f"{workers} workers need {workers} task slots at once (barrier mode); this Spark has {slots}"
        )
    threads = threads_per_task(spark.sparkContext, workers)
    rdd = spark.sparkContext.parallelize(range(workers), workers).barrier()
    try:
        outcomes = rdd.mapPartitions(_barrier_task(job, threads)).collect()
    except Exception as exc:
        raise _worker_failure(exc) from exc
    for outcome in sorted(outcomes, key=lambda o: o.worker_index):
        relay_log(outcome.name, outcome.log)
    return sorted(outcomes, key=lambda o: o.worker_index)


def _worker_failure(exc: Exception) -> DistributedError:
    """The failed worker's own error, read out of Spark's wrapper: its whole message (the end of its
    log, ``ERROR_TAIL_BYTES``) goes to this process's log, its first line into the error."""
    remote = executor_error(exc)
    if remote is None:  # Spark itself failed (a lost executor, a barrier that could not start)
        return DistributedError(f"multi-worker training failed: {' '.join(str(exc).split())[:2000]}")
    relay_log("failed worker", remote.detail, level=logging.ERROR)
    first = remote.detail.strip().splitlines()[0].rstrip(":") if remote.detail.strip() else remote.name
    return DistributedError(f"multi-worker training failed on an executor: {first} (its log is above)")
