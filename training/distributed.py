"""Multi-worker training: N MultiWorkerMirroredStrategy workers launched as Spark barrier tasks.

Barrier mode starts all N tasks together (or none), which a synchronous all-reduce cluster
needs. Each task picks a free port, shares ``host:port`` through ``BarrierTaskContext.allGather``
(returned in task order), builds ``TF_CONFIG`` from that list and runs its worker process.
"""

from __future__ import annotations

import socket
from dataclasses import replace

from infra.errors import LakesightError
from infra.processes import free_port
from infra.settings import Settings
from infra.spark import get_spark
from training.worker import WorkerJob, WorkerOutcome, run_in_subprocess


class DistributedError(LakesightError, RuntimeError):
    """The multi-worker run could not start or a worker failed."""


def _barrier_task(job: WorkerJob, threads: int | None):
    def task(_rows):  # runs on an executor
        from pyspark import BarrierTaskContext

        from training.strategy import tf_config

        context = BarrierTaskContext.get()
        index = context.partitionId()
        # The executor's address as Spark knows it; the port is ours.
        host = context.getTaskInfos()[index].address.rsplit(":", 1)[0] or socket.gethostname()
        addresses = context.allGather(f"{host}:{free_port('')}")
        worker = replace(job, name=f"{job.name}-worker-{index}")
        yield run_in_subprocess(worker, env={"TF_CONFIG": tf_config(addresses, index)}, threads=threads)

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
    threads = max(1, slots // workers) if spark.sparkContext.master.startswith("local") else None
    rdd = spark.sparkContext.parallelize(range(workers), workers).barrier()
    try:
        outcomes = rdd.mapPartitions(_barrier_task(job, threads)).collect()
    except Exception as exc:  # Spark wraps the worker's error; keep its text
        raise DistributedError(f"multi-worker training failed: {exc}") from exc
    return sorted(outcomes, key=lambda o: o.worker_index)
