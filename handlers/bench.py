"""``lakesight bench events``: BlobCreated batches sent with the Event Grid SDK over loopback.

The bench starts its own uvicorn server on a free port with a throw-away state dir, sends
``events`` unique image events in batches from ``concurrency`` clients, re-sends a share of them
(duplicate deliveries), and waits until every event has been processed (arrival records written,
outcomes logged). ``seconds`` covers sending and processing. A batch too large for one request
(the handler's body limit, Event Grid's 1 MB) is sent as several (``requests`` counts them).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from handlers.api.app import create_app
from handlers.api.payloads import BLOB_CREATED
from handlers.intake.blob_created import account_url
from handlers.server import running
from infra.settings import Settings


def image_events(base_url: str, container: str, count: int) -> list[Any]:
    from azure.eventgrid import EventGridEvent

    now = dt.datetime.now(dt.UTC)
    events = []
    for number in range(count):
        name = f"bench/{now:%Y/%m/%d}/img-{number:07d}.png"
        events.append(
            EventGridEvent(
                subject=f"/blobServices/default/containers/{container}/blobs/{name}",
                event_type=BLOB_CREATED,
                data_version="",
                data={
                    "api": "PutBlob",
                    "clientRequestId": str(uuid.uuid4()),
                    "requestId": str(uuid.uuid4()),
                    "eTag": f"0x8D{number:014X}",
                    "contentType": "image/png",
                    "contentLength": 1024 + number % 512,
                    "blobType": "BlockBlob",
                    "url": f"{base_url}{container}/{name}",
                    "sequencer": f"{number:032x}",
                    "storageDiagnostics": {"batchId": str(uuid.uuid4())},
                },
            )
        )
    return events


def wire_bytes(event: Any) -> int:
    """About the bytes the SDK sends for ``event`` (its JSON fields, as the SDK's encoder writes them)."""
    fields = {
        "id": event.id,
        "subject": event.subject,
        "data": event.data,
        "eventType": event.event_type,
        "eventTime": str(event.event_time),
        "dataVersion": event.data_version,
        "metadataVersion": "1",
        "topic": event.topic,
    }
    return len(json.dumps(fields, default=str).encode()) + len(", ")


def request_batches(events: list[Any], batch: int, max_body_bytes: int) -> list[list[Any]]:
    """``events`` in requests of at most ``batch`` events, each under the handler's body limit.

    Event Grid delivers at most 1 MB per request, and so does the handler (``max_event_body_bytes``):
    a batch that would pass the limit is split rather than sent and refused with 413. A tenth of the
    limit is kept for what the estimate misses (the SDK's encoding of the envelope).
    """
    budget = int(max_body_bytes * 0.9)
    requests: list[list[Any]] = []
    current: list[Any] = []
    size = 2  # the array's brackets
    for event in events:
        cost = wire_bytes(event)
        if current and (len(current) == batch or size + cost > budget):
            requests.append(current)
            current, size = [], 2
        current.append(event)
        size += cost
    if current:
        requests.append(current)
    return requests


def bench_events(
    *,
    events: int = 5000,
    batch: int = 50,
    concurrency: int = 4,
    duplicate_fraction: float = 0.1,
    state_dir: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the events bench; return its figures."""
    from azure.core.credentials import AzureKeyCredential
    from azure.eventgrid import EventGridPublisherClient

    with tempfile.TemporaryDirectory(prefix="lakesight-bench-") as tmp:
        key = uuid.uuid4().hex
        root = state_dir or Path(tmp)
        # Every location pinned under the throw-away root: bench events must never reach a real stream.
        settings = Settings(
            state_dir=root,
            arrivals_root=str(root / "arrivals"),
            lake_root=str(root / "lake"),
            mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
            event_key=key,
        )
        base = account_url(settings)
        unique = image_events(base, settings.images_container, events)
        rng = random.Random(seed)
        repeats = rng.sample(unique, int(events * duplicate_fraction))
        stream = unique + repeats
        batches = request_batches(stream, batch, settings.max_event_body_bytes)
        rng.shuffle(batches)  # duplicates arrive interleaved with first deliveries, as with retries

        app = create_app(settings)
        service = app.state.service
        latencies: list[float] = []
        local = threading.local()
        with running(app, log_level="error") as url:

            def send(chunk: list[Any]) -> None:
                if not hasattr(local, "client"):
                    local.client = EventGridPublisherClient(url, AzureKeyCredential(key))
                started = time.perf_counter()
                local.client.send(chunk)
                latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                list(pool.map(send, batches))
            service.wait_idle(timeout=120)
            seconds = time.perf_counter() - started
            counts = service.events.counts()
        latencies.sort()
        return {
            "events": events,
            "deliveries": len(stream),
            "batch": batch,
            "requests": len(batches),
            "concurrency": concurrency,
            "seconds": round(seconds, 3),
            "events_per_s": round(events / seconds, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2),
            "duplicates_suppressed": service.duplicates_suppressed,
            "processed": counts,
        }
