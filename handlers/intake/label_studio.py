"""Label Studio's annotations into the one label path of exports (``handlers.intake.label_exports.apply_export``).

Each annotation becomes an entry naming its image by the hand-off's task id (kept in the task's
data) and the copy's URL, versioned by the annotation's ``updated_at``: the MERGE keeps the newest
label per image, so pulling the same annotations again changes nothing, and an edited annotation
(a newer ``updated_at``) replaces the label it edited.

Every annotation version received (by webhook or pull) is recorded in ``label_studio_annotations``:
a pull applies only the versions not recorded yet, and finds the annotations deleted in Label
Studio that no ``ANNOTATIONS_DELETED`` webhook reported. A deleted annotation gives its image back
the label it replaced (from ``label_history``), or none.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from handlers.intake.label_exports import LABEL_UPDATE, REPLACED, LabelEntry, LabelReport, apply_export, label_time
from infra.core.labeling.label_studio import Annotation, LabelStudioClient, manifest_line_of
from infra.lake import Lake, Transaction
from infra.settings import Settings
from infra.tables import (
    IMAGES,
    LABEL_HISTORY,
    LABEL_SOURCE_HUMAN,
    LABEL_STUDIO_ANNOTATIONS,
    LABELING_REQUESTS,
    TS,
)

log = logging.getLogger(__name__)

VIA_WEBHOOK, VIA_PULL = "webhook", "pull"
# Why a label is in label_history once its annotation was deleted in Label Studio.
DELETED = "annotation deleted in Label Studio"
LEDGER_COLUMNS = ["path", "sent_at", "image_url", "task_id", "predicted_label", "confidence", "model_version"]


def annotation_entries(annotations: list[Annotation]) -> list[LabelEntry]:
    """One export entry per annotation (an annotation without a single choice names class "")."""
    return [
        LabelEntry(
            refs=(a.image,) if a.image else (),
            label=a.label or "",
            labeled_at=label_time(a.updated_at, f"annotation {a.annotation_id}"),
            task_id=a.task_id,
        )
        for a in annotations
    ]


def record_annotations(lake: Lake, annotations: list[Annotation], *, via: str) -> None:
    """Record the annotation versions just applied (the newest per annotation; no longer deleted)."""
    if not annotations:
        return
    now = dt.datetime.now(dt.UTC)
    rows = pa.Table.from_pylist(
        [
            {
                "annotation_id": a.annotation_id,
                "project": a.project,
                "task_id": a.task_id,
                "label": a.label,
                "updated_at": a.updated_at,
                "labeled_at": label_time(a.updated_at, f"annotation {a.annotation_id}"),
                "via": via,
                "received_at": now,
                "deleted_at": None,
            }
            for a in {a.annotation_id: a for a in sorted(annotations, key=lambda a: a.updated_at)}.values()
        ],
        schema=LABEL_STUDIO_ANNOTATIONS.schema,
    )
    update = {name: f"s.{name}" for name in LABEL_STUDIO_ANNOTATIONS.schema.names if name != "annotation_id"}
    lake.merge(LABEL_STUDIO_ANNOTATIONS, rows, update=update)


def apply_annotation(
    settings: Settings, lake: Lake, annotation: Annotation, *, source: str, classes: list[str]
) -> LabelReport:
    """Apply one annotation (a webhook's): once per annotation and version, whatever the deliveries."""
    report = apply_export(
        settings,
        lake,
        annotation_entries([annotation]),
        event_id=f"label-studio-{annotation.annotation_id}@{annotation.updated_at}",
        export_url=source,
        classes=classes,
    )
    record_annotations(lake, [annotation], via=VIA_WEBHOOK)
    return report


def recorded(lake: Lake, *, project: int | None = None, ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """The recorded annotations of ``project`` (or with these ``ids``)."""
    if not lake.exists(LABEL_STUDIO_ANNOTATIONS):
        return []
    rows = lake.read(LABEL_STUDIO_ANNOTATIONS).to_pylist()
    wanted = set(ids) if ids is not None else None
    return [
        r
        for r in rows
        if (project is None or r["project"] == project) and (wanted is None or r["annotation_id"] in wanted)
    ]


def pull_labels(
    settings: Settings, lake: Lake, client: LabelStudioClient, project: int, *, classes: list[str]
) -> LabelReport:
    """Apply the annotation versions of ``project`` not received yet, and forget the annotations
    deleted there since (what a missed webhook dropped). Its MERGE carries a transaction id named
    after the versions it applies, so a pull that finds nothing new commits nothing."""
    annotations = sorted(client.annotations(project), key=lambda a: (a.annotation_id, a.updated_at))
    known = {r["annotation_id"]: r for r in recorded(lake, project=project)}
    present = {a.annotation_id for a in annotations}
    gone = [i for i, r in known.items() if r["deleted_at"] is None and i not in present]
    if gone:
        forget_annotations(lake, gone)
    new = [
        a
        for a in annotations
        if a.annotation_id not in known
        or known[a.annotation_id]["updated_at"] != a.updated_at
        or known[a.annotation_id]["deleted_at"] is not None
    ]
    if not new:
        return LabelReport(skipped_replay=True)
    versions = "\n".join(f"{a.annotation_id}@{a.updated_at}" for a in new)
    event_id = f"label-studio-{project}-{hashlib.sha256(versions.encode()).hexdigest()[:24]}"
    report = apply_export(
        settings,
        lake,
        annotation_entries(new),
        event_id=event_id,
        export_url=f"{client.url}/projects/{project}",
        classes=classes,
    )
    record_annotations(lake, new, via=VIA_PULL)
    return report


def forget_annotations(lake: Lake, ids: list[int]) -> int:
    """Annotations deleted in Label Studio: an image whose label is one of them gets back the label
    it replaced (the newest ``label_history`` row replaced before it, for the same bytes) or none;
    the deleted label goes to ``label_history``. Returns the images whose label changed."""
    gone = [r for r in recorded(lake, ids=ids) if r["deleted_at"] is None]
    if not gone:
        return 0
    ledger = lake.lookup(
        LABELING_REQUESTS, "task_id", [r["task_id"] for r in gone if r["task_id"]], ["task_id", "path"]
    )
    path_of = dict(zip(ledger.column("task_id").to_pylist(), ledger.column("path").to_pylist(), strict=True))
    paths = sorted({path_of[r["task_id"]] for r in gone if r["task_id"] in path_of})
    columns = ["path", "load_date", "label", "label_source", "labeled_at", "labeled_content_hash", "content_hash"]
    images = {r["path"]: r for r in lake.lookup(IMAGES, "path", paths, columns).to_pylist()}
    history = _history(lake, paths)
    now = dt.datetime.now(dt.UTC)
    restored: dict[str, dict[str, Any]] = {}
    forgotten = []
    # Labels deleted in this call are never the one to restore (their history rows are still 'replaced').
    deleted = {(r["labeled_at"], r["label"]) for r in gone}
    for row in sorted(gone, key=lambda r: r["labeled_at"], reverse=True):  # the newest label first
        image = images.get(path_of.get(row["task_id"], ""))
        if image is None:
            continue
        kept = image["label"]
        if _is_label_of(image, row):
            earlier = [h for h in history.get(image["path"], []) if (h["labeled_at"], h["label"]) not in deleted]
            previous = _previous_label(earlier, row["labeled_at"], image["content_hash"])
            restored[image["path"]] = _restored(image, previous)
            kept = restored[image["path"]]["label"]
        forgotten.append({**_history_row(image["path"], row, image), "kept_label": kept, "recorded_at": now})
    _commit_forgetting(lake, ids, list(restored.values()), forgotten, now)
    return len(restored)


def _history(lake: Lake, paths: list[str]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    columns = ["path", "labeled_at", "label", "content_hash", "reason"]
    for row in lake.lookup(LABEL_HISTORY, "path", paths, columns).to_pylist():
        found.setdefault(row["path"], []).append(row)
    return found


def _is_label_of(image: dict[str, Any], row: dict[str, Any]) -> bool:
    return (
        image["label_source"] == LABEL_SOURCE_HUMAN
        and image["label"] == row["label"]
        and image["labeled_at"] == row["labeled_at"]
    )


def _previous_label(history: list[dict[str, Any]], before: dt.datetime, content_hash: str | None) -> dict | None:
    """The newest human label replaced before ``before`` for these bytes (a deleted one never counts)."""
    candidates = [
        h
        for h in history
        if h["reason"] == REPLACED
        and h["labeled_at"] < before
        and (h["content_hash"] is None or content_hash is None or h["content_hash"] == content_hash)
    ]
    return max(candidates, key=lambda h: h["labeled_at"], default=None)


def _restored(image: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    base = {"path": image["path"], "load_date": image["load_date"]}
    if previous is None:
        return {**base, "label": None, "label_source": None, "labeled_at": None, "labeled_content_hash": None}
    return {
        **base,
        "label": previous["label"],
        "label_source": LABEL_SOURCE_HUMAN,
        "labeled_at": previous["labeled_at"],
        "labeled_content_hash": previous["content_hash"],
    }


def _history_row(path: str, row: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": path,
        "labeled_at": row["labeled_at"],
        "label": row["label"] or "",
        "content_hash": image["labeled_content_hash"] if _is_label_of(image, row) else None,
        "reason": DELETED,
        "event_id": f"label-studio-deleted-{row['annotation_id']}",
    }


def _commit_forgetting(
    lake: Lake, ids: list[int], restored: list[dict[str, Any]], forgotten: list[dict[str, Any]], now: dt.datetime
) -> None:
    """History first (a deleted label's row says so, even one replaced before), then ``images``,
    then the record: a crash in between is finished by the next pull, which finds them deleted again."""
    if forgotten:
        table = pa.Table.from_pylist(forgotten)
        lake.merge(LABEL_HISTORY, table, update={"reason": "s.reason", "event_id": "s.event_id"})
    if restored:
        key = hashlib.sha256(",".join(map(str, sorted(ids))).encode()).hexdigest()[:24]
        table = pa.Table.from_pylist(restored).cast(
            pa.schema([IMAGES.schema.field(name) for name in restored[0]]), safe=False
        )
        lake.merge(IMAGES, table, update=LABEL_UPDATE, insert=False, txn=Transaction(f"lakesight-forget-{key}", 1))
    marks = pa.table({"annotation_id": pa.array(sorted(ids), pa.int64()), "deleted_at": pa.array([now] * len(ids), TS)})
    lake.merge(LABEL_STUDIO_ANNOTATIONS, marks, update={"deleted_at": "s.deleted_at"}, insert=False)


def ledger_since(lake: Lake, since: dt.datetime | None) -> list[dict[str, Any]]:
    """The ledger's rows sent at or after ``since`` (all when None), as manifest lines."""
    if not lake.exists(LABELING_REQUESTS):
        return []
    # Every round reads the ledger since the cursor only: files older than it are pruned by their statistics.
    recent = None if since is None else pc.field("sent_at") >= pa.scalar(since, TS)
    table = lake.read(LABELING_REQUESTS, columns=LEDGER_COLUMNS, filters=recent)
    return [manifest_line_of(row) for row in table.to_pylist() if row["task_id"]]


def push_tasks(
    client: LabelStudioClient, project: int, lines: list[dict[str, Any]], *, show: Callable[[str], str] | None = None
) -> int:
    """Create the tasks of ``lines`` the project does not have yet (by the hand-off's task id): a
    retry after a failure or a crash never makes one twice. ``show`` turns a copy's URL into one the
    labeler's browser can load (a signed URL). The number created."""
    if not lines:
        return 0
    have = client.task_ids(project)
    missing = list({line["task_id"]: line for line in lines if line["task_id"] not in have}.values())
    if show is not None:
        missing = [{**line, "image_url": show(line["image_url"])} for line in missing]
    return client.import_tasks(project, missing) if missing else 0


# How long a task's signed image URL is valid: a task older than this shows no image.
TASK_IMAGE_VALID = dt.timedelta(days=30)


def image_signer(settings: Settings) -> Callable[[str], str]:
    """Signs the copies in the labeling container for a browser (read-only, :data:`TASK_IMAGE_VALID`)."""
    from infra.blob import BlobStore
    from infra.blob_names import blob_ref

    store = BlobStore(settings)

    def show(url: str) -> str:
        ref = blob_ref(url)
        return store.signed_url(ref.container, ref.name, valid_for=TASK_IMAGE_VALID)

    return show
