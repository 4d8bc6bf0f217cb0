"""Reading ahead: the pool scores the files the next micro-batch will most likely list, while the
driver MERGEs this batch and Spark plans the next one.

Between two batches the scoring processes used to idle for about a third of the cycle (the MERGE,
Spark's offsets and listing). Spark's file source takes the oldest unseen files first, by
modification time, up to the batch's file limit; so after a batch the next one is most likely the
files modified at or after its newest file (less its own), oldest first. A guess is only ever a
cache: a listed row is taken from it when its path, modification time (ms) and size are those
that were read, anything else is scored as Spark listed it, and a guess that proved wrong costs
CPU, never a row. Exactly-once does not change: the MERGE and its transaction stay in
foreachBatch (docs/STREAMING.md, "Where images are scored").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infra.images import glob_matcher
from streams.scoring.config import ScoringConfig
from streams.scoring.pool import score_chunk
from streams.watched_folder import visible_files

# (path as Spark writes it, modification time in ms, size in bytes): what makes a guess a hit.
Key = tuple[str, int, int]


@dataclass(frozen=True)
class NextFiles:
    """Where to guess the next batch: a local folder's files after ``after_ms`` (those in ``exclude``
    aside), oldest first, at most ``limit``."""

    folder: str
    glob: str
    limit: int
    after_ms: int
    exclude: frozenset[str]

    def guess(self) -> list[Key]:
        matches = glob_matcher(self.glob)
        found: list[Key] = []
        for path, name in visible_files(Path(self.folder)):
            if not matches(name):
                continue
            try:
                info = os.stat(path)
            except OSError:  # gone since the listing
                continue
            key = ("file:" + path, info.st_mtime_ns // 1_000_000, info.st_size)
            if key[1] >= self.after_ms and key[0] not in self.exclude:
                found.append(key)
        found.sort(key=lambda k: (k[1], k[0]))
        return found[: self.limit]


def score_ahead(files: NextFiles, part: int, parts: int, config: ScoringConfig, schema: pa.Schema) -> pa.Table:
    """In a pool process: the ``part``-th of ``parts`` slices of the guessed files, scored."""
    mine = files.guess()[part::parts]
    rows = pa.table(
        {
            "path": pa.array([k[0] for k in mine], pa.string()),
            "modificationTime": pa.array([k[1] * 1000 for k in mine], pa.timestamp("us", tz="UTC")),
            "length": pa.array([k[2] for k in mine], pa.int64()),
        }
    )
    return score_chunk(rows, config, schema)


def _keys(table: pa.Table, modified: str, size: str) -> list[Key]:
    micros = (
        pc.cast(table.column(modified), pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    )
    return list(
        zip(
            table.column("path").to_pylist(),
            (np.asarray(micros) // 1000).tolist(),
            table.column(size).to_pylist(),
            strict=True,
        )
    )


def listed_keys(rows: pa.Table) -> list[Key]:
    """The keys of Spark's listed rows (path, modificationTime, length)."""
    return _keys(rows, "modificationTime", "length")


def scored_keys(table: pa.Table) -> list[Key]:
    """The keys of scored rows (path, modified_at, size_bytes: what they were read as)."""
    return _keys(table, "modified_at", "size_bytes")


class ReadAheadCache:
    """Rows scored ahead, each kept for the next two batches (ties in modification time can put a
    guessed file one batch later), then dropped."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self._rows = schema.empty_table()
        self._fresh = np.zeros(0, dtype=bool)  # added since the last batch (kept one batch more)
        self._index: dict[Key, int] = {}
        self.hits = 0
        self.dropped = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._rows = pa.concat_tables([self._rows, table])
        self._fresh = np.concatenate([self._fresh, np.ones(table.num_rows, dtype=bool)])
        self._index = {key: i for i, key in enumerate(scored_keys(self._rows))}

    def paths(self) -> frozenset[str]:
        return frozenset(key[0] for key in self._index)

    def take(self, keys: list[Key]) -> tuple[list[int], pa.Table]:
        """``(positions in keys that hit, their rows in that order)``; then the cache ages by one batch."""
        found = [(i, self._index[key]) for i, key in enumerate(keys) if key in self._index]
        hit_rows = self._rows.take([row for _, row in found]) if found else self.schema.empty_table()
        used = np.zeros(self._rows.num_rows, dtype=bool)
        used[[row for _, row in found]] = True
        keep = self._fresh & ~used
        self.hits += len(found)
        self.dropped += int((~self._fresh & ~used).sum())
        self._rows = self._rows.filter(pa.array(keep)) if self._rows.num_rows else self._rows
        self._fresh = np.zeros(self._rows.num_rows, dtype=bool)
        self._index = {key: i for i, key in enumerate(scored_keys(self._rows))}
        return [i for i, _ in found], hit_rows
