"""The model server's in-flight budget over real HTTP: requests whose bodies are still arriving hold
their bytes and their place; past either budget a caller gets 503 with Retry-After at once."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

from infra.settings import Settings
from serving.api.deps import API_KEY_HEADER
from serving.api.routes.classify import CLASSIFY_PATH
from tests.helpers.images import solid_png
from tests.helpers.serving import model_server, post_image

BUDGET_BYTES = 20_000


def _noise_png(side: int) -> bytes:
    pixels = np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


@contextmanager
def _slow_upload(client: httpx.Client, declared: int) -> Iterator[socket.socket]:
    """A classify request that has sent its headers and the first bytes of a ``declared``-byte body,
    and waits; on exit it sends the rest and reads the answer."""
    url = urlsplit(str(client.base_url))
    key = client.headers[API_KEY_HEADER]
    connection = socket.create_connection((url.hostname, url.port), timeout=30)
    head = (
        f"POST {CLASSIFY_PATH} HTTP/1.1\r\nHost: {url.hostname}\r\n{API_KEY_HEADER}: {key}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {declared}\r\n\r\n"
    )
    connection.sendall(head.encode() + b"\x89PNG")
    try:
        yield connection
    finally:
        connection.sendall(bytes(declared - 4))
        connection.recv(4096)  # the answer (422: not an image); the reservation is given back
        connection.close()


def _wait_for_stats(client: httpx.Client, **expected: int) -> dict:
    deadline = time.monotonic() + 20
    while True:
        stats = client.get("/v1/stats").json()
        if all(stats[name] == value for name, value in expected.items()):
            return stats
        assert time.monotonic() < deadline, f"stats never reached {expected}: {stats}"
        time.sleep(0.02)


def test_bytes_in_flight_past_the_budget_get_503_with_retry_after(champion_settings: Settings) -> None:
    image = _noise_png(48)
    held = BUDGET_BYTES - len(image) + 1  # what is held leaves room for small images, not for this one
    settings = champion_settings.model_copy(update={"serve_max_inflight_bytes": BUDGET_BYTES})
    with model_server(settings, inference_table=False) as client:
        with _slow_upload(client, held):
            _wait_for_stats(client, in_flight_bytes=held, in_flight_requests=1)
            full = post_image(client, image)
            small = post_image(client, solid_png(3))
            never_fits = post_image(client, bytes(BUDGET_BYTES + 1))
        _wait_for_stats(client, in_flight_bytes=0, in_flight_requests=0)
        after = post_image(client, image)
        stats = client.get("/v1/stats").json()
    assert full.status_code == 503, full.text
    assert full.headers["retry-after"] == "1" and "LAKESIGHT_SERVE_MAX_INFLIGHT_BYTES" in full.json()["error"]
    assert small.status_code == 200, small.text
    assert never_fits.status_code == 413 and "in-flight budget" in never_fits.json()["error"]
    assert after.status_code == 200, after.text
    assert stats["busy_refusals"] == 1 and stats["statuses"]["503"] == 1


def test_requests_in_flight_past_the_count_get_503(champion_settings: Settings) -> None:
    settings = champion_settings.model_copy(update={"serve_max_inflight_requests": 3})
    with model_server(settings, inference_table=False) as client, ExitStack() as uploads:
        for _ in range(3):
            uploads.enter_context(_slow_upload(client, 100))
        _wait_for_stats(client, in_flight_requests=3)
        refused = post_image(client, solid_png(1))
        uploads.close()
        _wait_for_stats(client, in_flight_requests=0)
        served = post_image(client, solid_png(1))
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "3 requests in flight" in refused.json()["error"]
    assert served.status_code == 200, served.text


def test_a_body_of_undeclared_length_takes_its_share_as_it_streams(champion_settings: Settings) -> None:
    settings = champion_settings.model_copy(update={"serve_max_inflight_bytes": BUDGET_BYTES})
    with model_server(settings, inference_table=False) as client, _slow_upload(client, BUDGET_BYTES - 1000):
        _wait_for_stats(client, in_flight_requests=1)

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
            yield bytes(800)
            yield bytes(800)

        streamed = client.post(CLASSIFY_PATH, content=chunks(), headers={"content-type": "image/png"})
    assert streamed.status_code == 503 and "in flight" in streamed.json()["error"]
