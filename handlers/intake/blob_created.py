"""``Microsoft.Storage.BlobCreated``: which upload it is, whether lakesight cares, and the arrival record.

Guards from docs/PLATFORM.md: only the APIs that complete a blob count, empty blobs are skipped, the
URL must name a configured container of the configured account, and the blob name must be safe. The
URL is canonicalised (``infra.blob_names.blob_ref``) before anything else uses it: variants of one upload's
URL are one upload to the event log and one ``images`` row key, and no userinfo or SAS query is kept.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from handlers.api.payloads import COMPLETE_BLOB_APIS, Event
from handlers.intake.eventlog import EventStatus
from infra.arrivals import ArrivalRecord
from infra.blob import account_url as account_url  # re-exported: the service and tests read it from here
from infra.blob_names import BlobNameError, BlobRef, blob_ref
from infra.errors import LakesightError
from infra.settings import Settings

# The largest blob Azure Storage holds (a block blob: 50,000 blocks of 4,000 MiB); a larger
# contentLength is not a real upload.
MAX_BLOB_BYTES = 50_000 * 4000 * 1024 * 1024

# The statuses an event lakesight does not act on can end with.
_NOT_ACTED_ON = frozenset({EventStatus.IGNORED, EventStatus.REFUSED})


class TargetKind(StrEnum):
    """What a blob in a handled container is to lakesight (not a table name)."""

    IMAGE = "image"  # a new image in the images container: an arrival record for the stream
    EXPORT = "export"  # a labeling export in the exports container: human labels


class Refused(LakesightError, ValueError):
    """An event lakesight will not act on, with the reason logged as its outcome.

    ``status`` is :attr:`EventStatus.IGNORED` (nothing to do) or :attr:`EventStatus.REFUSED`
    (invalid or not allowed); anything else is a ValueError.
    """

    def __init__(self, status: EventStatus, reason: str):
        super().__init__(reason)
        self.status = EventStatus(status)
        if self.status not in _NOT_ACTED_ON:
            raise ValueError(f"Refused takes {sorted(_NOT_ACTED_ON)}, not {self.status!r}")


@dataclass(frozen=True)
class BlobTarget:
    kind: TargetKind
    container: str
    name: str
    url: str  # canonical (``infra.blob_names.canonical_blob_url``): the dedupe key and the row key
    etag: str


def event_time(event: Event) -> str:
    """The event's time as ISO-8601 UTC with microseconds (Event Grid sends 7 fractional digits)."""
    if not event.time:
        return dt.datetime.now(dt.UTC).isoformat()
    try:
        parsed = dt.datetime.fromisoformat(event.time.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Refused(EventStatus.REFUSED, f"eventTime {event.time!r} is not ISO-8601") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC).isoformat()


def blob_target(settings: Settings, base_url: str, event: Event) -> BlobTarget:
    """The configured container and safe blob name this event is about, or :class:`Refused`."""
    data = event.data
    api = data.get("api")
    if api not in COMPLETE_BLOB_APIS:
        raise Refused(EventStatus.IGNORED, f"api {api!r} does not complete a blob")
    length = data.get("contentLength")
    # bool is an int subclass: ``true`` must not pass as a length of 1.
    if type(length) is not int or not 0 <= length <= MAX_BLOB_BYTES:
        raise Refused(EventStatus.REFUSED, f"contentLength {repr(length)[:30]} is not a byte count")
    if length == 0:
        raise Refused(EventStatus.IGNORED, "zero-byte blob (placeholder of a copy or chunked upload)")
    url, etag = data.get("url"), data.get("eTag")
    if not isinstance(url, str) or not isinstance(etag, str) or not etag:
        raise Refused(EventStatus.REFUSED, "BlobCreated without url or eTag")
    ref = _located(base_url, event, url)
    kind = target_kind(settings, ref.container, ref.name)
    return BlobTarget(kind=kind, container=ref.container, name=ref.name, url=ref.url, etag=etag.strip('"'))


def _located(base_url: str, event: Event, url: str) -> BlobRef:
    """The canonical reference of ``url``, refused unless it is safe and in the configured account."""
    try:
        ref = blob_ref(url, account_url=base_url)
    except BlobNameError as exc:
        raise Refused(EventStatus.REFUSED, f"unsafe blob url: {exc}") from exc
    if event.subject and f"/containers/{ref.container}/" not in event.subject:
        raise Refused(EventStatus.REFUSED, f"subject {event.subject!r} does not match url {ref.url}")
    return ref


def target_kind(settings: Settings, container: str, name: str) -> TargetKind:
    """What blob ``name`` in ``container`` is to lakesight, or :class:`Refused` for one it does not handle."""
    if container == settings.images_container:
        return TargetKind.IMAGE
    if container != settings.exports_container:
        raise Refused(EventStatus.REFUSED, f"container {container!r} is not one lakesight handles")
    if not name.lower().endswith((".json", ".jsonl")):
        raise Refused(EventStatus.IGNORED, f"{name} in the exports container is not a .json/.jsonl export")
    return TargetKind.EXPORT


def arrival_record(target: BlobTarget, event: Event) -> ArrivalRecord:
    """The record the scoring stream reads for one new image blob."""
    data = event.data
    return ArrivalRecord(
        url=target.url,
        container=target.container,
        name=target.name,
        etag=target.etag,
        content_type=str(data.get("contentType") or "application/octet-stream"),
        content_length=int(data["contentLength"]),
        event_time=event_time(event),
        event_id=event.id,
        sequencer=str(data.get("sequencer") or ""),
    )
