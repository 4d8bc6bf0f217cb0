"""The model server's request dependencies: its state, the API key, and a model call's refusals."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from infra.registry import RegistryError
from infra.settings import Settings
from infra.web import RequestRefused, key_matches
from serving.admission import InFlightBudget
from serving.batcher import MicroBatcher
from serving.inference_log import InferenceLog
from serving.stats import ServingStats

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"


@dataclass
class ServingState:
    settings: Settings
    key: bytes
    batcher: MicroBatcher
    inference_log: InferenceLog | None
    stats: ServingStats
    budget: InFlightBudget


# Async although they only read app.state: FastAPI runs a plain ``def`` dependency in its thread pool.
async def serving_state(request: Request) -> ServingState:
    return request.app.state.serving


async def require_api_key(request: Request) -> None:
    state: ServingState = request.app.state.serving
    if state.key and not key_matches(request.headers.get(API_KEY_HEADER), state.key):
        state.stats.refused(401)
        raise RequestRefused(401, f"missing or wrong {API_KEY_HEADER} header")


ApiKeyDep = Depends(require_api_key)
StateDep = Annotated[ServingState, Depends(serving_state)]


async def model_answer(pending: Any) -> Any:
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
