"""Builders shared by the handler tests: BlobCreated events as Azure Storage sends them, a real
uvicorn server around the handlers app, the fake trainer's command line, and arrival records read back."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from handlers.api.app import create_app
from handlers.api.payloads import BLOB_CREATED
from handlers.intake.blob_created import account_url
from handlers.intake.service import HandlerService
from handlers.server import running
from infra.arrivals import arrivals_dir
from infra.settings import Settings

FAKE_TRAIN = Path(__file__).resolve().parents[1] / "handlers" / "fake_train.py"
AZURE_EVENT_KEY = "k" * 40
# A well-formed connection string of a storage account that is never contacted (azure mode refuses Azurite's).
AZURE_CONNECTION = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net"


def azure_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Azure-mode settings that pass every secret check, with local state under ``tmp_path``."""
    values: dict[str, Any] = {
        "mode": "azure",
        "state_dir": tmp_path / "state",
        "blob_connection_string": AZURE_CONNECTION,
        "event_key": AZURE_EVENT_KEY,
    }
    return Settings(**{**values, **overrides})


def fake_train_command(record: Path, *extra: str) -> str:
    """A ``retrain_command`` running the fake trainer, recording each run in ``record``."""
    return shlex.join([sys.executable, str(FAKE_TRAIN), "--version", "{version}", "--record", str(record), *extra])


def blob_data(
    url: str, *, etag: str | None = None, length: int = 1234, api: str = "PutBlob", content_type: str = "image/png"
) -> dict[str, Any]:
    """The data of a BlobCreated event as Azure Storage sends it."""
    return {
        "api": api,
        "clientRequestId": str(uuid.uuid4()),
        "requestId": str(uuid.uuid4()),
        "eTag": etag or f"0x8D{uuid.uuid4().hex[:14].upper()}",
        "contentType": content_type,
        "contentLength": length,
        "blobType": "BlockBlob",
        "url": url,
        "sequencer": "00000000000000000000000000000001",
        "storageDiagnostics": {"batchId": str(uuid.uuid4())},
    }


def blob_event(settings: Settings, container: str, name: str, *, event_id: str | None = None, **data: Any):
    """An SDK ``EventGridEvent`` for a BlobCreated in ``container``/``name`` of the configured account."""
    from azure.eventgrid import EventGridEvent

    url = f"{account_url(settings)}{container}/{name}"
    return EventGridEvent(
        id=event_id or str(uuid.uuid4()),
        subject=f"/blobServices/default/containers/{container}/blobs/{name}",
        event_type=BLOB_CREATED,
        data=blob_data(url, **data),
        data_version="",
    )


def blob_event_dict(settings: Settings, container: str, name: str, **options: Any) -> dict[str, Any]:
    """The same event as the Event Grid JSON dict (for raw httpx requests)."""
    return event_grid_dict(blob_event(settings, container, name, **options))


def event_grid_dict(event: Any) -> dict[str, Any]:
    """An SDK ``EventGridEvent`` as the Event Grid JSON dict it is delivered as."""
    return {
        "id": event.id,
        "eventType": event.event_type,
        "subject": event.subject,
        "data": event.data,
        "dataVersion": "",
        "eventTime": str(event.event_time),
        "metadataVersion": "1",
    }


@contextmanager
def serving(settings: Settings, **service_options: Any) -> Iterator[tuple[str, HandlerService]]:
    """A real uvicorn server for ``settings``; yields (events URL, service)."""
    service = HandlerService(settings, **service_options)
    with running(create_app(settings, service=service)) as url:
        yield url, service


def arrival_lines(settings: Settings) -> list[dict]:
    """Every arrival record the handlers wrote for ``settings``, file by file, in write order."""
    folder = arrivals_dir(settings)
    if not folder.exists():
        return []
    paths = sorted(folder.glob("arrivals-*.jsonl"))
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def blob_created_event(settings: Settings, container: str, name: str, *, event_id: str | None = None, **data: Any):
    """The same BlobCreated as the service sees it after parsing (a :class:`handlers.api.payloads.Event`)."""
    from handlers.api.payloads import Event

    sdk = blob_event(settings, container, name, event_id=event_id, **data)
    return Event(id=sdk.id, type=BLOB_CREATED, subject=sdk.subject, time="2026-01-02T03:04:05.1234567Z", data=sdk.data)


@contextmanager
def serve_process(state: Path, port: int, *, log: Path | None = None, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """``lakesight serve`` as its own process on ``port`` over the state folder ``state``, up (healthz
    answers) when yielded; killed on exit if still running. ``log`` receives its stderr; ``env`` adds
    ``LAKESIGHT_*`` settings."""
    from tests.helpers.waiting import wait_until

    environment = {**os.environ, "LAKESIGHT_STATE_DIR": str(state), **env}
    argv = [sys.executable, "-m", "infra.cli", "serve", "--port", str(port), "--log-level", "warning"]
    stderr = log.open("wb") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, env=environment, stdout=subprocess.DEVNULL, stderr=stderr)
    finally:
        if log is not None:
            stderr.close()  # type: ignore[union-attr]
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), "lakesight serve to start", process=proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (whatever the status)."""
    import httpx

    try:
        httpx.get(url, timeout=5)
    except httpx.TransportError:
        return False
    return True


def logged_event(settings: Settings, event_id: str) -> dict[str, Any] | None:
    """The event log's row for ``event_id`` (status, owner, lease_until, attempts), read-only, from any process."""
    import sqlite3
    from contextlib import closing

    path = settings.state_dir / "handlers" / "events.db"
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute(
            "SELECT status, owner, lease_until, attempts FROM events WHERE id = ?", (event_id,)
        ).fetchone()
    return None if row is None else dict(row)
