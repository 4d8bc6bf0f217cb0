"""One query's scoring in the shared pool (``streams.scoring.pool``), with its read-ahead
(``streams.scoring.read_ahead``): what foreachBatch calls to turn listed rows into scored rows."""

from __future__ import annotations

import concurrent.futures
import logging
from concurrent.futures import Future
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from infra.settings import Settings
from streams.scoring.config import ScoringConfig
from streams.scoring.pool import ScoringPool, scored_schema, shared_pool
from streams.scoring.read_ahead import NextFiles, ReadAheadCache, listed_keys, score_ahead

log = logging.getLogger(__name__)


class PooledScoring:
    """Listed rows → scored rows in the pool's processes; rows guessed and scored ahead are reused.

    ``folder`` (a local folder) and ``file_limit`` (the batch's file cap) turn the read-ahead on.
    """

    def __init__(
        self,
        pool: ScoringPool,
        config: ScoringConfig,
        schema: pa.Schema,
        *,
        folder: str | None = None,
        glob: str = "*",
        file_limit: int = 0,
    ):
        self.pool = pool
        self.config = config
        self.schema = schema
        self.folder, self.glob, self.file_limit = folder, glob, file_limit
        self.cache = ReadAheadCache(schema)
        self._pending: list[Future[pa.Table]] = []
        self.read_ahead_rows = 0  # rows scored ahead (hits and misses)

    @classmethod
    def start(cls, settings: Settings, spark: Any, **read_ahead: Any) -> PooledScoring:
        """The query's scoring, with the pool's processes loading its champion from now."""
        pool = shared_pool(int(spark.sparkContext.defaultParallelism))
        scoring = cls(pool, ScoringConfig.of(settings), scored_schema(spark), **read_ahead)
        pool.warm(scoring.config)
        return scoring

    def score(self, rows: pa.Table) -> pa.Table:
        """Scored rows for Spark's listed ``rows``, in their order; then the next batch is read ahead."""
        self.collect_read_ahead()
        hit_positions, hits = self.cache.take(listed_keys(rows))
        hit_set = set(hit_positions)
        missing = [i for i in range(rows.num_rows) if i not in hit_set]
        scored = self.pool.score(rows.take(missing), self.config, self.schema) if missing else None
        table = _in_listed_order(hits, hit_positions, scored, missing)
        self._read_ahead(rows)
        return table

    def _read_ahead(self, rows: pa.Table) -> None:
        if self.folder is None or self.file_limit <= 0 or rows.num_rows == 0:
            return
        newest = pc.max(rows.column("modificationTime")).cast(pa.int64()).as_py() // 1000
        exclude = frozenset(rows.column("path").to_pylist()) | self.cache.paths()
        files = NextFiles(self.folder, self.glob, self.file_limit, newest, exclude)
        parts = self.pool.processes
        self._pending = [
            self.pool.submit(score_ahead, files, part, parts, self.config, self.schema) for part in range(parts)
        ]

    def collect_read_ahead(self) -> None:
        """Wait for the read-ahead in flight and keep what it scored; a failed one is only lost work."""
        for future in self._pending:
            try:
                table = future.result()
            except Exception as exc:  # noqa: BLE001 - the batch scores what it lists either way
                log.debug("a read-ahead failed: %s", exc)
                continue
            self.read_ahead_rows += table.num_rows
            self.cache.add(table)
        self._pending = []

    def close(self) -> None:
        """Drop the read-ahead not started yet and wait for the one running (it ends within a batch)."""
        for future in self._pending:
            future.cancel()
        concurrent.futures.wait(self._pending)
        self._pending = []


def _in_listed_order(hits: pa.Table, hit_positions: list[int], scored: pa.Table | None, missing: list[int]) -> pa.Table:
    """Hit rows and freshly scored rows put back in the order Spark listed them."""
    if scored is None:
        return hits
    if not hit_positions:
        return scored
    combined = pa.concat_tables([hits, scored])
    positions = hit_positions + missing
    order = sorted(range(len(positions)), key=positions.__getitem__)
    return combined.take(order)
