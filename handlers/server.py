"""Running the webhook under uvicorn: in the foreground (``lakesight serve``) or in a thread (bench, tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI

from handlers.app import create_app
from handlers.routes.events import EVENTS_PATH
from infra.processes import free_port
from infra.settings import Settings


def _config(app: FastAPI, host: str, port: int, log_level: str):
    import uvicorn

    # One process, one loop: state (event log, queues, launcher) lives in this process.
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on")


def serve(settings: Settings, *, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    """Serve the webhook until interrupted; handler outcomes are logged at ``log_level``."""
    import logging

    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    bind = host or settings.handler_host
    app = create_app(settings, host=bind)  # refuses an empty event key on a non-loopback bind
    uvicorn.Server(_config(app, bind, port or settings.handler_port, log_level)).run()


@contextmanager
def running(
    app: FastAPI, *, host: str = "127.0.0.1", port: int | None = None, log_level: str = "warning", timeout: float = 20.0
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread; yield its events URL; stop it on exit."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(_config(app, host, port, log_level))
    thread = threading.Thread(target=server.run, name="lakesight-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}{EVENTS_PATH}"
    finally:
        server.should_exit = True
        thread.join(timeout)
