"""Turning file rows (path, modification time, bytes) into ``images`` arrival rows.

Runs on executors inside ``mapInPandas``; the ingest job and the scoring stream share it.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa

from infra.images import content_hash, image_error
from infra.tables import IMAGES_SCHEMA, LABEL_SOURCE_PATH, conform
from streams.checkpoint.source_log import listed_files, normalise_path

BINARY_FILE_DDL = "path string, modificationTime timestamp, length long, content binary"
ARRIVAL_DDL = (
    "path string, load_date date, content binary, content_hash string, size_bytes long, "
    "modified_at timestamp, arrived_at timestamp, ingested_at timestamp, error string, "
    "label string, label_source string, labeled_at timestamp"
)


def label_folder(path: str) -> str:
    """The name of the folder holding ``path`` (the class, for labeled layouts)."""
    return posixpath.basename(posixpath.dirname(path.rstrip("/")))


def load_date_of(modified: pd.Timestamp | dt.datetime) -> dt.date:
    """The partition an arrival belongs to: the UTC date it was written to storage."""
    ts = pd.Timestamp(modified)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.date()


def unread_file_rows(listed: dict[str, int], present: set[str]) -> pd.DataFrame:
    """Arrival rows for files Spark listed for a batch but never read (empty or vanished)."""
    now = pd.Timestamp.now(tz="UTC")
    rows = []
    for path, millis in listed.items():
        if path in present:
            continue
        local = Path(path.removeprefix("file:")) if path.startswith("file:") else None
        reason = "file vanished before it was read" if local is not None and not local.exists() else "empty file"
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
                "error": reason,
            }
        )
    return pd.DataFrame(rows)


def arrival_rows(
    batches: Iterable[pd.DataFrame],
    *,
    max_bytes: int,
    labeled: bool = False,
    classes: frozenset[str] | None = None,
    decode: bool = True,
) -> Iterator[pd.DataFrame]:
    """Map binaryFile batches (path, modificationTime, length, content) to arrival rows.

    A file that is empty, too large or undecodable keeps its row with ``error`` set (so a
    poison file is stored, never retried, never fatal); only over-size bytes are not stored.
    ``decode=False`` leaves the decoder check to a caller that decodes anyway (see ``image_error``).
    """
    for frame in batches:
        now = pd.Timestamp.now(tz="UTC")
        contents, hashes, errors, labels = [], [], [], []
        for path, data in zip(frame["path"], frame["content"], strict=True):
            data = bytes(data) if data is not None else None
            error = image_error(data, max_bytes, decode=decode)
            errors.append(error)
            hashes.append(content_hash(data) if data else None)
            # Undecodable bytes are kept (quarantined in place); only over-size ones are dropped.
            contents.append(data if data and len(data) <= max_bytes else None)
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
