"""Arrival records: how the event handlers tell the scoring stream that a blob was created.

A record is one JSON object per line, in files under ``<arrivals_root>`` that appear
atomically (written under a hidden temp name, then renamed), so the stream's file source
never reads half a file. Fields:

=================  ===========================================================================
``url``            the blob's canonical URL (``infra.blob_names.canonical_blob_url``): the ``images`` row key
``container``      container name (validated)
``name``           blob name inside the container (validated: no ``..``, absolute, control chars)
``etag``           the blob's eTag at event time; (url, etag) identifies one upload
``content_type``   MIME type from the event
``content_length`` bytes, from the event (0-byte creations are filtered before writing)
``event_time``     ISO-8601 UTC time of the BlobCreated event: arrival time and load date
``event_id``       Event Grid event id (for tracing back to the event log)
``sequencer``      the event's sequencer (orders events for the same blob)
=================  ===========================================================================

Files are named ``arrivals-<UTC stamp>-<id>-<n>-<bytes>b.jsonl``: ``<bytes>`` is the sum of the
file's ``content_length``, so the stream can size its micro-batches in image bytes from a listing
alone (``record_file_bytes``), and no file carries more than ``score_max_bytes_per_trigger`` (one
record larger than that gets a file of its own).

The root is a local folder, or an ``abfss://``/``wasbs://`` folder of the storage account in
``LAKESIGHT_BLOB_CONNECTION_STRING``: the handlers upload each file through the Blob API (a blob
appears whole when its upload commits, so no temporary name is needed) and the stream reads the
folder with Spark's Hadoop connector (docs/DEPLOY.md, Arrival records on cloud storage).

The handlers write records; the stream reads them as a JSON file stream and fetches each
blob's bytes on executors. Both import only this module, never each other.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.blob import bounded_service_client, with_retries
from infra.blob_names import StorageFolder, storage_folder, validate_blob_name
from infra.errors import LakesightError
from infra.locations import local_path
from infra.settings import Settings

ARRIVAL_RECORD_DDL = (
    "url string, container string, name string, etag string, content_type string, "
    "content_length long, event_time timestamp, event_id string, sequencer string"
)


@dataclass(frozen=True)
class ArrivalRecord:
    url: str
    container: str
    name: str
    etag: str
    content_type: str
    content_length: int
    event_time: str
    event_id: str
    sequencer: str = ""

    def __post_init__(self) -> None:
        validate_blob_name(self.name)
        if self.content_length < 0:
            raise ValueError("content_length must not be negative")
        dt.datetime.fromisoformat(self.event_time.replace("Z", "+00:00"))

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


# ``<bytes>b.jsonl`` ends every record file's name: the image bytes its records announce.
_FILE_BYTES = re.compile(r"arrivals-.*-(\d+)b\.jsonl")


class ArrivalsError(LakesightError, RuntimeError):
    """Arrival records cannot be written where the settings say."""


@dataclass(frozen=True)
class ArrivalFile:
    """One record file as written: where it is, and the records in it."""

    location: str
    records: tuple[ArrivalRecord, ...]

    @property
    def name(self) -> str:
        return self.location.rpartition("/")[2]


def arrivals_location(settings: Settings) -> str:
    """The arrivals root as Spark reads it: an absolute local folder, or the ``abfss://`` URI as given."""
    folder = local_path(settings.arrivals_root)
    return settings.arrivals_root if folder is None else str(folder.absolute())


def arrivals_dir(settings: Settings) -> Path:
    """The local arrivals folder; :class:`ArrivalsError` when the root is on cloud storage."""
    folder = local_path(settings.arrivals_root)
    if folder is None:
        raise ArrivalsError(f"arrivals_root {settings.arrivals_root} is on cloud storage, not a local folder")
    return folder.absolute()


def record_file_bytes(name: str) -> int | None:
    """The image bytes a record file's records announce, from its name (None: not named so)."""
    match = _FILE_BYTES.fullmatch(name)
    return int(match[1]) if match else None


def _chunks(records: list[ArrivalRecord], budget: int) -> list[list[ArrivalRecord]]:
    """``records`` in order, cut so that no chunk announces more than ``budget`` bytes (0: no cut)."""
    chunks: list[list[ArrivalRecord]] = [[]]
    total = 0
    for record in records:
        if budget and chunks[-1] and total + record.content_length > budget:
            chunks.append([])
            total = 0
        chunks[-1].append(record)
        total += record.content_length
    return chunks


def write_arrival_records(settings: Settings, records: list[ArrivalRecord]) -> list[ArrivalFile]:
    """Write ``records`` as new files, each atomically and within the stream's byte budget per
    micro-batch (``score_max_bytes_per_trigger``), in order; return them ([] if no records)."""
    if not records:
        return []
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    batch = uuid.uuid4().hex[:8]
    chunks = _chunks(records, settings.score_max_bytes_per_trigger)
    # The index keeps one call's files in write order when listed by name.
    named = [
        (f"arrivals-{stamp}-{batch}-{i:04d}-{sum(r.content_length for r in chunk)}b.jsonl", chunk)
        for i, chunk in enumerate(chunks)
    ]
    if local_path(settings.arrivals_root) is None:
        folder = storage_folder(settings.arrivals_root)
        return [_upload(settings, folder, name, chunk) for name, chunk in named]
    return [_write_local(arrivals_dir(settings), name, chunk) for name, chunk in named]


def _lines(records: list[ArrivalRecord]) -> str:
    return "".join(record.to_json() + "\n" for record in records)


def _write_local(folder: Path, name: str, records: list[ArrivalRecord]) -> ArrivalFile:
    """Under a hidden temporary name, then renamed: the stream never lists half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    final, temp = folder / name, folder / f".{name}.tmp"
    with temp.open("w") as handle:
        handle.write(_lines(records))
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(final)
    return ArrivalFile(str(final), tuple(records))


def _upload(settings: Settings, folder: StorageFolder, name: str, records: list[ArrivalRecord]) -> ArrivalFile:
    """One blob of the configured account (retried while storage is unreachable, up to ``blob_retry_s``)."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    service = bounded_service_client(settings)
    if service.account_name != folder.account:
        raise ArrivalsError(
            f"arrivals_root names storage account {folder.account}, but LAKESIGHT_BLOB_CONNECTION_STRING is for "
            f"{service.account_name}: the handlers write records with that connection"
        )
    blob = service.get_blob_client(folder.container, folder.blob_name(name))
    data = _lines(records).encode()

    def upload() -> None:
        try:
            blob.upload_blob(data, overwrite=False)
        except ResourceNotFoundError:  # the container does not exist yet
            with contextlib.suppress(ResourceExistsError):  # another handler created it meanwhile
                service.create_container(folder.container)
            blob.upload_blob(data, overwrite=False)

    with_retries(upload, budget_s=settings.blob_retry_s)
    return ArrivalFile(f"{settings.arrivals_root.rstrip('/')}/{name}", tuple(records))
