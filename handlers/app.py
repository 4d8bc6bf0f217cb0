"""The Event Grid webhook: the FastAPI app factory.

:func:`create_app` puts the settings, the event key and the :class:`HandlerService` on
``app.state`` (where :mod:`handlers.deps` finds them) and mounts the routers: ``routes.events``
(``OPTIONS``/``POST /api/events``) and ``routes.status`` (``/``, ``/api/status``, ``/healthz``).
The OpenAPI schema and docs are served only with ``settings.openapi``: they describe internals
nobody needs to see by default.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from handlers.deps import RequestRefused, refused_response
from handlers.routes import events, status
from handlers.service import HandlerService
from infra.settings import Settings
from infra.status import CachedSnapshot

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
    key = settings.event_secret(bind_host=host or settings.handler_host)
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
    app.state.event_key = key.encode()
    app.state.service = service or HandlerService(settings)
    app.state.status = CachedSnapshot(settings, max_age_s=settings.status_cache_s)
    app.add_exception_handler(RequestRefused, refused_response)
    app.include_router(events.router)
    app.include_router(status.router)
    return app
