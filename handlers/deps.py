"""Typed FastAPI dependencies of the webhook's routes, laid out like the FastAPI template's ``deps``.

What a route needs comes from ``app.state`` (set once by :func:`handlers.app.create_app`), so the
routes are plain module-level functions: ``ServiceDep`` and ``SettingsDep`` hand over the app's
service and settings, ``EventKeyDep`` admits only callers with the shared event key. A refusal is
raised as :class:`RequestRefused` and answered as ``{"error": message}``, the body Event Grid
senders have always got.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from handlers.service import HandlerService
from infra.errors import LakesightError
from infra.settings import Settings

log = logging.getLogger(__name__)


class RequestRefused(LakesightError):
    """A request answered with ``status_code`` and ``{"error": message}`` (see :func:`refused_response`)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.message = message


async def refused_response(_request: Request, exc: RequestRefused) -> JSONResponse:
    """The exception handler create_app installs for :class:`RequestRefused`."""
    return JSONResponse({"error": exc.message}, status_code=exc.status_code)


# The dependencies are ``async`` although they only read app.state: FastAPI runs a plain ``def``
# dependency in its thread pool, two thread hand-offs per delivery (17 % of the events benchmark).
async def app_service(request: Request) -> HandlerService:
    return request.app.state.service


async def app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def require_event_key(request: Request) -> None:
    """Admit the caller only with the shared key (``aeg-sas-key`` header or ``code`` query parameter).

    The key is compared in constant time, so response timing tells nothing about how much of a
    guess was right. An empty configured key switches the check off (local experiments only).
    """
    key: bytes = request.app.state.event_key
    if not key:
        return
    supplied = request.headers.get("aeg-sas-key") or request.query_params.get("code") or ""
    if not hmac.compare_digest(supplied.encode(), key):
        log.warning("refused unauthenticated delivery from %s", request.client.host if request.client else "?")
        raise RequestRefused(401, "missing or wrong event key")


ServiceDep = Annotated[HandlerService, Depends(app_service)]
SettingsDep = Annotated[Settings, Depends(app_settings)]
EventKeyDep = Annotated[None, Depends(require_event_key)]
