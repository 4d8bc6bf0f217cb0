"""``POST /v1/classify``: one image as the raw body (``image/*``) or a multipart batch, within the
in-flight budget; answers label, confidence, per-class probabilities, model name and version per
image, and logs every answer to ``online_predictions`` (unsure ones with what labeling needs)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from infra.images import content_hash
from infra.settings import Settings
from infra.web import RequestRefused
from serving.api.deps import ApiKeyDep, StateDep, model_answer
from serving.batcher import Scored
from serving.inference_log import CLASS_NAMES, CONTENT, EMBEDDING, PROBABILITIES
from serving.uploads import (
    Upload,
    Uploads,
    body_limit,
    check_declared_length,
    check_kind,
    media_type,
    parse_uploads,
    read_capped,
)

CLASSIFY_PATH = "/v1/classify"
router = APIRouter()


@router.post(CLASSIFY_PATH, dependencies=[ApiKeyDep])
async def classify(
    request: Request,
    state: StateDep,
    embedding: Annotated[bool, Query(description="Add each image's embedding (null when the model has none)")] = False,
) -> JSONResponse:
    started = time.perf_counter()
    received_at = dt.datetime.now(dt.UTC)
    request_id = uuid.uuid4().hex
    try:
        limit, declared = _admit(request, state.settings)
        # The body's bytes count against the in-flight budget until the answer is built.
        with state.budget.hold(declared) as reservation:
            uploads = await _read(request, state.settings, limit, None if declared is not None else reservation.grow)
            good = [u for u in uploads.items if u.content is not None]
            scored = (
                await model_answer(state.batcher.classify([u.content for u in good if u.content])) if good else None
            )
    except RequestRefused as exc:
        state.stats.observe(exc.status_code, _ms(started), 0)
        raise
    results = _results(uploads.items, scored, state.settings.model_name, embedding)
    latency_ms = _ms(started)
    status = 200
    body: dict[str, Any] = {"request_id": request_id, "results": results}
    if uploads.single:
        body = {"request_id": request_id, **results[0]}
        status = 422 if results[0].get("error") else 200
    state.stats.observe(status, latency_ms, len(results))
    if state.inference_log is not None:
        rows = _log_rows(request_id, received_at, latency_ms, uploads.items, results)
        if state.settings.online_to_labeling:
            _attach_for_labeling(rows, uploads.items, scored, state.settings.confidence_threshold)
        state.inference_log.record(rows)
    return JSONResponse(body, status_code=status, headers={"X-Request-ID": request_id})


def _admit(request: Request, settings: Settings) -> tuple[int, int | None]:
    """The body limit for this request's type and its declared length, refused (415, 413) before
    anything is read or reserved."""
    kind = media_type(request.headers.get("content-type", ""))
    check_kind(kind)
    limit = body_limit(settings, kind)
    return limit, check_declared_length(request.headers.get("content-length"), limit)


async def _read(request: Request, settings: Settings, limit: int, reserve: Callable[[int], None] | None) -> Uploads:
    content_type = request.headers.get("content-type", "")
    try:
        body = await read_capped(request.stream(), limit, "request body", reserve)
    except ClientDisconnect:
        raise RequestRefused(400, "the client went away before sending the whole body") from None
    # Off the event loop: splitting a large batch and reading image headers takes milliseconds.
    # A bytearray reads as bytes here; converting would copy the whole body.
    return await asyncio.to_thread(parse_uploads, settings, content_type, body)  # type: ignore[arg-type]


def _results(items: list[Upload], scored: Scored | None, model_name: str, embedding: bool) -> list[dict[str, Any]]:
    rows = iter(scored.rows) if scored is not None else iter(())
    results = []
    for item in items:
        result: dict[str, Any] = {"id": item.caller_id}
        if item.content is None:
            result["error"] = item.error
        else:
            row = next(rows)
            result.update(_prediction(row, scored, model_name))  # type: ignore[arg-type]
            if embedding:
                value = row.get("embedding")
                result["embedding"] = None if value is None else [float(x) for x in value]
        results.append(result)
    return results


def _prediction(row: dict[str, Any], scored: Scored, model_name: str) -> dict[str, Any]:
    if row.get("error"):
        return {"error": row["error"], "model_name": model_name, "model_version": scored.model_version}
    probabilities = {name: round(float(p), 6) for name, p in zip(scored.class_names, row["probabilities"], strict=True)}
    return {
        "label": row["label"],
        "confidence": float(row["confidence"]),
        "probabilities": probabilities,
        "model_name": model_name,
        "model_version": scored.model_version,
    }


def _log_rows(
    request_id: str, received_at: dt.datetime, latency_ms: float, items: list[Upload], results: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    return [
        {
            "request_id": request_id,
            "item": index,
            "request_date": received_at.date(),
            "received_at": received_at,
            "latency_ms": latency_ms,
            "caller_id": item.caller_id,
            "content_hash": None if item.content is None else content_hash(item.content),
            "size_bytes": None if item.content is None else len(item.content),
            "model_name": result.get("model_name"),
            "model_version": result.get("model_version"),
            "label": result.get("label"),
            "confidence": result.get("confidence"),
            "error": result.get("error"),
        }
        for index, (item, result) in enumerate(zip(items, results, strict=True))
    ]


def _attach_for_labeling(
    rows: list[dict[str, Any]], items: list[Upload], scored: Scored | None, threshold: float
) -> None:
    """The bytes and probabilities the labeling hand-off needs, on the unsure rows only (the
    queue is bounded in rows: bytes ride along only where they may be sent)."""
    answers = iter(scored.rows) if scored is not None else iter(())
    for row, item in zip(rows, items, strict=True):
        if item.content is None:
            continue
        answer = next(answers)
        if scored is not None and not answer.get("error") and answer["confidence"] < threshold:
            row[CONTENT] = item.content
            row[PROBABILITIES] = [float(p) for p in answer["probabilities"]]
            row[CLASS_NAMES] = list(scored.class_names)
            vector = answer.get("embedding")
            row[EMBEDDING] = None if vector is None else [float(v) for v in vector]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
