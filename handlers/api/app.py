"""The Event Grid webhook: the FastAPI app factory.

:func:`create_app` puts the settings, the event key and the :class:`HandlerService` on
``app.state`` (where :mod:`handlers.api.deps` finds them) and mounts the routers: ``routes.events``
(``OPTIONS``/``POST /api/events``) and ``routes.status`` (``/``, ``/api/status``, ``/healthz``).
The OpenAPI schema and docs are served only with ``settings.openapi``: they describe internals
nobody needs to see by default.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from handlers.api.deps import RequestRefused, refused_response, status_secret
from handlers.api.routes import events, label_studio, status
from handlers.intake.service import HandlerService
from infra.core.status import CachedSnapshot
from infra.locations import is_loopback
from infra.settings import Settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: HandlerService = app.state.service
    service.start()
    yield
    service.stop()


def create_app(settings: Settings, *, service: HandlerService | None = None, host: str | None = None) -> FastAPI:
    """The webhook app for ``settings``; ``service`` lets tests inject a backend or share state.

    ``host`` is the address the app will be served on (default ``settings.handler_host``): an
    empty event key is allowed only on a loopback one.
    """
    # Checked (azure mode, bind address) before anything is opened.
    bind = host or settings.handler_host
    keys = settings.event_secrets(bind_host=bind)
    key = keys[0]
    if not key:
        log.warning("LAKESIGHT_EVENT_KEY is empty: the webhook runs unauthenticated (loopback bind only)")
    docs = settings.openapi
    app = FastAPI(
        title="lakesight event handlers",
        lifespan=_lifespan,
        openapi_url="/openapi.json" if docs else None,
        docs_url="/docs" if docs else None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.event_keys = tuple(k.encode() for k in keys)
    # Status is open only where the bind is loopback (local mode) or the deployment says so.
    app.state.status_open = settings.status_public or (settings.mode == "local" and is_loopback(bind))
    cookie_secret = settings.status_cookie_secret.get_secret_value().encode() or secrets.token_bytes(32)
    app.state.status_secret = status_secret(cookie_secret, key.encode())
    app.state.service = service or HandlerService(settings)
    app.state.status = CachedSnapshot(settings, max_age_s=settings.status_cache_s)
    # Starlette types a handler for Exception; this one takes the subclass it is registered for.
    app.add_exception_handler(RequestRefused, refused_response)  # type: ignore[arg-type]
    app.include_router(events.router)
    app.include_router(status.router)
    app.include_router(label_studio.router)
    return app
