"""Warm scoring workers: the Python workers and their loaded champion kept through lulls.

Spark ends a Python worker that has been idle for a minute (``PythonWorkerFactory``, not
configurable), and with it the process-wide champion cache: the first batch after a lull then
pays a Python start, the TensorFlow import and the model load, seconds instead of a fraction of
one (``bench score``'s lull phase). A continuous stream idle for ``score_keep_warm_s`` therefore runs
a job of one tiny task per core whose body loads (or re-checks) the champion, which hands every
worker back to Spark's idle pool with a fresh idle clock. It waits while a trigger is active, so it
never competes with a micro-batch for the cores (docs/STREAMING.md, "Warm workers through lulls").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pandas as pd

from infra.settings import Settings
from streams.scoring.config import ScoringConfig
from streams.scoring.executor import executor_mapper, worker_champion

log = logging.getLogger(__name__)

WARM_DDL = "id long"


def warm_rows(batches: Iterable[pd.DataFrame], *, config: ScoringConfig) -> Iterator[pd.DataFrame]:
    """mapInPandas body: load (or re-check) the champion in this worker; no rows out."""
    for _ in batches:
        worker_champion(config)
    yield pd.DataFrame({"id": pd.Series([], dtype="int64")})


class WorkerWarmer:
    """Runs the warm-up job when the stream has been idle ``score_keep_warm_s`` (never for a run-once pass)."""

    def __init__(self, spark: Any, settings: Settings, *, enabled: bool):
        self.spark = spark
        self.every_s = settings.score_keep_warm_s if enabled else 0.0
        self.tasks = max(1, int(spark.sparkContext.defaultParallelism))
        self._mapper = executor_mapper(warm_rows, settings)
        self.last_work = time.monotonic()
        self.runs = 0

    def note_batch(self) -> None:
        """A micro-batch ran: the workers are warm from now."""
        self.last_work = time.monotonic()

    def due(self) -> bool:
        return self.every_s > 0 and time.monotonic() - self.last_work >= self.every_s

    def warm(self) -> None:
        """One task per core loads the champion; a failure is logged, never raised (the stream goes on)."""
        started = time.monotonic()
        try:
            frame = self.spark.range(0, self.tasks, numPartitions=self.tasks)
            frame.mapInPandas(self._mapper, WARM_DDL).collect()
        except Exception as exc:  # noqa: BLE001 - keeping workers warm is an optimisation
            log.warning("keeping the scoring workers warm failed: %s", exc)
        self.runs += 1
        self.last_work = time.monotonic()
        log.debug("scoring workers kept warm in %.2f s", self.last_work - started)
