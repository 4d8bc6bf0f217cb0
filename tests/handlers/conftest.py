"""Fixtures of the handler tests; the builders they share are in tests/helpers/handlers.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from handlers.intake.service import HandlerService
from infra.blob import BlobStore
from infra.settings import Settings, get_settings
from tests.helpers.handlers import serving


@pytest.fixture
def publisher() -> Iterator[Callable[..., Any]]:
    """``publisher(url, key)``: an EventGridPublisherClient (the SDK sends the aeg-sas-key header)."""
    from azure.core.credentials import AzureKeyCredential
    from azure.eventgrid import EventGridPublisherClient

    clients = []

    def make(url: str, key: str = "local-dev-key") -> Any:
        client = EventGridPublisherClient(url, AzureKeyCredential(key))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def server(settings: Settings) -> Iterator[tuple[str, HandlerService]]:
    """A real uvicorn server around the app for ``settings``: (events URL, service)."""
    with serving(settings) as value:
        yield value


@pytest.fixture
def env_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """``get_settings()`` (what entry points read) on this test's state dir; yields the monkeypatch."""
    monkeypatch.setenv("LAKESIGHT_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


# The classes of the label-matching tests' labeling settings.
CLASSES = ["0", "1"]


@pytest.fixture
def labeling(blob_settings: Settings) -> Settings:
    """Settings whose hand-off sends every scored image to its own labeling container."""
    # Its own labeling container: the session's Azurite is shared with other tests.
    settings = blob_settings.model_copy(
        update={
            "labeling_container": "labeling-match",
            "labeling_window_s": 0,
            "labeling_daily_budget": 100,
            "labeling_fraction": 1.0,
            "labeling_max_class_share": 1.0,
            "confidence_threshold": 0.99,
            "label_classes": CLASSES,
        }
    )
    BlobStore(settings).ensure_containers()
    return settings
