"""The driver's own look at a watched local folder, between micro-batches (ingest and the scoring stream).

Two things Spark's file source cannot do for a folder:

* say which files its glob leaves out (``UPPER.PNG`` used to be skipped without a word): they are
  counted and each is logged once;
* read a file again: it remembers every path it listed and never lists one twice, so a file read
  half-written kept its error for good. Error rows of the folder's files are remembered with the
  size and modification time they were read at; once a file's differ, it is read again through
  the job's own mapper and MERGEd (``streams.file_rows.ARRIVAL_CHANGED`` lets the new row
  replace the error row). Files that are still wrong stay error rows (docs/STREAMING.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infra.image_bytes import keep_stored_rows
from infra.images import glob_matcher
from infra.lake import Lake, MergeOutcome
from infra.locations import local_path
from infra.tables import IMAGES
from streams.checkpoint.source_log import normalise_path
from streams.file_rows import BINARY_FILE_DDL, LISTED_COLUMNS

log = logging.getLogger(__name__)

# Spark's file index never lists names starting with these (in-flight temporary files, metadata).
HIDDEN_PREFIXES = (".", "_")
MTIME_TOLERANCE_MS = 1000
_GLOB_CHARS = re.compile(r"([\\\[\]{}*?])")


def visible_files(folder: Path) -> Iterator[tuple[str, str]]:
    """``(path, name)`` of every file under ``folder`` that Spark's file index lists, glob aside.

    Also the folder listing of ``lakesight featurize`` (``streams.featurize``), so a folder gives
    it the files the stream would read.
    """
    for root, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(HIDDEN_PREFIXES)]
        for name in names:
            if not name.startswith(HIDDEN_PREFIXES):
                yield os.path.join(root, name), name


def skipped_files(location: str, glob: str) -> list[str]:
    """The files under the local folder ``location`` that ``glob`` leaves out, sorted."""
    folder = local_path(location)
    if folder is None or not folder.is_dir():
        return []
    matches = glob_matcher(glob)
    return sorted(path for path, name in visible_files(folder) if not matches(name))


def typical_file_bytes(location: str, glob: str, *, sample: int = 1000) -> int | None:
    """The 90th-percentile size of up to ``sample`` image files under a local folder; None if it has none."""
    folder = local_path(location)
    if folder is None or not folder.is_dir():
        return None
    matches = glob_matcher(glob)
    sizes: list[int] = []
    for path, name in visible_files(folder):
        if matches(name):
            with contextlib.suppress(OSError):  # gone since the listing: it does not count
                sizes.append(os.lstat(path).st_size)
            if len(sizes) >= sample:
                break
    return int(np.percentile(sizes, 90)) if sizes else None


@dataclass(frozen=True)
class _Recorded:
    """An error row's file as it was read: its partition, size and modification time (ms)."""

    load_date: dt.date
    size: int
    modified_ms: int


def _literal(path: str) -> str:
    """``path`` with Hadoop's glob characters escaped, so Spark loads exactly that file."""
    return _GLOB_CHARS.sub(r"\\\1", path)


@dataclass(frozen=True)
class FolderCheck:
    """What one look at the folder found."""

    skipped_files: int
    reread_files: int = 0
    outcome: MergeOutcome | None = None


class WatchedFolder:
    """Skipped files and error rows worth reading again, for one local folder a job reads.

    ``mapper`` and ``ddl`` are the job's ``mapInPandas`` body and schema (file rows in, ``images``
    rows out); ``update`` and ``when`` its MERGE. Only the thread that writes the job's batches
    calls it (the lake handle is that thread's).
    """

    def __init__(
        self,
        location: str,
        glob: str,
        *,
        lake: Lake,
        spark: Any,
        mapper: Callable[[Any], Any],
        ddl: str,
        update: dict[str, str],
        when: str,
        every_s: float = 30.0,
    ):
        self.location = location
        self.glob = glob
        self.lake = lake
        self.spark = spark
        self.mapper = mapper
        self.ddl = ddl
        self.update = update
        self.when = when
        self.every_s = every_s
        self._prefix = normalise_path("file:" + str(local_path(location)).rstrip("/") + "/")
        self._errored: dict[str, _Recorded] = {}
        self._logged: set[str] = set()
        self._last = float("-inf")

    @staticmethod
    def watches(location: str) -> bool:
        """Only a local folder can be looked at from the driver."""
        return local_path(location) is not None

    # What the table says --------------------------------------------------------------------------
    def load(self) -> None:
        """Remember the folder's error rows already in ``images`` (from earlier runs)."""
        if not self.lake.exists(IMAGES):
            return
        columns = ["path", "load_date", "size_bytes", "modified_at", "error"]
        self.remember(self.lake.read(IMAGES, columns=columns, filters=pc.field("error").is_valid()))

    def remember(self, table: pa.Table) -> None:
        """Note a committed batch: its error rows are watched, its readable rows no longer."""
        if not self._errored and table.column("error").null_count == table.num_rows:
            return  # the usual batch: nothing to watch, nothing to forget
        millis = pc.divide(pc.cast(table.column("modified_at"), pa.int64()), 1000).to_pylist()
        rows = zip(
            table.column("path").to_pylist(),
            table.column("load_date").to_pylist(),
            table.column("size_bytes").to_pylist(),
            millis,
            table.column("error").to_pylist(),
            strict=True,
        )
        for path, load_date, size, modified_ms, error in rows:
            key = normalise_path(path)
            if not key.startswith(self._prefix):
                continue
            if error is None:
                self._errored.pop(key, None)
            else:
                self._errored[key] = _Recorded(load_date, size or 0, modified_ms or 0)

    def changed(self) -> list[str]:
        """Error rows whose file now has another size or modification time (a file gone is not).

        Times are compared to the second: a file system may keep only seconds, and a file that
        looked changed on every look would be read again forever.
        """
        out = []
        for path, recorded in self._errored.items():
            try:
                info = os.lstat(path.removeprefix("file:"))
            except OSError:
                continue
            moved = abs(info.st_mtime_ns // 1_000_000 - recorded.modified_ms) >= MTIME_TOLERANCE_MS
            if info.st_size != recorded.size or moved:
                out.append(path)
        return sorted(out)

    # Looking ----------------------------------------------------------------------------------------
    def after_batch(self, table: pa.Table) -> FolderCheck | None:
        """After a committed batch: remember its rows, and look again when ``every_s`` has passed."""
        self.remember(table)
        if time.monotonic() - self._last < self.every_s:
            return None
        return self.check()

    def check(self) -> FolderCheck:
        """Count (and log, once each) the skipped files; read the changed error files again."""
        self._last = time.monotonic()
        skipped = self._log_skipped(skipped_files(self.location, self.glob))
        changed = self.changed()
        if not changed:
            return FolderCheck(skipped)
        table = keep_stored_rows(self.lake, self.reread(changed))  # the path's row, whatever the day
        outcome = self.lake.merge(IMAGES, table, update=self.update, when=self.when)
        self.remember(table)
        log.info("read %d changed file(s) with an error row again in %s", table.num_rows, self.location)
        return FolderCheck(skipped, table.num_rows, outcome)

    def _log_skipped(self, skipped: list[str]) -> int:
        new = [path for path in skipped if path not in self._logged]
        if new:
            shown = ", ".join(new[:10]) + (", ..." if len(new) > 10 else "")
            log.warning(
                "%d file(s) under %s do not match the glob %r and are not read: %s",
                len(new),
                self.location,
                self.glob,
                shown,
            )
            self._logged.update(new)
        return len(skipped)

    def reread(self, paths: list[str]) -> pa.Table:
        """``paths`` read again through the job's mapper, each row kept in its error row's partition
        (a new modification time may fall on another day; the MERGE is keyed within partitions)."""
        files = (
            self.spark.read.format("binaryFile")
            .schema(BINARY_FILE_DDL)
            .option("ignoreMissingFiles", "true")
            .load([_literal(path) for path in paths])
            .select(*LISTED_COLUMNS)
        )
        table = files.mapInPandas(self.mapper, self.ddl).toArrow()
        keys = [normalise_path(path) for path in table.column("path").to_pylist()]
        table = table.filter(pa.array([key in self._errored for key in keys]))
        dates = pa.array([self._errored[key].load_date for key in keys if key in self._errored], pa.date32())
        return table.set_column(table.schema.get_field_index("load_date"), "load_date", dates)
