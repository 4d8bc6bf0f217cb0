"""The live status page at ``/``, its data at ``/api/status``, and ``/healthz``: read-only.

In azure mode the page and its data need the event key (:data:`handlers.deps.StatusKeyDep`)
unless ``status_public`` is set; ``/healthz`` stays open for health probes.

The page is ``handlers/static/status.html``, self-contained (inline CSS, JavaScript and SVG,
nothing fetched from the internet) and read once at import; its script refreshes every few
seconds from :func:`infra.status.snapshot`, which reads state and creates nothing.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from handlers.deps import ServiceDep, SettingsDep, StatusKeyDep
from infra.status import snapshot

PAGE = resources.files("handlers").joinpath("static", "status.html").read_text(encoding="utf-8")

router = APIRouter()


@router.get("/api/status")
async def status_json(_key: StatusKeyDep, settings: SettingsDep) -> dict[str, Any]:
    return await run_in_threadpool(snapshot, settings)


@router.get("/", response_class=HTMLResponse)
async def status_page(_key: StatusKeyDep) -> str:
    return PAGE


@router.get("/healthz")
async def healthz(service: ServiceDep) -> dict[str, object]:
    return {
        "status": "ok",
        "duplicates_suppressed": service.duplicates_suppressed,
        "pending_triggers": service.launcher.pending_triggers(),
    }
