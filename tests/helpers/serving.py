"""Builders for the model-server tests: a running server over real HTTP, requests with the key."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from infra.settings import Settings
from infra.web import serving_in_thread
from serving.api.app import create_app
from serving.api.deps import API_KEY_HEADER
from serving.api.routes.classify import CLASSIFY_PATH


@contextmanager
def model_server(settings: Settings, **app_options: Any) -> Iterator[httpx.Client]:
    """A model server for ``settings`` under uvicorn in a thread; yield a client holding its key."""
    app = create_app(settings, **app_options)
    with (
        serving_in_thread(app) as base,
        httpx.Client(base_url=base, headers=key_header(settings), timeout=60) as client,
    ):
        yield client


def key_header(settings: Settings) -> dict[str, str]:
    return {API_KEY_HEADER: settings.model_api_key.get_secret_value()}


def post_image(client: httpx.Client, data: bytes, content_type: str = "image/png", **kwargs: Any) -> httpx.Response:
    return client.post(CLASSIFY_PATH, content=data, headers={"content-type": content_type}, **kwargs)


def post_batch(client: httpx.Client, parts: list[tuple[str, bytes, str]], **kwargs: Any) -> httpx.Response:
    """A multipart request of ``(name, bytes, content type)`` parts."""
    files = [("images", (name, data, kind)) for name, data, kind in parts]
    return client.post(CLASSIFY_PATH, files=files, **kwargs)
