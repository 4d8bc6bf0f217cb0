"""The Event Grid webhook: FastAPI app factory.

``POST /api/events`` takes Event Grid arrays and CloudEvents (single or batch), authenticates the
shared key in constant time, enforces the body size limit while streaming, answers the subscription
handshake, and hands events to :class:`HandlerService`, which claims them once and works off the
request path. Status codes follow Event Grid's retry rules: 400/401/413 are final, 5xx is retried.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from handlers.events import SUBSCRIPTION_VALIDATION, PayloadError, parse_events
from handlers.service import HandlerService
from handlers.status_page import router as status_router
from infra.settings import Settings

log = logging.getLogger(__name__)

EVENTS_PATH = "/api/events"


class _TooLarge(Exception):
    pass


def _authorized(request: Request, key: bytes) -> bool:
    if not key:  # an empty key switches authentication off (local experiments only)
        return True
    supplied = request.headers.get("aeg-sas-key") or request.query_params.get("code") or ""
    return hmac.compare_digest(supplied.encode(), key)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or :class:`_TooLarge` as soon as it exceeds ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise PayloadError("Content-Length is not a number")
        if int(declared) > limit:
            raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(settings: Settings, *, service: HandlerService | None = None) -> FastAPI:
    """The webhook app for ``settings``; ``service`` lets tests inject a backend or share state."""
    service = service or HandlerService(settings)
    key = settings.event_secret().encode()
    limit = settings.max_event_body_bytes

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        service.stop()

    app = FastAPI(title="lakesight event handlers", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.settings = settings
    app.include_router(status_router)  # the live status page (/, /api/status): read-only, no key

    @app.options(EVENTS_PATH)
    async def handshake(request: Request) -> Response:
        """CloudEvents abuse protection: allow the requesting origin to deliver."""
        if not _authorized(request, key):
            return _error(401, "missing or wrong event key")
        origin = request.headers.get("webhook-request-origin")
        if not origin:
            return _error(400, "OPTIONS without WebHook-Request-Origin")
        return Response(
            status_code=200,
            headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*", "Allow": "POST, OPTIONS"},
        )

    @app.post(EVENTS_PATH)
    async def receive(request: Request) -> Response:
        if not _authorized(request, key):
            log.warning("refused unauthenticated delivery from %s", request.client.host if request.client else "?")
            return _error(401, "missing or wrong event key")
        try:
            body = await _read_body(request, limit)
            events = parse_events(body, request.headers.get("content-type", ""))
        except _TooLarge:
            log.warning("refused delivery over %d bytes", limit)
            return _error(413, f"body larger than {limit} bytes")
        except PayloadError as exc:
            log.warning("refused malformed delivery: %s", exc)
            return _error(400, str(exc))
        validation = next((e for e in events if e.type == SUBSCRIPTION_VALIDATION), None)
        if validation is not None:
            code = validation.data.get("validationCode")
            if not isinstance(code, str) or not code:
                return _error(400, "SubscriptionValidationEvent without validationCode")
            log.info("answered subscription validation %s", validation.id)
            return JSONResponse({"validationResponse": code})
        service.start()  # hosts without lifespan events (Azure Functions) start workers on first use
        return JSONResponse(service.submit(events))

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {
            "status": "ok",
            "duplicates_suppressed": service.duplicates_suppressed,
            "pending_triggers": service.launcher.pending_triggers(),
        }

    return app
