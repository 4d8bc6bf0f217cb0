"""Schemas of lakesight's Delta tables, defined once.

``images`` is the heart: one row per image path, partitioned by ``load_date`` so that a
MERGE names only the partitions its batch touches and costs the same on day 1 and day 1,000.
Columns are grouped by the writer that owns them: no writer ever updates another's group.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

# Written when an image arrives (ingest or the scoring stream).
ARRIVAL_COLUMNS = [
    pa.field("path", pa.string(), nullable=False),
    pa.field("load_date", pa.date32(), nullable=False),
    pa.field("content", pa.binary()),
    pa.field("content_hash", pa.string()),
    pa.field("size_bytes", pa.int64()),
    pa.field("modified_at", TS),
    pa.field("arrived_at", TS),
    pa.field("ingested_at", TS),
    pa.field("error", pa.string()),
]
# Written from the folder name by a labeled ingest, or by humans through labeling exports.
LABEL_COLUMNS = [
    pa.field("label", pa.string()),
    pa.field("label_source", pa.string()),
    pa.field("labeled_at", TS),
]
# Written by the scoring stream.
PREDICTION_COLUMNS = [
    pa.field("predicted_label", pa.string()),
    pa.field("confidence", pa.float64()),
    pa.field("probabilities", pa.list_(pa.float32())),
    pa.field("class_names", pa.list_(pa.string())),
    pa.field("model_name", pa.string()),
    pa.field("model_version", pa.string()),
    pa.field("scored_at", TS),
    pa.field("sent_to_labeling_at", TS),
]

IMAGES_SCHEMA = pa.schema(ARRIVAL_COLUMNS + LABEL_COLUMNS + PREDICTION_COLUMNS)
IMAGES_PARTITION = ["load_date"]
IMAGES = "images"

LABEL_SOURCE_PATH = "path"
LABEL_SOURCE_HUMAN = "human"


def column_names(fields: list[pa.Field]) -> list[str]:
    return [f.name for f in fields]


def conform(table: pa.Table, schema: pa.Schema = IMAGES_SCHEMA) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns: missing ones null, types cast."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)
