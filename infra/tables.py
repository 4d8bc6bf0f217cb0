"""Every Delta table of lakesight, defined once as a :class:`TableSpec` (name, schema, keys, partitions).

``images`` is the heart: one row per image path, partitioned by ``load_date`` so that a
MERGE names only the partitions its batch touches and costs the same on day 1 and day 1,000.
Columns are grouped by the writer that owns them: no writer ever updates another's group.
The other tables are the labeling ledger (the stream), label rejects and retraining decisions
(the handlers), promotion decisions on live evidence (``infra.core.promotion``) and the model
server's inference table; ``infra.core.status`` reads them by these specs.
``embeddings_spec(name)`` is the shape of the tables ``lakesight featurize`` writes, under any other name.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

TS = pa.timestamp("us", tz="UTC")
# The model's penultimate layer, L2-normalised (training.packaging): null for models without one.
EMBEDDING = pa.list_(pa.float32())

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
    pa.field("labeled_at", TS),  # when the human made the label (the export's or service's time): the label's version
    # The content hash of the bytes the human saw: a label applies to those bytes only (docs/LABELING.md).
    pa.field("labeled_content_hash", pa.string()),
]
# Written by the scoring stream.
PREDICTION_COLUMNS = [
    pa.field("predicted_label", pa.string()),
    pa.field("confidence", pa.float64()),
    pa.field("probabilities", pa.list_(pa.float32())),
    pa.field("embedding", EMBEDDING),
    pa.field("class_names", pa.list_(pa.string())),
    pa.field("model_name", pa.string()),
    pa.field("model_version", pa.string()),
    pa.field("scored_at", TS),
    pa.field("sent_to_labeling_at", TS),
]
# Written by the scoring stream, in the same MERGE, while a challenger exists: the challenger's
# answer for the share of rows ``shadow_fraction`` picks (docs/PROMOTION.md). Null otherwise.
SHADOW_COLUMNS = [
    pa.field("shadow_label", pa.string()),
    pa.field("shadow_confidence", pa.float64()),
    pa.field("shadow_model_version", pa.string()),
    pa.field("shadow_scored_at", TS),
]

IMAGES_SCHEMA = pa.schema(ARRIVAL_COLUMNS + LABEL_COLUMNS + PREDICTION_COLUMNS + SHADOW_COLUMNS)
IMAGES_PARTITION = ["load_date"]

LABEL_SOURCE_PATH = "path"
LABEL_SOURCE_HUMAN = "human"


@dataclass(frozen=True)
class TableSpec:
    """A Delta table: its name under the lake root, schema, MERGE keys and partition columns.

    It prints as its name, so it can stand where a table name is expected (URIs, log lines).
    """

    name: str
    schema: pa.Schema
    keys: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    sort_by: str | None = None  # the column readers order recent rows by

    def __str__(self) -> str:
        return self.name

    def conform(self, table: pa.Table) -> pa.Table:
        return conform(table, self.schema)


IMAGES = TableSpec("images", IMAGES_SCHEMA, keys=("path",), partition_by=tuple(IMAGES_PARTITION))

# The scoring stream's labeling ledger: one row per image sent to humans.
LABELING_REQUESTS = TableSpec(
    "labeling_requests",
    pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("request_date", pa.date32(), nullable=False),
            pa.field("sent_at", TS),
            pa.field("image_url", pa.string()),
            pa.field("manifest_url", pa.string()),
            pa.field("predicted_label", pa.string()),
            pa.field("confidence", pa.float64()),
            pa.field("model_version", pa.string()),
            pa.field("app_id", pa.string()),
            pa.field("batch_id", pa.int64()),
            # Why this image: the strategy that picked it, its score (higher: more to learn) and
            # its rank among its window's picks (docs/LABELING.md).
            pa.field("strategy", pa.string()),
            pa.field("score", pa.float64()),
            pa.field("rank", pa.int32()),
            pa.field("content_hash", pa.string()),
            pa.field("embedding", EMBEDDING),
            # Added for matching labels (docs/LABELING.md): the request's task id (a hash of path and
            # content hash, in the manifest) and the copy's file name in the labeling container.
            pa.field("task_id", pa.string()),
            pa.field("image_name", pa.string()),
            # The pixel thumbnail near-duplicates are found by (infra/core/labeling/pixels.py).
            pa.field("thumbnail", pa.binary()),
        ]
    ),
    # One row per image and content sent: new bytes of a path sent before are a new request.
    keys=("path", "content_hash"),
    partition_by=("request_date",),
    sort_by="sent_at",
)

# Images waiting for their labeling window to close, and what became of each (docs/LABELING.md):
# ``outcome`` is null while waiting, then "sent", "near_duplicate", "class_capped" or "not_chosen".
LABELING_CANDIDATES = TableSpec(
    "labeling_candidates",
    pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("window_date", pa.date32(), nullable=False),
            pa.field("window_start", TS),
            pa.field("load_date", pa.date32()),
            pa.field("queued_at", TS),
            pa.field("content", pa.binary()),
            pa.field("content_hash", pa.string()),
            pa.field("predicted_label", pa.string()),
            pa.field("confidence", pa.float64()),
            pa.field("probabilities", pa.list_(pa.float32())),
            pa.field("embedding", EMBEDDING),
            pa.field("class_names", pa.list_(pa.string())),
            pa.field("model_name", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("outcome", pa.string()),
            pa.field("decided_at", TS),
            pa.field("thumbnail", pa.binary()),  # as in labeling_requests
        ]
    ),
    keys=("path",),
    partition_by=("window_date",),
    sort_by="queued_at",
)

# Labeling-export entries the handlers could not apply, with the reason.
LABEL_REJECTS = TableSpec(
    "label_rejects",
    pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("entry", pa.int64(), nullable=False),
            pa.field("export_url", pa.string()),
            pa.field("image_ref", pa.string()),
            pa.field("label", pa.string()),
            pa.field("reason", pa.string()),
            pa.field("recorded_at", TS),
        ]
    ),
    keys=("event_id", "entry"),
    sort_by="recorded_at",
)

# Human labels that are not (or no longer) the label of their image, and why: replaced by a newer
# label, older than the label kept, or given for bytes the image no longer has (docs/LABELING.md).
# ``kept_label`` is the image's label after the decision: a row whose ``label`` differs records a disagreement.
LABEL_HISTORY = TableSpec(
    "label_history",
    pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("labeled_at", TS, nullable=False),
            pa.field("label", pa.string(), nullable=False),
            pa.field("content_hash", pa.string()),
            pa.field("kept_label", pa.string()),
            pa.field("reason", pa.string()),
            pa.field("event_id", pa.string()),
            pa.field("recorded_at", TS),
        ]
    ),
    keys=("path", "labeled_at", "label"),
    sort_by="recorded_at",
)

# Label Studio's annotations as lakesight received them (webhook or pull): one row per annotation,
# its newest version (``updated_at`` as Label Studio wrote it) and ``deleted_at`` once it is deleted
# there. A version recorded here is never applied again; a deletion restores the label before it.
LABEL_STUDIO_ANNOTATIONS = TableSpec(
    "label_studio_annotations",
    pa.schema(
        [
            pa.field("annotation_id", pa.int64(), nullable=False),
            pa.field("project", pa.int64()),
            pa.field("task_id", pa.string()),
            pa.field("label", pa.string()),
            pa.field("updated_at", pa.string()),
            pa.field("labeled_at", TS),
            pa.field("via", pa.string()),
            pa.field("received_at", TS),
            pa.field("deleted_at", TS),
        ]
    ),
    keys=("annotation_id",),
    sort_by="received_at",
)

# One row per retraining decision, keyed by its trigger (so a replayed trigger adds nothing).
RETRAINING_DECISIONS = TableSpec(
    "retraining_decisions",
    pa.schema(
        [
            pa.field("decision_id", pa.string(), nullable=False),
            pa.field("trigger", pa.string()),
            pa.field("decided_at", TS),
            pa.field("delta_version", pa.int64()),
            pa.field("champion_version", pa.string()),
            pa.field("champion_delta_version", pa.int64()),
            pa.field("new_labels", pa.int64()),
            pa.field("psi", pa.float64()),
            pa.field("js", pa.float64()),
            pa.field("champion_accuracy", pa.float64()),
            pa.field("accuracy_sample", pa.int64()),
            pa.field("dataset_drift", pa.float64()),
            pa.field("min_new_labels", pa.int64()),
            pa.field("drift_threshold", pa.float64()),
            pa.field("min_accuracy", pa.float64()),
            pa.field("min_sample", pa.int64()),
            pa.field("retrain", pa.bool_()),
            pa.field("reasons", pa.string()),
            pa.field("launch", pa.string()),
        ]
    ),
    keys=("decision_id",),
    sort_by="decided_at",
)

# One row per change in a challenger's live evidence or outcome (infra.core.promotion), keyed by
# the challenger and its tally, so a repeated label event that changed nothing adds nothing.
# ``b``: champion right, challenger wrong; ``c``: the reverse; ``outcome``: waiting, promoted or refused.
PROMOTION_DECISIONS = TableSpec(
    "promotion_decisions",
    pa.schema(
        [
            pa.field("decision_id", pa.string(), nullable=False),
            pa.field("decided_at", TS),
            pa.field("challenger_version", pa.string()),
            pa.field("champion_version", pa.string()),
            pa.field("split_accuracy", pa.float64()),
            pa.field("champion_split_accuracy", pa.float64()),
            pa.field("pairs", pa.int64()),
            pa.field("b", pa.int64()),
            pa.field("c", pa.int64()),
            pa.field("both_right", pa.int64()),
            pa.field("both_wrong", pa.int64()),
            pa.field("p_value", pa.float64()),
            pa.field("alpha", pa.float64()),
            pa.field("min_pairs", pa.int64()),
            pa.field("outcome", pa.string()),
            pa.field("reason", pa.string()),
        ]
    ),
    keys=("decision_id",),
    sort_by="decided_at",
)

# The model server's inference table: one row per image it answered (lakesight serve-model).
ONLINE_PREDICTIONS = TableSpec(
    "online_predictions",
    pa.schema(
        [
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("item", pa.int32(), nullable=False),
            pa.field("request_date", pa.date32(), nullable=False),
            pa.field("received_at", TS),
            pa.field("latency_ms", pa.float64()),
            pa.field("caller_id", pa.string()),
            pa.field("content_hash", pa.string()),
            pa.field("size_bytes", pa.int64()),
            pa.field("model_name", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("label", pa.string()),
            pa.field("confidence", pa.float64()),
            pa.field("error", pa.string()),
        ]
    ),
    keys=("request_id", "item"),
    partition_by=("request_date",),
    sort_by="received_at",
)

# One row per drift window of the scoring stream (docs/DRIFT.md), keyed by query and first batch.
DRIFT_REPORTS = TableSpec(
    "drift_reports",
    pa.schema(
        [
            pa.field("report_id", pa.string(), nullable=False),
            pa.field("report_date", pa.date32(), nullable=False),
            pa.field("window_start", TS),
            pa.field("window_end", TS),
            pa.field("first_batch_id", pa.int64()),
            pa.field("last_batch_id", pa.int64()),
            pa.field("images", pa.int64()),
            pa.field("model_version", pa.string()),
            pa.field("psi_confidence", pa.float64()),
            pa.field("psi_classes", pa.float64()),
            pa.field("psi_threshold", pa.float64()),
            pa.field("mmd", pa.float64()),
            pa.field("mmd_threshold", pa.float64()),
            pa.field("mmd_p_value", pa.float64()),
            pa.field("alpha", pa.float64()),
            pa.field("drifted", pa.bool_()),
            pa.field("reasons", pa.string()),
            pa.field("atypical_paths", pa.list_(pa.string())),
            pa.field("event_id", pa.string()),
            pa.field("event_error", pa.string()),
        ]
    ),
    keys=("report_id",),
    partition_by=("report_date",),
    sort_by="window_end",
)

TABLES = (
    IMAGES,
    LABELING_REQUESTS,
    LABELING_CANDIDATES,
    LABEL_REJECTS,
    LABEL_HISTORY,
    LABEL_STUDIO_ANNOTATIONS,
    RETRAINING_DECISIONS,
    PROMOTION_DECISIONS,
    ONLINE_PREDICTIONS,
    DRIFT_REPORTS,
)


def embeddings_spec(name: str) -> TableSpec:
    """A table ``lakesight featurize`` writes: one row per image path with the model's embedding.

    Any name but lakesight's own tables (:data:`TABLES`); MERGEd on ``path``, so featurizing the
    same images again updates their rows. ``error`` is set (and the prediction columns null) for
    an image that could not be read or decoded.
    """
    return TableSpec(
        name,
        pa.schema(
            [
                pa.field("path", pa.string(), nullable=False),
                pa.field("content_hash", pa.string()),
                pa.field("embedding", EMBEDDING),
                pa.field("predicted_label", pa.string()),
                pa.field("confidence", pa.float64()),
                pa.field("model_name", pa.string()),
                pa.field("model_version", pa.string()),
                pa.field("featurized_at", TS),
                pa.field("error", pa.string()),
            ]
        ),
        keys=("path",),
        sort_by="featurized_at",
    )


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


def latest_per_path(table: pa.Table) -> pa.Table:
    """Keep one row per path, the latest event's: a MERGE source must not name one target row twice.

    Latest is the greatest ``modified_at`` (an arrival's event time, a file's modification time),
    then the later row. Row order alone is not event order: Spark concatenates a micro-batch's
    partitions in its own order, so two records of one blob in different files may come either way.
    """
    if table.num_rows < 2 or pc.count_distinct(table.column("path")).as_py() == table.num_rows:
        return table
    if "modified_at" in table.column_names:
        times = pc.fill_null(table.column("modified_at").cast(pa.int64()), -(2**63)).to_pylist()
    else:
        times = [0] * table.num_rows
    latest: dict[str, tuple[int, int]] = {}
    for row, (path, moment) in enumerate(zip(table.column("path").to_pylist(), times, strict=True)):
        latest[path] = max(latest.get(path, (moment, row)), (moment, row))
    return table.take(pa.array(sorted(row for _, row in latest.values()), type=pa.int64()))
