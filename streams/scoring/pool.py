"""The stream's own scoring processes: a local folder scored without the image bytes crossing the JVM.

With Spark's Python workers, every image went file → Python worker → Arrow → JVM → Arrow → driver
before the MERGE, and Spark's JVM spent about as much CPU on those bytes as the model spent
scoring them (docs/BENCHMARKS.md, "The physical limit"). On one machine (a local master, a local
folder) Spark needs only to list the files and keep the checkpoint: foreachBatch collects the
listed rows (path, time, size; no bytes) and this pool, one long-lived process per core, reads,
checks and scores them with the executors' own :func:`streams.scoring.executor.score_rows`. Either
lake engine MERGEs the scored rows from the driver (the spark engine through delta-spark,
``infra.spark_lake.DriverRowsBatch``). Exactly-once is unchanged (the MERGE and its transaction
stay in foreachBatch), so are the error rows and the champion that follows its alias;
the processes outlive lulls, and they load the champion while Spark starts the query
(docs/STREAMING.md, "Where images are scored").
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pandas as pd
import pyarrow as pa

from infra.errors import LakesightError
from infra.locations import local_path
from infra.settings import Settings
from streams.scoring.config import ScoringConfig
from streams.scoring.executor import SCORED_DDL, score_rows, worker_champion

log = logging.getLogger(__name__)

# What Spark hands a mapInPandas body at a time (infra.spark: arrow.maxRecordsPerBatch): the model
# sees batches of the same size on either path.
FRAME_ROWS = 512


class ScoringPoolError(LakesightError, RuntimeError):
    """The scoring processes failed twice on one batch, or cannot run with these settings."""


def pool_eligible(settings: Settings, source_kind: str, location: str) -> str | None:
    """Why the pool cannot score this source (None when it can)."""
    if not settings.spark_master.startswith("local"):
        return f"the master is {settings.spark_master}, not local: the executors score"
    if source_kind != "directory" or local_path(location) is None:
        return "the source is not a local folder: the executors fetch and score"
    return None


def uses_pool(settings: Settings, source_kind: str, location: str) -> bool:
    """Whether ``score_workers`` puts this source's scoring in the pool (``pool`` where it cannot run: an error)."""
    if settings.score_workers == "spark":
        return False
    why_not = pool_eligible(settings, source_kind, location)
    if why_not is not None and settings.score_workers == "pool":
        raise ScoringPoolError(f"score_workers=pool cannot score {location}: {why_not}")
    return why_not is None


def scored_schema(spark: Any) -> pa.Schema:
    """The Arrow schema of ``SCORED_DDL`` as Spark's own ``toArrow`` gives it (the MERGE's input)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    struct = spark.createDataFrame([], SCORED_DDL).schema
    return to_arrow_schema(struct, timezone=spark.conf.get("spark.sql.session.timeZone"))


def _warm_up(config: ScoringConfig) -> None:
    """A new process loads the champion before its first batch; a failure is left for that batch to report."""
    try:
        worker_champion(config)
    except Exception as exc:  # noqa: BLE001 - the batch's rows carry the load error (model_load_error)
        log.warning("a scoring process could not load the champion yet: %s", exc)


def _frames(rows: pa.Table) -> Iterator[pd.DataFrame]:
    for batch in rows.to_batches(max_chunksize=FRAME_ROWS):
        yield batch.to_pandas()


def score_chunk(rows: pa.Table, config: ScoringConfig, schema: pa.Schema) -> pa.Table:
    """In a pool process: listed file rows -> scored rows, as the executors' mapper would give them."""
    parts = [
        pa.Table.from_pandas(f, schema=schema, preserve_index=False) for f in score_rows(_frames(rows), config=config)
    ]
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _chunks(rows: pa.Table, count: int) -> list[pa.Table]:
    """``rows`` cut into up to ``count`` contiguous slices of near-equal length (one per process)."""
    size = -(-rows.num_rows // max(count, 1))
    return [rows.slice(start, size) for start in range(0, rows.num_rows, size)] if rows.num_rows else []


class ScoringPool:
    """``processes`` long-lived scoring processes, shared by every query of this driver process.

    Spawned, not forked: the driver runs a JVM gateway's threads. Like Spark's reused Python
    workers they outlive a query, so a query restarted on a fresh checkpoint (or the next query
    of a test session) finds the champion loaded. Each batch brings its own configuration.
    """

    def __init__(self, processes: int):
        self.processes = max(1, processes)
        self.restarts = 0
        self._scored = False  # whether any batch was scored: a pool that never did died starting
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"))

    def warm(self, config: ScoringConfig) -> None:
        """Start the processes now and have them load ``config``'s champion while Spark plans the query's
        first batch (processes start on demand: one task each starts them all)."""
        for _ in range(self.processes):
            self._executor.submit(_warm_up, config)

    def score(self, rows: pa.Table, config: ScoringConfig, schema: pa.Schema) -> pa.Table:
        """Scored rows for the listed ``rows``, in their order. A process that died (killed, out of
        memory) is replaced and the batch scored once more; a second failure is raised."""
        try:
            return self._score(rows, config, schema)
        except BrokenProcessPool as exc:
            log.warning("a scoring process died (%s); starting new ones and scoring the batch again", exc)
            self.restarts += 1
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._start()
        try:
            return self._score(rows, config, schema)
        except BrokenProcessPool as exc:
            raise ScoringPoolError(self._died_twice(rows.num_rows)) from exc

    def _score(self, rows: pa.Table, config: ScoringConfig, schema: pa.Schema) -> pa.Table:
        futures = [self._executor.submit(score_chunk, chunk, config, schema) for chunk in _chunks(rows, self.processes)]
        parts = [future.result() for future in futures]
        self._scored = True
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def _died_twice(self, files: int) -> str:
        if self._scored:
            return f"the scoring processes died twice on one batch of {files} files"
        # Spawned processes import the program's main module again: a script that starts the
        # stream at import time starts it again in each of them, and they exit.
        return (
            "the scoring processes exit while starting (their error is above). A script that runs the "
            'stream must start it under `if __name__ == "__main__":`, as any program using '
            "multiprocessing; or set score_workers=spark (docs/STREAMING.md, Where images are scored)"
        )

    def submit(self, fn: Callable[..., pa.Table], *args: Any) -> Future[pa.Table]:
        """Run ``fn(*args)`` in a scoring process (work that may be dropped: a read-ahead)."""
        return self._executor.submit(fn, *args)

    def pids(self) -> list[int]:
        """The process ids of the live scoring processes (for a status, or a test that kills one)."""
        return list((self._executor._processes or {}).keys())  # the executor keeps no public list

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


_shared: ScoringPool | None = None


def shared_pool(processes: int) -> ScoringPool:
    """This driver process's pool of ``processes`` (one started, or the running one when it has as many)."""
    global _shared  # one pool per driver process, as Spark has one set of Python workers
    if _shared is None or _shared.processes != max(1, processes):
        if _shared is not None:
            _shared.close()
        _shared = ScoringPool(processes)
    return _shared
