"""What lakesight's HTTP services share (the event webhook, the model server).

uvicorn in the foreground or in a thread; :class:`RequestRefused`, the one way a route refuses a
request (answered ``{"error": message}`` with its status, never a 500 for what a caller sent);
and the shared-key check, in constant time so response timing tells nothing about a guess.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from infra.errors import LakesightError
from infra.processes import free_port
from infra.settings import Settings

MAX_REASON_CHARS = 300


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` as one line of at most ``limit`` characters (refusal reasons quote what a sender wrote)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class RequestRefused(LakesightError):
    """A request answered with ``status_code`` and ``{"error": message}`` (see :func:`refused_response`)."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        retry_after_s: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        self.message = one_line(message)
        super().__init__(self.message)
        self.status_code = status_code
        self.retry_after_s = retry_after_s  # a busy service: when the caller may try again
        retry = {} if retry_after_s is None else {"Retry-After": str(retry_after_s)}
        self.headers = {**(headers or {}), **retry}


async def refused_response(_request: Any, exc: RequestRefused) -> Any:
    """The exception handler each app installs for :class:`RequestRefused`."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": exc.message}, status_code=exc.status_code, headers=exc.headers or None)


def key_matches(supplied: str | None, key: bytes) -> bool:
    return hmac.compare_digest((supplied or "").encode(), key)


def uvicorn_config(app: Any, host: str, port: int, log_level: str, *, settings: Settings | None = None) -> Any:
    """uvicorn's configuration for ``app``, bounded by ``settings`` (default: the built-in defaults):
    at most ``web_limit_concurrency`` connections and tasks (more are answered 503), idle keep-alive
    connections closed after ``web_keep_alive_s``, request heads larger than ``web_max_header_bytes``
    refused; X-Forwarded-Proto/-For believed from ``trusted_proxies`` only."""
    import uvicorn

    def limit(name: str) -> Any:
        return getattr(settings, name) if settings is not None else Settings.model_fields[name].default

    # One process, one event loop: each service keeps its state (queues, caches) in this process.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        forwarded_allow_ips=limit("trusted_proxies"),
        limit_concurrency=limit("web_limit_concurrency"),
        timeout_keep_alive=limit("web_keep_alive_s"),
        h11_max_incomplete_event_size=limit("web_max_header_bytes"),
    )


def serve_forever(app: Any, host: str, port: int, log_level: str = "info", *, settings: Settings | None = None) -> None:
    """Serve ``app`` until interrupted, logging at ``log_level``."""
    import logging

    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.Server(uvicorn_config(app, host, port, log_level, settings=settings)).run()


@contextmanager
def serving_in_thread(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    log_level: str = "warning",
    timeout: float = 30.0,
    settings: Settings | None = None,
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread; yield its base URL; stop it on exit."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn_config(app, host, port, log_level, settings=settings))
    thread = threading.Thread(target=server.run, name="lakesight-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
