"""Typed FastAPI dependencies of the webhook's routes, laid out like the FastAPI template's ``deps``.

What a route needs comes from ``app.state`` (set once by :func:`handlers.api.app.create_app`), so the
routes are plain module-level functions: ``ServiceDep`` and ``SettingsDep`` hand over the app's
service and settings, ``EventKeyDep`` admits only callers with the shared event key, and
``StatusKeyDep`` guards the status page and its data the same way in azure mode. A refusal is
raised as ``infra.web.RequestRefused`` (shared with the model server) and answered as
``{"error": message}``, the body Event Grid senders have always got.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Annotated

from fastapi import Depends, Request, Response

from handlers.intake.service import HandlerService
from infra.settings import Settings
from infra.web import RequestRefused, key_matches, refused_response

__all__ = ["EventKeyDep", "RequestRefused", "ServiceDep", "SettingsDep", "StatusKeyDep", "refused_response"]

log = logging.getLogger(__name__)

# The status page's script fetches api/status without the key a person put in the page's URL, so
# a page admitted by the key leaves a cookie for the fetches. It holds a digest of the key, never
# the key, and admits only the status routes.
STATUS_COOKIE = "lakesight-status"


# The dependencies are ``async`` although they only read app.state: FastAPI runs a plain ``def``
# dependency in its thread pool, two thread hand-offs per delivery (17 % of the events benchmark).
async def app_service(request: Request) -> HandlerService:
    return request.app.state.service


async def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def _supplied_key(request: Request) -> str:
    return request.headers.get("aeg-sas-key") or request.query_params.get("code") or ""


def _refuse_unauthenticated(request: Request) -> RequestRefused:
    log.warning("refused unauthenticated delivery from %s", request.client.host if request.client else "?")
    return RequestRefused(401, "missing or wrong event key")


async def require_event_key(request: Request) -> None:
    """Admit the caller only with the shared key (``aeg-sas-key`` header or ``code`` query parameter).

    The key is compared in constant time, so response timing tells nothing about how much of a
    guess was right. An empty configured key switches the check off: settings allow that only in
    local mode on a loopback bind (:meth:`infra.settings.Settings.event_secret`).
    """
    key: bytes = request.app.state.event_key
    if key and not key_matches(_supplied_key(request), key):
        raise _refuse_unauthenticated(request)


def status_token(key: bytes) -> str:
    """The status cookie's value: a digest of the event key, useless for delivering events."""
    return hmac.new(key, b"lakesight status page", hashlib.sha256).hexdigest()


async def require_status_key(request: Request, response: Response) -> None:
    """In azure mode, admit status readers only with the event key (header, ``code`` or the status cookie).

    Local mode and ``status_public`` leave the status routes open. A caller admitted by the key
    gets the cookie, so the page's own fetches of ``api/status`` are admitted too.
    """
    settings: Settings = request.app.state.settings
    key: bytes = request.app.state.event_key
    if settings.mode == "local" or settings.status_public:
        return
    token = status_token(key)
    if hmac.compare_digest(request.cookies.get(STATUS_COOKIE, "").encode(), token.encode()):
        return
    if not key_matches(_supplied_key(request), key):
        raise _refuse_unauthenticated(request)
    secure = request.url.scheme == "https"
    response.set_cookie(STATUS_COOKIE, token, httponly=True, samesite="strict", secure=secure)


ServiceDep = Annotated[HandlerService, Depends(app_service)]
SettingsDep = Annotated[Settings, Depends(app_settings)]
EventKeyDep = Annotated[None, Depends(require_event_key)]
StatusKeyDep = Annotated[None, Depends(require_status_key)]
