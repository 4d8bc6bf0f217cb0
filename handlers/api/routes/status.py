"""The live status page at ``/``, its data at ``/api/status``, and ``/healthz``: read-only.

In azure mode the page and its data need the event key (:data:`handlers.api.deps.StatusKeyDep`)
unless ``status_public`` is set; ``/healthz`` stays open for health probes.

The page is ``handlers/static/status.html`` (inline CSS and JavaScript), read once at import; its
script refreshes every few seconds from :func:`infra.core.status.snapshot`, which reads state and
creates nothing. Its charts are drawn by uPlot, pinned in ``package.json`` and installed by
``npm install`` (``make install``): the app serves it from the project's ``node_modules`` at
``/assets/uplot.js`` and ``/assets/uplot.css``, so nothing is fetched from the internet.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from handlers.api.deps import ServiceDep, StatusKeyDep
from handlers.intake.lanes import describe
from handlers.intake.service import HandlerService
from infra.core.status import CachedSnapshot
from infra.processes import PROJECT_ROOT

PAGE = resources.files("handlers").joinpath("static", "status.html").read_text(encoding="utf-8")
UPLOT_DIST = PROJECT_ROOT / "node_modules" / "uplot" / "dist"
# The page's stable asset names -> (file in uPlot's npm package, media type).
ASSETS = {
    "uplot.js": ("uPlot.iife.min.js", "text/javascript"),
    "uplot.css": ("uPlot.min.css", "text/css"),
}

router = APIRouter()


@router.get("/api/status")
async def status_json(_key: StatusKeyDep, request: Request) -> dict[str, Any]:
    """The status snapshot, taken at most every ``status_cache_s`` whatever the number of open pages."""
    cache: CachedSnapshot = request.app.state.status
    return await run_in_threadpool(cache.get)


@router.get("/", response_class=HTMLResponse)
async def status_page(_key: StatusKeyDep) -> str:
    return PAGE


@router.get("/healthz")
async def healthz(service: ServiceDep) -> JSONResponse:
    """200 while every lane runs and the event log answers; 503 naming each problem otherwise."""
    health = await run_in_threadpool(_health, service)
    return JSONResponse(health, status_code=503 if health["problems"] else 200)


def _health(service: HandlerService) -> dict[str, Any]:
    health = service.health()
    try:
        health["pending_triggers"] = service.launcher.pending_triggers()
    except Exception as exc:  # noqa: BLE001 - a probe gets an answer, naming what it could not read
        health["problems"].append(f"launcher database unreadable: {describe(exc)}")
        health["status"] = "unhealthy"
    return health


def asset_file(name: str, dist: Path = UPLOT_DIST) -> tuple[Path, str]:
    """The file behind ``/assets/<name>`` and its media type; 404 for any other name, and a
    clear 404 when npm has not installed uPlot."""
    if name not in ASSETS:
        raise HTTPException(status_code=404, detail=f"no asset {name!r}")
    file_name, media_type = ASSETS[name]
    path = dist / file_name
    if not path.is_file():
        raise HTTPException(status_code=404, detail="uPlot is not installed: run 'make install' (npm install)")
    return path, media_type


@router.get("/assets/{name}")
async def status_asset(name: str) -> FileResponse:
    path, media_type = asset_file(name)
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})
