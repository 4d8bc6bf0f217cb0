"""Azure ML data labeling exports (COCO JSON and JSONL) → human labels MERGEd into ``images``.

Only the label columns are written (``label``, ``label_source='human'``, ``labeled_at``); prediction
columns are never touched. The MERGE carries an app transaction named after the export event, so a
replay of the same export commits nothing. Entries that match no image, match several, or name an
unknown class are kept in the ``label_rejects`` table with the reason: no label is lost.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from handlers.api import safe_json
from infra.blob import BlobStore
from infra.blob_names import validate_blob_name
from infra.core.labeling.matching import AMBIGUOUS_NAME, TASK, UNKNOWN_IMAGE, Matcher, Ref, Target
from infra.errors import LakesightError
from infra.image_bytes import STALE_BYTES
from infra.lake import Lake, Transaction
from infra.settings import Settings
from infra.tables import IMAGES, LABEL_HISTORY, LABEL_REJECTS, LABEL_SOURCE_HUMAN, TS

log = logging.getLogger(__name__)


class ExportError(LakesightError, ValueError):
    """The export file is not a COCO or JSONL labeling export."""


class ExportTooLarge(ExportError):
    """The export is larger than ``max_export_bytes``: refused before it is read whole."""

    def __init__(self, max_bytes: int):
        super().__init__(f"export larger than {max_bytes} bytes (LAKESIGHT_MAX_EXPORT_BYTES)")


def check_declared_size(length: object, max_bytes: int) -> None:
    """Refuse an export whose event declares more than ``max_bytes`` before anything is downloaded."""
    if isinstance(length, int) and length > max_bytes:
        raise ExportTooLarge(max_bytes)


class ExportStore(Protocol):
    """Where the slow lane reads exports from: a blob's bytes, chunk by chunk."""

    def chunks(self, container: str, name: str) -> Iterator[bytes]: ...


class BlobExports:
    """The configured blob account as an :class:`ExportStore`: the SDK's download, never the whole blob at once."""

    def __init__(self, store: BlobStore):
        self.store = store

    def chunks(self, container: str, name: str) -> Iterator[bytes]:
        client = self.store.service.get_blob_client(container, validate_blob_name(name))
        yield from client.download_blob().chunks()


@dataclass(frozen=True)
class LabelEntry:
    """One labeled image in an export: every reference it gives (task id, URLs, file name), its class,
    and when the human gave it (None: the export does not say; the export's own time is used)."""

    refs: tuple[str, ...]
    label: str
    labeled_at: dt.datetime | None = None
    task_id: str | None = None


@dataclass
class LabelReport:
    entries: int = 0
    merged: int = 0
    updated: int = 0
    skipped_replay: bool = False
    delta_version: int | None = None
    unknown_images: int = 0
    ambiguous_images: int = 0
    unknown_classes: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)  # reason -> entries

    def count_reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        if reason == UNKNOWN_IMAGE:
            self.unknown_images += 1
        elif reason == AMBIGUOUS_NAME:
            self.ambiguous_images += 1

    def as_dict(self) -> dict[str, object]:
        return {
            "entries": self.entries,
            "merged": self.merged,
            "updated": self.updated,
            "skipped_replay": self.skipped_replay,
            "delta_version": self.delta_version,
            "unknown_images": self.unknown_images,
            "ambiguous_images": self.ambiguous_images,
            "unknown_classes": dict(self.unknown_classes),
            "rejected": dict(self.rejected),
        }


def _coco(doc: dict) -> list[LabelEntry]:
    try:
        categories = {c["id"]: str(c["name"]) for c in doc.get("categories", [])}
        images = {i["id"]: i for i in doc["images"]}
        entries = []
        for ann in doc.get("annotations", []):
            image = images.get(ann["image_id"])
            if image is None:
                raise ExportError(f"annotation names image id {ann['image_id']!r} missing from images[]")
            label = categories.get(ann["category_id"])
            if label is None:
                raise ExportError(f"annotation names category id {ann['category_id']!r} missing from categories[]")
            refs = tuple(str(image[k]) for k in ("absolute_url", "coco_url", "file_name") if image.get(k))
            when = label_time(ann.get("updated_at") or ann.get("created_at"), f"annotation {ann.get('id')!r}")
            entries.append(LabelEntry(refs=refs, label=label, labeled_at=when))
    except (KeyError, TypeError) as exc:
        raise ExportError(f"COCO export is missing a field: {exc}") from exc
    return entries


def _jsonl_entry(number: int, line: bytes) -> LabelEntry:
    """The entry on JSONL line ``number`` (1-based), or :class:`ExportError` naming the line."""
    try:
        row = safe_json.loads(line)
        url, task, label = row.get("image_url"), row.get("task_id"), row["label"]
    except (safe_json.UntrustedJSONError, KeyError, TypeError, AttributeError) as exc:
        raise ExportError(f"JSONL line {number} is not an image_url/label object: {exc}") from exc
    if not url and task is None:
        raise ExportError(f"JSONL line {number} names no image (image_url or task_id)")
    if isinstance(label, list):  # multi-label exports: lakesight classifies, so one label only
        if len(label) != 1:
            raise ExportError(f"JSONL line {number} has {len(label)} labels; one expected")
        label = label[0]
    when = label_time(row.get("labeled_at") or row.get("updated_at"), f"JSONL line {number}")
    refs = (str(url),) if url else ()
    return LabelEntry(refs=refs, label=str(label), labeled_at=when, task_id=None if task is None else str(task))


def label_time(value: object, where: str) -> dt.datetime | None:
    """An entry's label time (ISO 8601; UTC when it names no zone), None when absent."""
    if value is None or value == "":
        return None
    try:
        when = dt.datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise ExportError(f"{where}: {value!r} is not an ISO 8601 time") from exc
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def export_time(event_time: str) -> dt.datetime | None:
    """The time of the event that announced an export: the version of its entries without a time."""
    try:
        return label_time(event_time, "event time")
    except ExportError:
        return None


def _capped(chunks: Iterable[bytes], max_bytes: int) -> Iterator[bytes]:
    """``chunks`` as they come, refused (:class:`ExportTooLarge`) as soon as they pass ``max_bytes``."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise ExportTooLarge(max_bytes)
        yield chunk


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of the byte stream, without their newline; only the current line is held."""
    partial: list[bytes] = []  # pieces of a line that spans chunks (joined once: no quadratic copying)
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            partial.append(chunk[start:end])
            yield b"".join(partial)
            partial, start = [], end + 1
        partial.append(chunk[start:])
    if any(partial):
        yield b"".join(partial)


def _is_jsonl(first_line: bytes) -> bool:
    """Whether an export whose first non-empty line is ``first_line`` is JSONL rather than COCO JSON.

    Every JSONL entry names its image by ``image_url`` or ``task_id``; a COCO document never does
    (its images have ``file_name``, ``coco_url``, ``absolute_url``), and its first line may be a bare ``{``.
    """
    return b'"image_url"' in first_line or b'"task_id"' in first_line


def _coco_document(text: bytes) -> list[LabelEntry]:
    try:
        doc = safe_json.loads(text)
    except safe_json.UntrustedJSONError as exc:
        raise ExportError(f"truncated/invalid COCO JSON: {exc}") from exc
    if not isinstance(doc, dict) or "images" not in doc:
        raise ExportError("JSON export has no images[] (COCO) and is not a JSONL line")
    return _coco(doc)


def parse_export(data: bytes | Iterable[bytes], *, max_bytes: int | None = None) -> list[LabelEntry]:
    """Entries of a COCO JSON or JSONL export; :class:`ExportError` for anything else.

    ``data`` is the whole export or its chunks as they are downloaded: JSONL is read line by line
    (one line in memory at a time), a COCO document (one JSON value) is read whole. More than
    ``max_bytes`` is refused with :class:`ExportTooLarge` as soon as the stream passes it.
    """
    chunks = [data] if isinstance(data, bytes) else data
    lines = _lines(_capped(chunks, max_bytes) if max_bytes is not None else chunks)
    head: list[bytes] = []
    for line in lines:
        head.append(line)
        if line.strip():
            break
    if not any(line.strip() for line in head):
        return []  # an empty export labels nothing
    if not _is_jsonl(head[-1]):
        return _coco_document(b"\n".join(chain(head, lines)))
    numbered = enumerate(chain(head, lines), 1)
    return [_jsonl_entry(number, line) for number, line in numbered if line.strip()]


def known_classes(lake: Lake, configured: list[str]) -> set[str] | None:
    """The classes an export may use: configured ones, else the labels already in ``images``.

    None (accept all) on a lake with no labels yet: there is nothing to check against.
    """
    if configured:
        return set(configured)
    labels = lake.read(IMAGES, columns=["label"]).column("label")
    found = {v for v in pc.unique(labels).to_pylist() if v is not None}
    return found or None


# The one rule of which human label an image keeps (docs/LABELING.md, "Label versions"): a label
# for the bytes the image has now, newer than its human label, and saying something new. Replays
# and older exports fail it and change nothing; :func:`_verdict` is the same rule in Python.
NEWER_LABEL = (
    "(s.labeled_content_hash IS NULL OR t.content_hash IS NULL OR t.content_hash = s.labeled_content_hash)"
    f" AND ((t.label_source IS DISTINCT FROM '{LABEL_SOURCE_HUMAN}') OR (t.labeled_at IS NULL)"
    " OR (s.labeled_at > t.labeled_at))"
    " AND ((t.label IS DISTINCT FROM s.label) OR (t.label_source IS DISTINCT FROM s.label_source)"
    " OR (t.labeled_content_hash IS DISTINCT FROM s.labeled_content_hash))"
)
LABEL_UPDATE = {
    "label": "s.label",
    "label_source": "s.label_source",
    "labeled_at": "s.labeled_at",
    "labeled_content_hash": "s.labeled_content_hash",
}
# Why a human label is in ``label_history``.
REPLACED = "replaced by a newer label"
OLDER = "older than the label kept"
UNKNOWN_CLASS = "unknown class"


@dataclass(frozen=True)
class _Label:
    label: str
    labeled_at: dt.datetime
    target: Target


def _refs(matcher: Matcher, entry: LabelEntry) -> list[Ref | str]:
    """The entry's references in lookup form: its task id first, then what it names, in order."""
    refs: list[Ref | str] = [Ref(TASK, entry.task_id)] if entry.task_id else []
    return refs + [matcher.ref(raw) for raw in entry.refs]


def apply_export(
    settings: Settings,
    lake: Lake,
    entries: list[LabelEntry],
    *,
    event_id: str,
    export_url: str,
    classes: list[str] | None = None,
    labeled_at: dt.datetime | None = None,
) -> LabelReport:
    """MERGE the export's labels into ``images`` once per ``event_id``; record what cannot be applied.

    ``labeled_at`` is the export's own time: the version of its entries that carry no time of their own.
    """
    report = LabelReport(entries=len(entries))
    lake.images()
    known = known_classes(lake, classes or [])
    now = dt.datetime.now(dt.UTC)
    stamp = labeled_at or now
    matcher = Matcher(settings)
    targets = matcher.resolve(lake, [_refs(matcher, entry) for entry in entries])

    chosen: dict[str, _Label] = {}  # path -> the newest label of this export for it
    outvoted: list[_Label] = []  # an image labeled twice in one export: the older entry
    rejects = []
    for number, (entry, target) in enumerate(zip(entries, targets, strict=True)):
        reason = target if isinstance(target, str) else ""
        if not reason and known is not None and entry.label not in known:
            reason = UNKNOWN_CLASS
            report.unknown_classes[entry.label] += 1
        if reason or isinstance(target, str):
            report.count_reject(reason)
            rejects.append(_reject_row(event_id, number, export_url, entry, reason, now))
            continue
        label = _Label(entry.label, entry.labeled_at or stamp, target)
        previous = chosen.get(target.path)
        if previous is not None and previous.labeled_at > label.labeled_at:
            label, previous = previous, label
        if previous is not None:
            outvoted.append(previous)
        chosen[target.path] = label

    _record_rejects(lake, export_url, rejects)
    if chosen:
        _record_history(lake, chosen, outvoted, event_id, now)
        outcome = lake.merge(
            IMAGES,
            _label_rows(list(chosen.values())),
            update=LABEL_UPDATE,
            when=NEWER_LABEL,
            insert=False,
            txn=Transaction(f"lakesight-labels-{event_id}", 1),
        )
        report.merged = len(chosen)
        report.updated = outcome.updated
        report.skipped_replay = outcome.skipped
        report.delta_version = outcome.version
    return report


def _reject_row(
    event_id: str, number: int, export_url: str, entry: LabelEntry, reason: str, now: dt.datetime
) -> dict[str, object]:
    first = entry.refs[0] if entry.refs else ""
    return {
        "event_id": event_id,
        "entry": number,
        "export_url": export_url,
        "image_ref": first or (f"task:{entry.task_id}" if entry.task_id else ""),
        "label": entry.label,
        "reason": reason,
        "recorded_at": now,
    }


def _record_rejects(lake: Lake, export_url: str, rejects: list[dict[str, object]]) -> None:
    if not rejects:
        return
    reasons = dict(Counter(str(r["reason"]) for r in rejects))
    log.warning("export %s: %d entries not applied (%s)", export_url, len(rejects), reasons)
    lake.merge(LABEL_REJECTS, pa.Table.from_pylist(rejects, schema=LABEL_REJECTS.schema))


def _label_rows(labels: list[_Label]) -> pa.Table:
    return pa.table(
        {
            "path": [x.target.path for x in labels],
            "load_date": pa.array([x.target.load_date for x in labels], pa.date32()),
            "label": [x.label for x in labels],
            "label_source": [LABEL_SOURCE_HUMAN] * len(labels),
            "labeled_at": pa.array([x.labeled_at for x in labels], TS),
            "labeled_content_hash": pa.array([x.target.labeled_hash for x in labels], pa.string()),
        }
    )


def _verdict(label: _Label) -> tuple[bool, dict[str, object] | None]:
    """Whether ``label`` becomes its image's label (:data:`NEWER_LABEL`), and the label that goes
    to history because of it: the one replaced, or ``label`` itself when it loses."""
    row = label.target.current
    kept = {"path": label.target.path, "content_hash": label.target.labeled_hash}
    incoming = {**kept, "labeled_at": label.labeled_at, "label": label.label, "kept_label": row["label"]}
    if label.target.labeled_hash and row["content_hash"] and label.target.labeled_hash != row["content_hash"]:
        return False, {**incoming, "reason": STALE_BYTES}
    human = row["label_source"] == LABEL_SOURCE_HUMAN and row["labeled_at"] is not None
    if human and label.labeled_at <= row["labeled_at"]:
        return False, ({**incoming, "reason": OLDER} if label.label != row["label"] else None)
    if not human or (label.label == row["label"] and label.target.labeled_hash == row["labeled_content_hash"]):
        return True, None
    replaced = {
        "path": label.target.path,
        "labeled_at": row["labeled_at"],
        "label": row["label"],
        "content_hash": row["labeled_content_hash"],
        "kept_label": label.label,
        "reason": REPLACED,
    }
    return True, replaced


def _record_history(
    lake: Lake, chosen: dict[str, _Label], outvoted: list[_Label], event_id: str, now: dt.datetime
) -> None:
    """Every human label this export displaces or loses to, kept in ``label_history`` (once: keyed)."""
    rows = [row for label in chosen.values() if (row := _verdict(label)[1]) is not None]
    for loser in outvoted:
        winner = chosen[loser.target.path]
        if loser.label != winner.label:
            rows.append(
                {
                    "path": loser.target.path,
                    "labeled_at": loser.labeled_at,
                    "label": loser.label,
                    "content_hash": loser.target.labeled_hash,
                    "kept_label": winner.label,
                    "reason": OLDER,
                }
            )
    if rows:
        table = pa.Table.from_pylist([{**r, "event_id": event_id, "recorded_at": now} for r in rows])
        lake.merge(LABEL_HISTORY, table, insert=True)
