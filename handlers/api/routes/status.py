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

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse

from handlers.api.deps import ServiceDep, SettingsDep, StatusKeyDep
from infra.core.status import snapshot
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
