"""The Event Grid webhook: the FastAPI app factory.

:func:`create_app` puts the settings, the event key and the :class:`HandlerService` on
``app.state`` (where :mod:`handlers.deps` finds them) and mounts the routers: ``routes.events``
(``OPTIONS``/``POST /api/events``) and ``routes.status`` (``/``, ``/api/status``, ``/healthz``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from handlers.deps import RequestRefused, refused_response
from handlers.routes import events, status
from handlers.service import HandlerService
from infra.settings import Settings


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: HandlerService = app.state.service
    service.start()
    yield
    service.stop()


def create_app(settings: Settings, *, service: HandlerService | None = None) -> FastAPI:
    """The webhook app for ``settings``; ``service`` lets tests inject a backend or share state."""
    app = FastAPI(title="lakesight event handlers", lifespan=_lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.event_key = settings.event_secret().encode()  # checked (azure mode) before anything is opened
    app.state.service = service or HandlerService(settings)
    app.add_exception_handler(RequestRefused, refused_response)
    app.include_router(events.router)
    app.include_router(status.router)
    return app
