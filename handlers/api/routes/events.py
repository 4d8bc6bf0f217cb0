"""``OPTIONS`` and ``POST /api/events``: the Event Grid and CloudEvents delivery endpoint.

Every call needs the shared key (:data:`handlers.api.deps.EventKeyDep`). ``POST`` enforces the body
size limit while streaming, answers the subscription handshake, and hands the events to the
service, which claims them once and works off the request path. Status codes follow Event Grid's
retry rules: 400/401/413 are final, 5xx is retried.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from handlers.api.deps import EventKeyDep, RequestRefused, ServiceDep, SettingsDep
from handlers.api.payloads import SUBSCRIPTION_VALIDATION, Event, PayloadError, parse_events

log = logging.getLogger(__name__)

EVENTS_PATH = "/api/events"

router = APIRouter()


class _TooLarge(RequestRefused):
    def __init__(self, limit: int):
        super().__init__(413, f"body larger than {limit} bytes")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or :class:`_TooLarge` as soon as it exceeds ``limit`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise PayloadError("Content-Length is not a number")
        if int(declared) > limit:
            raise _TooLarge(limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLarge(limit)
            chunks.append(chunk)
    except ClientDisconnect:  # nothing was acknowledged: the sender delivers again
        host = request.client.host if request.client else "?"
        log.warning("client %s hung up after %d of %s body bytes; nothing accepted", host, size, declared or "?")
        raise RequestRefused(400, "client hung up mid-body") from None
    return b"".join(chunks)


async def _read_events(request: Request, limit: int) -> list[Event]:
    """The delivered events, or :class:`RequestRefused` (413 too large, 400 malformed)."""
    try:
        return parse_events(await _read_body(request, limit), request.headers.get("content-type", ""))
    except _TooLarge:
        log.warning("refused delivery over %d bytes", limit)
        raise
    except PayloadError as exc:
        log.warning("refused malformed delivery: %s", exc)
        raise RequestRefused(400, str(exc)) from exc


def _validation_answer(events: list[Event]) -> JSONResponse | None:
    """The answer to an Event Grid subscription handshake in ``events``, if there is one."""
    validation = next((e for e in events if e.type == SUBSCRIPTION_VALIDATION), None)
    if validation is None:
        return None
    code = validation.data.get("validationCode")
    if not isinstance(code, str) or not code:
        raise RequestRefused(400, "SubscriptionValidationEvent without validationCode")
    log.info("answered subscription validation %s", validation.id)
    return JSONResponse({"validationResponse": code})


@router.options(EVENTS_PATH)
async def handshake(_key: EventKeyDep, request: Request) -> Response:
    """CloudEvents abuse protection: allow the requesting origin to deliver."""
    origin = request.headers.get("webhook-request-origin")
    if not origin:
        raise RequestRefused(400, "OPTIONS without WebHook-Request-Origin")
    return Response(
        status_code=200,
        headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*", "Allow": "POST, OPTIONS"},
    )


@router.post(EVENTS_PATH)
async def receive(_key: EventKeyDep, request: Request, service: ServiceDep, settings: SettingsDep) -> Response:
    events = await _read_events(request, settings.max_event_body_bytes)
    answer = _validation_answer(events)
    if answer is not None:
        return answer
    service.start()  # hosts without lifespan events (Azure Functions) start workers on first use
    # Off the event loop: the claim is a SQLite transaction that may wait for another writer.
    return JSONResponse(await run_in_threadpool(service.submit, events))
