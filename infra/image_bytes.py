"""One ``images`` row per path, whatever the day, and human labels that belong to bytes.

``images`` is partitioned by ``load_date`` and MERGEd on ``path`` within the partitions a batch
touches, so a path that arrives again on another day would get a second row. Before a writer
MERGEs a batch, :func:`keep_stored_rows` gives each path that already has a row that row's
``load_date``, so the MERGE updates it. When the new bytes differ from the stored ones, the stored
human label was given for bytes that are gone: it is written to ``label_history`` here, and the
writer's MERGE clears it (:func:`label_update_for_new_bytes`), so a label never sits on bytes the
human did not see. The new bytes are scored again and may be sent to labeling again
(docs/LABELING.md, "Labels belong to bytes").
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from infra.lake import Lake
from infra.tables import IMAGES, LABEL_COLUMNS, LABEL_HISTORY, LABEL_SOURCE_HUMAN, column_names

STORED_COLUMNS = ["path", "load_date", "content_hash", "label", "label_source", "labeled_at", "labeled_content_hash"]
# The label history's reason for a human label whose image's bytes were replaced (handlers.intake.label_exports too).
STALE_BYTES = "the image's bytes changed since"
# A matched row whose bytes the source replaces (a fetch that got no bytes replaces nothing).
BYTES_REPLACED = "(s.content_hash IS NOT NULL AND t.content_hash IS NOT NULL AND s.content_hash <> t.content_hash)"


def label_update_for_new_bytes() -> dict[str, str]:
    """MERGE updates of the label columns: a human label is cleared when the bytes are replaced."""
    stale = f"{BYTES_REPLACED} AND t.label_source = '{LABEL_SOURCE_HUMAN}'"
    return {name: f"CASE WHEN {stale} THEN NULL ELSE t.{name} END" for name in column_names(LABEL_COLUMNS)}


def keep_stored_rows(lake: Lake, table: pa.Table, *, now: dt.datetime | None = None) -> pa.Table:
    """``table`` with the ``load_date`` of each path ``images`` already has; human labels of bytes
    it replaces recorded in ``label_history`` (keyed: a replayed batch records nothing twice)."""
    if table.num_rows == 0 or "load_date" not in table.column_names:
        return table
    stored = lake.lookup(IMAGES, "path", table.column("path").to_pylist(), STORED_COLUMNS)
    if stored.num_rows == 0:
        return table
    rows = {r["path"]: r for r in stored.to_pylist()}
    paths = table.column("path").to_pylist()
    given = table.column("load_date").to_pylist()
    dates = [rows[p]["load_date"] if p in rows else d for p, d in zip(paths, given, strict=True)]
    _record_stale_labels(lake, table, rows, now or dt.datetime.now(dt.UTC))
    index = table.column_names.index("load_date")
    return table.set_column(index, table.schema.field(index), pa.array(dates, pa.date32()))


def _record_stale_labels(lake: Lake, table: pa.Table, stored: dict[str, dict], now: dt.datetime) -> None:
    if "content_hash" not in table.column_names:
        return
    new_hashes = dict(zip(table.column("path").to_pylist(), table.column("content_hash").to_pylist(), strict=True))
    history = []
    for path, row in stored.items():
        new = new_hashes.get(path)
        replaced = new is not None and row["content_hash"] is not None and new != row["content_hash"]
        if replaced and row["label_source"] == LABEL_SOURCE_HUMAN and row["labeled_at"] and row["label"]:
            history.append(
                {
                    "path": path,
                    "labeled_at": row["labeled_at"],
                    "label": row["label"],
                    "content_hash": row["labeled_content_hash"] or row["content_hash"],
                    "kept_label": None,
                    "reason": STALE_BYTES,
                    "event_id": None,
                    "recorded_at": now,
                }
            )
    if history:
        lake.merge(LABEL_HISTORY, pa.Table.from_pylist(history, schema=LABEL_HISTORY.schema), insert=True)
