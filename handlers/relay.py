"""``lakesight relay``: the local stand-in for the Event Grid system topic that Azurite lacks.

Polls the images and exports containers and publishes one ``Microsoft.Storage.BlobCreated``
Event Grid event per new upload (container, name, eTag) through ``EventGridPublisherClient``,
with the data fields Azure Storage sends. What was announced is persisted under ``state_dir``,
so each upload is announced once, across restarts; an overwrite (new eTag) is a new upload.
The event id is derived from (url, eTag), so a resend after a crash is suppressed by the handler.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from handlers.api.payloads import BLOB_CREATED
from infra.blob import BlobStore
from infra.settings import Settings
from infra.sqlite import connect, now_iso

log = logging.getLogger(__name__)

SEND_BATCH = 200  # well under Event Grid's 1 MB / 5,000-event request limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS announced (
    container TEXT NOT NULL,
    name TEXT NOT NULL,
    etag TEXT NOT NULL,
    event_id TEXT NOT NULL,
    announced_at TEXT NOT NULL,
    PRIMARY KEY (container, name, etag)
);
"""


def handler_url(settings: Settings) -> str:
    return settings.events_url()


def sequencer(blob: Any) -> str:
    """A 32-hex-digit sequencer that orders events for the same blob, like Azure Storage's."""
    modified: dt.datetime = blob.last_modified or dt.datetime.now(dt.UTC)
    return f"{int(modified.timestamp() * 1_000_000):032x}"


def blob_created_event(account: str, container: str, blob: Any, url: str) -> Any:
    """The ``Microsoft.Storage.BlobCreated`` EventGridEvent Azure Storage would send for ``blob``."""
    from azure.eventgrid import EventGridEvent

    etag = str(blob.etag).strip('"')
    settings = blob.content_settings
    data = {
        "api": "PutBlob",
        "clientRequestId": str(uuid.uuid4()),
        "requestId": str(uuid.uuid4()),
        "eTag": etag,
        "contentType": (settings.content_type if settings else None) or "application/octet-stream",
        "contentLength": int(blob.size),
        "blobType": "BlockBlob",
        "url": url,
        "sequencer": sequencer(blob),
        "storageDiagnostics": {"batchId": str(uuid.uuid4())},
    }
    return EventGridEvent(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{url}#{etag}")),
        subject=f"/blobServices/default/containers/{container}/blobs/{blob.name}",
        event_type=BLOB_CREATED,
        data=data,
        data_version="",
        topic=f"/subscriptions/local/resourceGroups/lakesight/providers/Microsoft.Storage/storageAccounts/{account}",
        event_time=blob.last_modified or dt.datetime.now(dt.UTC),
    )


class Relay:
    """Announces new blobs of ``containers`` to ``endpoint`` once each."""

    def __init__(self, settings: Settings, *, endpoint: str | None = None, containers: Iterable[str] | None = None):
        from azure.core.credentials import AzureKeyCredential
        from azure.eventgrid import EventGridPublisherClient

        self.settings = settings
        self.endpoint = endpoint or handler_url(settings)
        self.store = BlobStore(settings)
        self.containers = list(containers or [settings.images_container, settings.exports_container])
        self.client = EventGridPublisherClient(self.endpoint, AzureKeyCredential(settings.event_secret()))
        self._conn = connect(settings.state_dir / "handlers" / "relay.db")
        self._conn.executescript(_SCHEMA)
        self._seen = {tuple(row) for row in self._conn.execute("SELECT container, name, etag FROM announced")}
        self.account = str(self.store.service.account_name)

    def poll(self) -> int:
        """Announce every blob not announced before; return how many were sent."""
        self.store.ensure_containers(self.containers)
        pending: list[tuple[tuple[str, str, str], Any]] = []
        for container in self.containers:
            client = self.store.service.get_container_client(container)
            for blob in client.list_blobs():
                key = (container, blob.name, str(blob.etag).strip('"'))
                if key in self._seen or not blob.size:
                    continue  # announced already, or an empty placeholder
                url = client.get_blob_client(blob.name).url
                pending.append((key, blob_created_event(self.account, container, blob, url)))
        for start in range(0, len(pending), SEND_BATCH):
            chunk = pending[start : start + SEND_BATCH]
            self.client.send([event for _, event in chunk])
            # Recorded only after the handler acknowledged: a failed send is retried at the next poll.
            self._conn.executemany(
                "INSERT OR IGNORE INTO announced VALUES (?, ?, ?, ?, ?)",
                [(*key, event.id, now_iso()) for key, event in chunk],
            )
            self._seen.update(key for key, _ in chunk)
        if pending:
            log.info("announced %d new blob(s) to %s", len(pending), self.endpoint)
        return len(pending)

    def run(self, *, interval: float = 1.0, stop: threading.Event | None = None) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set; delivery errors are logged and retried."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - the handler or Azurite may be down; keep relaying
                log.warning("relay poll failed (retrying in %.1fs): %s", interval, exc)
            stop.wait(interval)

    def close(self) -> None:
        self.client.close()
        self._conn.close()
