"""The model server's FastAPI app (``lakesight serve-model``).

``POST /v1/classify``: one image as the raw body (``image/*``) or a multipart batch; answers
label, confidence, per-class probabilities, model name and version per image. ``GET /v1/model``
names the version being served, ``GET /v1/stats`` its counters, ``GET /healthz`` liveness (the
only route without the ``X-API-Key`` header). The champion is ``infra.champion``'s cache, so a
promotion or rollback is picked up within ``champion_check_s`` without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from infra.champion import load_failure
from infra.images import content_hash
from infra.registry import RegistryError
from infra.settings import Settings
from infra.status import HEARTBEAT_EVERY_S, SERVING, model_server_status_path, write_status_file
from infra.web import RequestRefused, key_matches, refused_response
from serving.batcher import ChampionLookup, MicroBatcher, Scored, served_classifier
from serving.inference_log import CLASS_NAMES, CONTENT, EMBEDDING, PROBABILITIES, InferenceLog
from serving.stats import ServingStats
from serving.uploads import (
    Upload,
    body_limit,
    check_declared_length,
    check_kind,
    media_type,
    parse_uploads,
    read_capped,
)

log = logging.getLogger(__name__)

CLASSIFY_PATH = "/v1/classify"
API_KEY_HEADER = "X-API-Key"


@dataclass
class ServingState:
    settings: Settings
    key: bytes
    batcher: MicroBatcher
    inference_log: InferenceLog | None
    stats: ServingStats


# Async although they only read app.state: FastAPI runs a plain ``def`` dependency in its thread pool.
async def _state(request: Request) -> ServingState:
    return request.app.state.serving


async def require_api_key(request: Request) -> None:
    state: ServingState = request.app.state.serving
    if state.key and not key_matches(request.headers.get(API_KEY_HEADER), state.key):
        state.stats.refused(401)
        raise RequestRefused(401, f"missing or wrong {API_KEY_HEADER} header")


ApiKeyDep = Depends(require_api_key)
StateDep = Annotated[ServingState, Depends(_state)]
router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/model", dependencies=[ApiKeyDep])
async def model(state: StateDep) -> dict[str, Any]:
    classifier, version = await _champion(state.batcher.model())
    return {
        "model_name": state.settings.model_name,
        "model_version": version,
        "class_names": list(classifier.class_names),
        "image_size": classifier.image_size,
    }


@router.get("/v1/stats", dependencies=[ApiKeyDep])
async def stats(state: StateDep) -> dict[str, Any]:
    out: dict[str, Any] = state.stats.snapshot()
    out["model_batches"] = state.batcher.batches
    out["model_batch_images_mean"] = round(state.batcher.batched_images / max(state.batcher.batches, 1), 2)
    online = state.inference_log
    if online is not None:
        out["online_predictions"] = {"written": online.written, "queued": online.queued, "dropped": online.dropped}
    return out


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
        uploads = await _read(request, state.settings)
        good = [u for u in uploads.items if u.content is not None]
        scored = await _champion(state.batcher.classify([u.content for u in good if u.content])) if good else None
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


async def _read(request: Request, settings: Settings):
    content_type = request.headers.get("content-type", "")
    kind = media_type(content_type)
    check_kind(kind)
    limit = body_limit(settings, kind)
    check_declared_length(request.headers.get("content-length"), limit)
    try:
        body = await read_capped(request.stream(), limit, "request body")
    except ClientDisconnect:
        raise RequestRefused(400, "the client went away before sending the whole body") from None
    # Off the event loop: splitting a large batch and reading image headers takes milliseconds.
    return await asyncio.to_thread(parse_uploads, settings, content_type, body)


async def _champion(pending: Any) -> Any:
    """Await a model call; a registry without a champion (or one that cannot load) is a 503."""
    try:
        return await pending
    except RequestRefused:
        raise
    except RegistryError as exc:
        raise RequestRefused(503, str(exc)) from exc
    except Exception as exc:
        log.warning("model unavailable: %s", exc)
        raise RequestRefused(503, f"model unavailable: {type(exc).__name__}: {exc}") from exc


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


def _figures(state: ServingState, status: str) -> dict[str, Any]:
    """What ``lakesight status`` and the status page show of this server (``infra.status``)."""
    online = state.inference_log
    return {
        "state": status,
        "pid": os.getpid(),
        "heartbeat_at": time.time(),
        "serve_alias": state.settings.serve_alias,
        "model_version": state.batcher.version,
        "champion_load_error": load_failure(state.settings, alias=state.settings.serve_alias),
        **state.stats.snapshot(),
        "online_predictions": None
        if online is None
        else {
            "written": online.written,
            "queued": online.queued,
            "dropped": online.dropped,
            "failed_writes": online.failed_writes,
            "sent_to_labeling": online.sent_to_labeling,
        },
    }


async def _heartbeat(state: ServingState) -> None:
    path = model_server_status_path(state.settings)
    while True:
        try:
            write_status_file(path, _figures(state, SERVING))
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop the beat; the next one retries
            log.warning("cannot write %s: %s", path, exc)
        await asyncio.sleep(HEARTBEAT_EVERY_S)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServingState = app.state.serving
    await state.batcher.start()
    if state.inference_log is not None:
        state.inference_log.start()
    beating = asyncio.create_task(_heartbeat(state), name="lakesight-model-server-heartbeat")
    yield
    beating.cancel()
    await state.batcher.stop()
    if state.inference_log is not None:
        state.inference_log.stop()
    with contextlib.suppress(OSError):
        write_status_file(model_server_status_path(state.settings), _figures(state, "stopped"))


def create_app(
    settings: Settings, *, champion: ChampionLookup = served_classifier, inference_table: bool = True
) -> FastAPI:
    """The model server for ``settings``; the key is checked (azure mode) before anything starts."""
    key = settings.model_secret().encode()
    if not key:
        log.warning("the model server runs without an API key (LAKESIGHT_MODEL_API_KEY is empty)")
    app = FastAPI(title="lakesight model server", lifespan=_lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serving = ServingState(
        settings=settings,
        key=key,
        batcher=MicroBatcher(settings, champion),
        inference_log=InferenceLog(settings) if inference_table else None,
        stats=ServingStats(),
    )
    app.add_exception_handler(RequestRefused, refused_response)
    app.include_router(router)
    return app
