"""``lakesight bench serve``: requests/s and latency of a running model server, next to the raw model.

Each case is a concurrency (callers, each waiting for its answer before the next request) and a
request size (one raw image, or a multipart batch); it runs for a fixed time and prints one row.
The raw model's images/s (the champion classifying batches in this process, nothing else
running) is measured before the server is loaded, in the same run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from infra.settings import Settings
from serving.api.deps import API_KEY_HEADER
from serving.api.routes.classify import CLASSIFY_PATH
from serving.batcher import served_classifier

DEFAULT_CASES = ((1, 1), (8, 1), (32, 1), (1, 16), (8, 16), (32, 16))
RAW_BATCH = 64


def raw_model_images_per_s(settings: Settings, images: Sequence[bytes], seconds: float = 3.0) -> float:
    classifier, _ = served_classifier(settings)
    batch = [images[i % len(images)] for i in range(RAW_BATCH)]
    classifier.classify(batch)  # warm-up: the first call traces the model
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        classifier.classify(batch)
        done += len(batch)
    return round(done / (time.perf_counter() - started), 1)


def run_cases(
    base_url: str,
    key: str,
    images: Sequence[bytes],
    *,
    cases: Sequence[tuple[int, int]] = DEFAULT_CASES,
    seconds: float = 5.0,
    progress: Callable[[str], None] = lambda _m: None,
) -> list[dict[str, Any]]:
    rows = []
    for concurrency, per_request in cases:
        progress(f"concurrency {concurrency}, {per_request} image(s) per request, {seconds:g} s")
        rows.append(asyncio.run(_case(base_url, key, images, concurrency, per_request, seconds)))
    return rows


async def _case(
    base_url: str, key: str, images: Sequence[bytes], concurrency: int, per_request: int, seconds: float
) -> dict[str, Any]:
    requests = [_request(base_url, key, images, i, per_request) for i in range(len(images))]
    connections = [await _KeepAlive.open(base_url) for _ in range(concurrency)]
    latencies: list[float] = []
    failures = 0
    try:
        await connections[0].send(requests[0])  # a loaded model before the clock starts
        end = time.perf_counter() + seconds

        async def caller(index: int, connection: _KeepAlive) -> None:
            nonlocal failures
            sent = index
            while time.perf_counter() < end:
                started = time.perf_counter()
                status = await connection.send(requests[sent % len(requests)])
                latencies.append(time.perf_counter() - started)
                failures += status != 200
                sent += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(caller(i, c) for i, c in enumerate(connections)))
        elapsed = time.perf_counter() - started
    finally:
        for connection in connections:
            connection.close()
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "images_per_request": per_request,
        "requests": len(latencies),
        "failed": failures,
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "images_per_s": round(len(latencies) * per_request / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def _request(base_url: str, key: str, images: Sequence[bytes], index: int, per_request: int) -> bytes:
    """One whole HTTP/1.1 request, built before the clock starts (as wrk or ab send theirs)."""
    if per_request == 1:
        body, content_type = images[index % len(images)], "image/png"
    else:
        files = [("images", (f"{i}.png", images[(index + i) % len(images)], "image/png")) for i in range(per_request)]
        built = httpx.Request("POST", base_url, files=files)
        body, content_type = built.read(), built.headers["content-type"]
    host = urlsplit(base_url).netloc
    head = (
        f"POST {CLASSIFY_PATH} HTTP/1.1\r\nHost: {host}\r\n{API_KEY_HEADER}: {key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _KeepAlive:
    """One keep-alive HTTP/1.1 connection sending prebuilt requests and reading whole responses.

    The benchmark's client shares the machine with the server: httpx spent about as much CPU per
    request as the server (its /healthz ceiling here was ~580 requests/s), so the load generator
    is a bare socket, like wrk's, and the figures measure the server.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, base_url: str) -> _KeepAlive:
        parts = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        return cls(reader, writer)

    async def send(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        if length == 0 and b"content-length:" not in head.lower():
            raise ConnectionError("a response without Content-Length: the keep-alive stream cannot continue")
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()
