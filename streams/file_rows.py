"""Turning file rows (path, modification time, bytes) into ``images`` arrival rows.

Runs on executors inside ``mapInPandas``; the ingest job and the scoring stream share it, with
the reader options of their file source (``image_file_stream``).
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import posixpath
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa

from infra.images import MAX_IMAGE_PIXELS, content_hash, image_error
from infra.locations import local_path
from infra.settings import Settings
from infra.tables import IMAGES_SCHEMA, LABEL_SOURCE_PATH, conform
from streams.checkpoint.source_log import listed_files, normalise_path

BINARY_FILE_DDL = "path string, modificationTime timestamp, length long, content binary"
# What Spark's listing gives for a file; a local folder's bytes are read by ``arrival_rows``.
LISTED_COLUMNS = ("path", "modificationTime", "length")
VANISHED = "file vanished before it was read"
SYMLINK = "refused: symbolic link (not read)"
NOT_REGULAR = "refused: not a regular file (not read)"
# MERGE condition (over s. and t.): the file is new content, or an error row's file changed size
# or modification time (a file read half-written is read again once complete). delta-rs's SQL
# parser needs each IS DISTINCT FROM in its own parentheses.
ARRIVAL_CHANGED = (
    "((s.content_hash IS DISTINCT FROM t.content_hash) OR ((t.error IS NOT NULL) "
    "AND ((s.size_bytes IS DISTINCT FROM t.size_bytes) OR (s.modified_at IS DISTINCT FROM t.modified_at))))"
)
ARRIVAL_DDL = (
    "path string, load_date date, content binary, content_hash string, size_bytes long, "
    "modified_at timestamp, arrived_at timestamp, ingested_at timestamp, error string, "
    "label string, label_source string, labeled_at timestamp"
)


@dataclass(frozen=True)
class FileChecks:
    """What a file must pass to be stored as an image, the same for every reader."""

    max_bytes: int
    max_pixels: int = MAX_IMAGE_PIXELS
    keep_refused_bytes: bool = False

    @classmethod
    def of(cls, settings: Settings) -> FileChecks:
        return cls(settings.max_image_bytes, settings.max_image_pixels, settings.keep_undecodable_bytes)


def image_file_stream(reader: Any, location: str, glob: str) -> Any:
    """File rows of the images under ``location``, from a ``readStream`` reader with its limits set.

    Spark lists the files. On cloud storage it reads their bytes too; from a local folder only the
    listing columns are selected, so Spark opens no file and ``arrival_rows`` reads each one
    itself, refusing links and special files unread. A file gone between listing and reading is
    skipped by Spark instead of failing the query (``ignoreMissingFiles``) and recorded from the
    source log (``with_unread_files``).
    """
    files = (
        reader.schema(BINARY_FILE_DDL)
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", glob)
        .option("ignoreMissingFiles", "true")
        .load(location)
    )
    return files if local_path(location) is None else files.select(*LISTED_COLUMNS)


def label_folder(path: str) -> str:
    """The name of the folder holding ``path`` (the class, for labeled layouts)."""
    return posixpath.basename(posixpath.dirname(path.rstrip("/")))


def load_date_of(modified: pd.Timestamp | dt.datetime) -> dt.date:
    """The partition an arrival belongs to: the UTC date it was written to storage."""
    ts = pd.Timestamp(modified)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.date()


def read_local_file(path: str, max_bytes: int) -> tuple[bytes | None, str | None]:
    """The bytes of the local file ``path`` names, or None and why they were not read.

    The last component is opened without following a link (``O_NOFOLLOW``; a link to
    /etc/passwd was stored as an error row with its bytes) and without blocking (a FIFO), and
    what was opened is checked on its descriptor, so only a regular file within ``max_bytes``
    is ever read.
    """
    local = local_path(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(local if local is not None else path, flags)
    except FileNotFoundError:
        return None, VANISHED
    except OSError as exc:
        return None, SYMLINK if exc.errno == errno.ELOOP else f"unreadable file: {exc.strerror}"
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            return None, NOT_REGULAR
        if info.st_size > max_bytes:
            return None, f"too large: {info.st_size} bytes (limit {max_bytes})"
        chunks, left = [], max_bytes + 1  # a file still growing is cut just past the limit
        while left > 0 and (chunk := os.read(descriptor, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), None
    finally:
        os.close(descriptor)


def _unread_reason(path: str) -> str:
    """Why Spark gave no row for a listed file: gone, not a regular file, or empty."""
    local = local_path(path)
    if local is None:
        return "empty file"  # cloud storage: Spark skips only empty (or vanished) objects
    try:
        info = local.lstat()
    except FileNotFoundError:
        return VANISHED
    if stat.S_ISLNK(info.st_mode):
        return SYMLINK
    return "empty file" if stat.S_ISREG(info.st_mode) else NOT_REGULAR


def unread_file_rows(listed: dict[str, int], present: set[str]) -> pd.DataFrame:
    """Arrival rows for files Spark listed for a batch but never read (empty or vanished)."""
    now = pd.Timestamp.now(tz="UTC")
    rows = []
    for path, millis in listed.items():
        if path in present:
            continue
        modified = pd.Timestamp(millis, unit="ms", tz="UTC")
        rows.append(
            {
                "path": path,
                "load_date": modified.date(),
                "content": None,
                "content_hash": None,
                "size_bytes": 0,
                "modified_at": modified,
                "arrived_at": modified,
                "ingested_at": now,
                "error": _unread_reason(path),
            }
        )
    return pd.DataFrame(rows)


def checked_bytes(path: str, data: Any, checks: FileChecks, decode: bool) -> tuple[bytes | None, str | None]:
    """A file's bytes (read here when Spark did not) and the reason they are refused, if any.

    ``data`` None and ``path`` local: the file is read here (``read_local_file``). Shared by
    ``arrival_rows`` and ``lakesight featurize`` (``streams.featurize``).
    """
    if data is None and local_path(path) is not None:
        data, refusal = read_local_file(path, checks.max_bytes)
        if refusal is not None:
            return None, refusal
    data = bytes(data) if data is not None else None
    return data, image_error(data, checks.max_bytes, decode=decode, max_pixels=checks.max_pixels)


def kept_content(data: bytes | None, error: str | None, checks: FileChecks) -> bytes | None:
    """The bytes a row stores: a usable image's; a refused file's only with ``keep_refused_bytes``
    (never beyond ``max_bytes``)."""
    if not data or len(data) > checks.max_bytes:
        return None
    return data if error is None or checks.keep_refused_bytes else None


def quarantine(rows: pd.DataFrame, checks: FileChecks) -> pd.DataFrame:
    """Drop the bytes of rows that got an error after ``arrival_rows`` (a decoder's, a fetch's)."""
    if not checks.keep_refused_bytes:
        rows.loc[rows["error"].notna(), "content"] = None
    return rows


def arrival_rows(
    batches: Iterable[pd.DataFrame],
    *,
    checks: FileChecks,
    labeled: bool = False,
    classes: frozenset[str] | None = None,
    decode: bool = True,
) -> Iterator[pd.DataFrame]:
    """Map file rows (path, modificationTime, length[, content]) to arrival rows.

    Without a ``content`` column (a local folder, ``image_file_stream``) each file is read here.
    A file that is empty, too large, not a regular file or not a usable image keeps its row with
    ``error`` set (a poison file is recorded, never fatal); its bytes are kept only with
    ``checks.keep_refused_bytes``. ``decode=False`` leaves the decoder check to a caller that
    decodes anyway (see ``image_error``).
    """
    for frame in batches:
        now = pd.Timestamp.now(tz="UTC")
        contents, hashes, errors, labels = [], [], [], []
        given = frame["content"] if "content" in frame.columns else [None] * len(frame)
        for path, raw in zip(frame["path"], given, strict=True):
            data, error = checked_bytes(path, raw, checks, decode)
            errors.append(error)
            hashes.append(content_hash(data) if data else None)
            contents.append(kept_content(data, error, checks))
            label = label_folder(path) if labeled else None
            if label is not None and classes is not None and label not in classes:
                label = None
            labels.append(label)
        modified = pd.to_datetime(frame["modificationTime"], utc=True)
        has_label = pd.Series([lbl is not None for lbl in labels])
        yield pd.DataFrame(
            {
                "path": frame["path"],
                "load_date": [load_date_of(m) for m in modified],
                "content": contents,
                "content_hash": hashes,
                "size_bytes": frame["length"].astype("int64"),
                "modified_at": modified,
                "arrived_at": modified,
                "ingested_at": now,
                "error": errors,
                "label": labels,
                "label_source": [LABEL_SOURCE_PATH if lbl is not None else None for lbl in labels],
                "labeled_at": [now if flag else None for flag in has_label],
            }
        )


def with_unread_files(
    table: pa.Table, checkpoint: str, batch_id: int, listed: dict[str, int] | None = None
) -> pa.Table:
    """``table`` plus error rows for the batch's listed files that Spark did not read.

    ``listed``: the batch's files when the caller has read them already.
    """
    present = {normalise_path(p) for p in table.column("path").to_pylist()}
    missing = unread_file_rows(listed_files(checkpoint, batch_id) if listed is None else listed, present)
    if missing.empty:
        return table
    extra = conform(pa.Table.from_pandas(missing, preserve_index=False), IMAGES_SCHEMA)
    return pa.concat_tables([conform(table, IMAGES_SCHEMA), extra])
