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

import httpx
import numpy as np

from infra.settings import Settings
from serving.app import API_KEY_HEADER, CLASSIFY_PATH
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
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    failures = 0
    async with httpx.AsyncClient(base_url=base_url, headers={API_KEY_HEADER: key}, limits=limits, timeout=60) as client:
        await _send(client, images, 0, per_request)  # a warm connection and a loaded model
        end = time.perf_counter() + seconds

        async def caller(index: int) -> None:
            nonlocal failures
            sent = index
            while time.perf_counter() < end:
                started = time.perf_counter()
                ok = await _send(client, images, sent, per_request)
                latencies.append(time.perf_counter() - started)
                failures += not ok
                sent += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
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


async def _send(client: httpx.AsyncClient, images: Sequence[bytes], index: int, per_request: int) -> bool:
    if per_request == 1:
        image = images[index % len(images)]
        response = await client.post(CLASSIFY_PATH, content=image, headers={"content-type": "image/png"})
    else:
        files = [("images", (f"{i}.png", images[(index + i) % len(images)], "image/png")) for i in range(per_request)]
        response = await client.post(CLASSIFY_PATH, files=files)
    return response.status_code == 200
