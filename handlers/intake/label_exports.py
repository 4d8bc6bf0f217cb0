"""Azure ML data labeling exports (COCO JSON and JSONL) → human labels MERGEd into ``images``.

Only the label columns are written (``label``, ``label_source='human'``, ``labeled_at``); prediction
columns are never touched. The MERGE carries an app transaction named after the export event, so a
replay of the same export commits nothing. Entries that match no image, match several, or name an
unknown class are kept in the ``label_rejects`` table with the reason: no label is lost.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Protocol
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc

from handlers.api import safe_json
from infra.blob import BlobStore
from infra.blob_names import canonical_blob_url, validate_blob_name
from infra.errors import LakesightError
from infra.lake import Lake, Transaction
from infra.tables import IMAGES, LABEL_REJECTS, LABEL_SOURCE_HUMAN, TS

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
    """One labeled image in an export: every reference it gives (URLs, file name) and its class."""

    refs: tuple[str, ...]
    label: str


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
            entries.append(LabelEntry(refs=refs, label=label))
    except (KeyError, TypeError) as exc:
        raise ExportError(f"COCO export is missing a field: {exc}") from exc
    return entries


def _jsonl_entry(number: int, line: bytes) -> LabelEntry:
    """The entry on JSONL line ``number`` (1-based), or :class:`ExportError` naming the line."""
    try:
        row = safe_json.loads(line)
        url, label = row["image_url"], row["label"]
    except (safe_json.UntrustedJSONError, KeyError, TypeError) as exc:
        raise ExportError(f"JSONL line {number} is not an image_url/label object: {exc}") from exc
    if isinstance(label, list):  # multi-label exports: lakesight classifies, so one label only
        if len(label) != 1:
            raise ExportError(f"JSONL line {number} has {len(label)} labels; one expected")
        label = label[0]
    return LabelEntry(refs=(str(url),), label=str(label))


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

    Every JSONL entry names its image by ``image_url``; a COCO document never does (its images
    have ``file_name``, ``coco_url``, ``absolute_url``), and its first line may be a bare ``{``.
    """
    return b'"image_url"' in first_line


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


def _canonical(ref: str) -> str | None:
    """A blob URL as ``images`` keys it (an export may name it with a SAS query, upper case, dfs)."""
    if "://" not in ref:
        return None
    try:
        return canonical_blob_url(ref)
    except ValueError:  # not a blob URL lakesight would store (azureml://, another scheme)
        return None


def ref_segments(ref: str) -> list[str]:
    """Path segments of an image reference: blob URL, ``azureml://…/paths/…`` URI or file name."""
    parsed = urlparse(ref)
    path = unquote(parsed.path if parsed.scheme else ref)
    if parsed.scheme == "azureml" and "/paths/" in path:
        path = path.split("/paths/", 1)[1]
    return [s for s in path.split("/") if s]


class ImageIndex:
    """Rows of ``images`` findable by exact path or by a unique path suffix."""

    def __init__(self, paths: list[str], load_dates: list[dt.date]):
        self.exact = dict(zip(paths, load_dates, strict=True))
        self.suffixes: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for path in paths:
            segments = ref_segments(path)
            for start in range(len(segments)):
                self.suffixes[tuple(segments[start:])].append(path)

    def match(self, entry: LabelEntry) -> tuple[str | None, str]:
        """``(path, "")`` for the image ``entry`` names, or ``(None, reason)``."""
        for ref in entry.refs:
            for candidate in (ref, _canonical(ref)):
                if candidate in self.exact:
                    return candidate, ""
        ambiguous = False
        for ref in entry.refs:
            segments = ref_segments(ref)
            # Longest suffix first: "images/2026/a.png" beats "a.png".
            for start in range(len(segments)):
                found = self.suffixes.get(tuple(segments[start:]), [])
                if len(found) == 1:
                    return found[0], ""
                if len(found) > 1:
                    ambiguous = True
                    break
        return None, "ambiguous image" if ambiguous else "unknown image"


def known_classes(lake: Lake, configured: list[str]) -> set[str] | None:
    """The classes an export may use: configured ones, else the labels already in ``images``.

    None (accept all) on a lake with no labels yet: there is nothing to check against.
    """
    if configured:
        return set(configured)
    labels = lake.read(IMAGES, columns=["label"]).column("label")
    found = {v for v in pc.unique(labels).to_pylist() if v is not None}
    return found or None


def apply_export(
    lake: Lake,
    entries: list[LabelEntry],
    *,
    event_id: str,
    export_url: str,
    classes: list[str] | None = None,
    labeled_at: dt.datetime | None = None,
) -> LabelReport:
    """MERGE the export's labels into ``images`` once per ``event_id``; record what cannot be applied."""
    report = LabelReport(entries=len(entries))
    lake.images()
    snapshot = lake.read(IMAGES, columns=["path", "load_date"])
    index = ImageIndex(snapshot.column("path").to_pylist(), snapshot.column("load_date").to_pylist())
    known = known_classes(lake, classes or [])
    stamp = labeled_at or dt.datetime.now(dt.UTC)

    chosen: dict[str, str] = {}  # path -> label; a later entry for the same image wins
    rejects = []
    for number, entry in enumerate(entries):
        path, reason = index.match(entry)
        if path is not None and known is not None and entry.label not in known:
            path, reason = None, "unknown class"
            report.unknown_classes[entry.label] += 1
        elif reason == "unknown image":
            report.unknown_images += 1
        elif reason == "ambiguous image":
            report.ambiguous_images += 1
        if path is None:
            rejects.append(
                {
                    "event_id": event_id,
                    "entry": number,
                    "export_url": export_url,
                    "image_ref": entry.refs[0] if entry.refs else "",
                    "label": entry.label,
                    "reason": reason,
                    "recorded_at": stamp,
                }
            )
        else:
            chosen[path] = entry.label

    if rejects:
        log.warning(
            "export %s: %d entries not applied (%s)",
            export_url,
            len(rejects),
            dict(Counter(r["reason"] for r in rejects)),
        )
        lake.merge(LABEL_REJECTS, pa.Table.from_pylist(rejects, schema=LABEL_REJECTS.schema))
    if chosen:
        source = pa.table(
            {
                "path": list(chosen),
                "load_date": pa.array([index.exact[p] for p in chosen], pa.date32()),
                "label": list(chosen.values()),
                "label_source": [LABEL_SOURCE_HUMAN] * len(chosen),
                "labeled_at": pa.array([stamp] * len(chosen), TS),
            }
        )
        outcome = lake.merge(
            IMAGES,
            source,
            update={"label": "s.label", "label_source": "s.label_source", "labeled_at": "s.labeled_at"},
            when="(t.label IS DISTINCT FROM s.label) OR (t.label_source IS DISTINCT FROM s.label_source)",
            insert=False,
            txn=Transaction(f"lakesight-labels-{event_id}", 1),
        )
        report.merged = len(chosen)
        report.updated = outcome.updated
        report.skipped_replay = outcome.skipped
        report.delta_version = outcome.version
    return report
