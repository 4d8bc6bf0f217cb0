"""``/healthz`` (no key), ``/v1/model`` (the version being served) and ``/v1/stats`` (the counters)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from serving.api.deps import ApiKeyDep, StateDep, model_answer

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/model", dependencies=[ApiKeyDep])
async def model(state: StateDep) -> dict[str, Any]:
    classifier, version = await model_answer(state.batcher.model())
    return {
        "model_name": state.settings.model_name,
        "model_version": version,
        "class_names": list(classifier.class_names),
        "image_size": classifier.image_size,
    }


@router.get("/v1/stats", dependencies=[ApiKeyDep])
async def stats(state: StateDep) -> dict[str, Any]:
    out: dict[str, Any] = {**state.stats.snapshot(), **state.budget.snapshot()}
    out["model_batches"] = state.batcher.batches
    out["model_batch_images_mean"] = round(state.batcher.batched_images / max(state.batcher.batches, 1), 2)
    online = state.inference_log
    if online is not None:
        out["online_predictions"] = {"written": online.written, "queued": online.queued, "dropped": online.dropped}
    return out
