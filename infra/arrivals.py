"""Arrival records: how the event handlers tell the scoring stream that a blob was created.

A record is one JSON object per line, in files under ``<arrivals_root>`` that appear
atomically (written under a hidden temp name, then renamed), so the stream's file source
never reads half a file. Fields:

=================  ===========================================================================
``url``            the blob's canonical URL (``infra.blob.canonical_blob_url``): the ``images`` row key
``container``      container name (validated)
``name``           blob name inside the container (validated: no ``..``, absolute, control chars)
``etag``           the blob's eTag at event time; (url, etag) identifies one upload
``content_type``   MIME type from the event
``content_length`` bytes, from the event (0-byte creations are filtered before writing)
``event_time``     ISO-8601 UTC time of the BlobCreated event: arrival time and load date
``event_id``       Event Grid event id (for tracing back to the event log)
``sequencer``      the event's sequencer (orders events for the same blob)
=================  ===========================================================================

The handlers write records; the stream reads them as a JSON file stream and fetches each
blob's bytes on executors. Both import only this module, never each other.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.blob import validate_blob_name
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


def arrivals_dir(settings: Settings) -> Path:
    return Path(settings.arrivals_root)


def write_arrival_records(settings: Settings, records: list[ArrivalRecord]) -> Path | None:
    """Write ``records`` as one new file, atomically; return its path (None if no records)."""
    if not records:
        return None
    folder = arrivals_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    final = folder / f"arrivals-{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
    temp = folder / f".{final.name}.tmp"
    with temp.open("w") as handle:
        handle.writelines(record.to_json() + "\n" for record in records)
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(final)
    return final
