"""``Microsoft.Storage.BlobCreated``: which upload it is, whether lakesight cares, and the arrival record.

Guards from docs/PLATFORM.md: only the APIs that complete a blob count, empty blobs are skipped, the
URL must name a configured container of the configured account, and the blob name must be safe.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import urlparse

from handlers.events import COMPLETE_BLOB_APIS, Event
from infra.arrivals import ArrivalRecord
from infra.blob import BlobNameError, split_blob_url
from infra.settings import Settings

IMAGES = "images"
EXPORT = "export"


class Refused(ValueError):
    """An event lakesight will not act on, with the reason logged as its outcome."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class BlobTarget:
    kind: str  # IMAGES or EXPORT
    container: str
    name: str
    url: str
    etag: str


def account_url(settings: Settings) -> str:
    """The configured blob account's base URL (``http://host:port/account/`` on Azurite)."""
    from azure.storage.blob import BlobServiceClient

    conn = settings.blob_connection()
    return BlobServiceClient.from_connection_string(conn).url


def _same_account(url: str, base: str) -> bool:
    got, want = urlparse(url), urlparse(base)
    # ADLS Gen2 events name the dfs endpoint of the same account.
    host = (got.hostname or "").replace(".dfs.core.", ".blob.core.")
    return host == (want.hostname or "") and got.port == want.port and got.path.startswith(want.path)


def event_time(event: Event) -> str:
    """The event's time as ISO-8601 UTC with microseconds (Event Grid sends 7 fractional digits)."""
    if not event.time:
        return dt.datetime.now(dt.UTC).isoformat()
    try:
        parsed = dt.datetime.fromisoformat(event.time.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Refused("refused", f"eventTime {event.time!r} is not ISO-8601") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC).isoformat()


def blob_target(settings: Settings, base_url: str, event: Event) -> BlobTarget:
    """The configured container and safe blob name this event is about, or :class:`Refused`."""
    data = event.data
    api = data.get("api")
    if api not in COMPLETE_BLOB_APIS:
        raise Refused("ignored", f"api {api!r} does not complete a blob")
    length = data.get("contentLength")
    if not isinstance(length, int) or length < 0:
        raise Refused("refused", f"contentLength {length!r} is not a byte count")
    if length == 0:
        raise Refused("ignored", "zero-byte blob (placeholder of a copy or chunked upload)")
    url, etag = data.get("url"), data.get("eTag")
    if not isinstance(url, str) or not isinstance(etag, str) or not etag:
        raise Refused("refused", "BlobCreated without url or eTag")
    try:
        container, name = split_blob_url(url)
    except BlobNameError as exc:
        raise Refused("refused", f"unsafe blob url: {exc}") from exc
    if not _same_account(url, base_url):
        raise Refused("refused", f"{url} is outside the configured storage account")
    if event.subject and f"/containers/{container}/" not in event.subject:
        raise Refused("refused", f"subject {event.subject!r} does not match url {url}")
    if container == settings.images_container:
        kind = IMAGES
    elif container == settings.exports_container:
        if not name.lower().endswith((".json", ".jsonl")):
            raise Refused("ignored", f"{name} in the exports container is not a .json/.jsonl export")
        kind = EXPORT
    else:
        raise Refused("refused", f"container {container!r} is not one lakesight handles")
    return BlobTarget(kind=kind, container=container, name=name, url=url, etag=etag.strip('"'))


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
