"""The model server's FastAPI app (``lakesight serve-model``): the factory, its lifespan and heartbeat.

Routes: ``POST /v1/classify``, ``GET /v1/model``, ``GET /v1/stats``, ``GET /healthz`` (the only one
without the ``X-API-Key`` header). The champion is ``infra.core.model_cache``'s cache, so a promotion
or rollback is picked up within ``champion_check_s`` without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from infra.core.model_cache import load_failure
from infra.settings import Settings
from infra.status_files import HEARTBEAT_EVERY_S, SERVING, model_server_status_path, write_status_file
from infra.web import RequestRefused, refused_response
from serving.admission import InFlightBudget
from serving.api.deps import ServingState
from serving.api.routes import classify, model
from serving.batcher import ChampionLookup, MicroBatcher, served_classifier
from serving.inference_log import InferenceLog
from serving.stats import ServingStats

log = logging.getLogger(__name__)


def _figures(state: ServingState, status: str) -> dict[str, Any]:
    """What ``lakesight status`` and the status page show of this server (``infra.status_files``)."""
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
        budget=InFlightBudget(settings.serve_max_inflight_bytes, settings.serve_max_inflight_requests),
    )
    # Starlette types a handler for Exception; this one takes the subclass it is registered for.
    app.add_exception_handler(RequestRefused, refused_response)  # type: ignore[arg-type]
    app.include_router(model.router)
    app.include_router(classify.router)
    return app
