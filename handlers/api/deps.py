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
import time
from typing import Annotated

from fastapi import Depends, Request, Response

from handlers.intake.service import HandlerService
from infra.settings import Settings
from infra.web import RequestRefused, key_matches, refused_response

__all__ = ["EventKeyDep", "RequestRefused", "ServiceDep", "SettingsDep", "StatusKeyDep", "refused_response"]

log = logging.getLogger(__name__)

# The status page's script fetches api/status without the key a person put in the page's URL, so
# a page admitted by the key leaves a cookie for the fetches. It holds an expiry and a MAC under a
# server-side secret (infra.settings status_cookie_secret, mixed with the key), never the key:
# nobody holding only the key, or an old cookie, can make one. It admits only the status routes.
STATUS_COOKIE = "lakesight-status"
STATUS_COOKIE_TTL_S = 8 * 3600


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
    if not _key_admits(request):
        raise _refuse_unauthenticated(request)


def _key_admits(request: Request) -> bool:
    """Whether the supplied key is one of the accepted ones (the current and, during a rotation,
    the next): every key is compared, so timing does not tell which one matched."""
    keys: tuple[bytes, ...] = request.app.state.event_keys
    if not keys[0]:  # an empty key: the check is off (loopback only, infra.settings)
        return True
    supplied = _supplied_key(request)
    return any([key_matches(supplied, key) for key in keys])


def status_secret(cookie_secret: bytes, key: bytes) -> bytes:
    """What status cookies are signed with: the server-side secret, tied to the current key (a new
    key ends the old cookies)."""
    return hmac.new(cookie_secret, key, hashlib.sha256).digest()


def status_token(secret: bytes, expires: int) -> str:
    """A status cookie's value: its expiry (Unix seconds) and a MAC of it, useless for delivering events."""
    mac = hmac.new(secret, f"lakesight status page|{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def status_cookie_admits(secret: bytes, value: str, now: float) -> bool:
    expires, _, _mac = value.partition(".")
    if not expires.isdigit() or int(expires) < now:
        return False
    return hmac.compare_digest(status_token(secret, int(expires)).encode(), value.encode())


async def require_status_key(request: Request, response: Response) -> None:
    """Admit status readers only with the event key (header, ``code`` or the status cookie), unless
    the app serves status openly (``status_public``, or local mode on a loopback bind). A caller admitted by the key
    gets the cookie, so the page's own fetches of ``api/status`` are admitted too.
    """
    if request.app.state.status_open:
        return
    secret: bytes = request.app.state.status_secret
    if status_cookie_admits(secret, request.cookies.get(STATUS_COOKIE, ""), time.time()):
        return
    if not _key_admits(request):
        raise _refuse_unauthenticated(request)
    # https as uvicorn saw it: a TLS proxy's X-Forwarded-Proto counts only from trusted_proxies.
    secure = request.url.scheme == "https"
    token = status_token(secret, int(time.time()) + STATUS_COOKIE_TTL_S)
    response.set_cookie(
        STATUS_COOKIE, token, max_age=STATUS_COOKIE_TTL_S, httponly=True, samesite="strict", secure=secure
    )


ServiceDep = Annotated[HandlerService, Depends(app_service)]
SettingsDep = Annotated[Settings, Depends(app_settings)]
EventKeyDep = Annotated[None, Depends(require_event_key)]
StatusKeyDep = Annotated[None, Depends(require_status_key)]
