"""Running the webhook under uvicorn: in the foreground (``lakesight serve-events``) or in a thread (bench, tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI

from handlers.api.app import create_app
from handlers.api.routes.events import EVENTS_PATH
from infra.settings import Settings
from infra.web import serve_forever, serving_in_thread


def serve(settings: Settings, *, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    """Serve the webhook until interrupted; handler outcomes are logged at ``log_level``."""
    bind = host or settings.handler_host
    app = create_app(settings, host=bind)  # refuses an empty or default event key on a non-loopback bind
    serve_forever(app, bind, port or settings.handler_port, log_level, settings=settings)


@contextmanager
def running(
    app: FastAPI, *, host: str = "127.0.0.1", port: int | None = None, log_level: str = "warning", timeout: float = 20.0
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread; yield its events URL; stop it on exit."""
    configured = getattr(app.state, "settings", None)
    settings = configured if isinstance(configured, Settings) else None  # tests may mount bare apps
    with serving_in_thread(app, host=host, port=port, log_level=log_level, timeout=timeout, settings=settings) as base:
        yield f"{base}{EVENTS_PATH}"
