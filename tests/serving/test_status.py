"""The model server's figures reach ``lakesight status`` and the status page, and say when it stopped."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from handlers.api.app import create_app as webhook_app
from handlers.server import running
from infra.cli.local import _pipeline_rows
from infra.settings import Settings
from infra.status_files import model_server_state, model_server_status_path, write_status_file
from tests.helpers.browser import CHROMIUM, Browser
from tests.helpers.images import solid_png
from tests.helpers.serving import model_server, post_image
from tests.helpers.waiting import wait_until


def _wait_for(settings: Settings, predicate) -> dict:
    return wait_until(
        lambda: (state := model_server_state(settings)) is not None and predicate(state) and state,
        "the model server's status",
    )


def test_status_shows_the_serving_version_rate_and_latency_then_stopped(champion_settings: Settings) -> None:
    with model_server(champion_settings, inference_table=False) as client:
        for value in range(5):
            assert post_image(client, solid_png(value)).status_code == 200
        live = _wait_for(champion_settings, lambda s: s["requests"] >= 5)
    stopped = model_server_state(champion_settings)

    assert live["state"] == "serving" and live["model_version"] == "1" and live["pid"] == os.getpid()
    assert live["requests_per_s"] > 0 and live["p99_ms"] >= live["p50_ms"] > 0
    line = {r["what"]: r["value"] for r in _pipeline_rows({"model_server": live})}["model server"]
    assert line.startswith("serving champion version 1:") and "requests/s" in line
    assert stopped is not None and stopped["state"] == "stopped" and stopped["requests"] == 5


def test_a_file_left_by_a_killed_server_reads_as_stopped(settings: Settings) -> None:
    write_status_file(
        model_server_status_path(settings), {"state": "serving", "pid": 2**22 + 7, "heartbeat_at": time.time()}
    )
    state = model_server_state(settings)
    assert state is not None and state["state"] == "stopped" and "is not running" in state["stale_reason"]


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true", reason="Debian chromium is not installed")
def test_the_status_page_shows_the_model_server(champion_settings: Settings, tmp_path: Path) -> None:
    # Headings are words a person reads; each keeps its field's name in data-key.
    rows = (
        "[...document.querySelectorAll('#model-server tr')]"
        ".map(r => [...r.children].map(c => c.dataset.key ?? c.textContent))"
    )
    with running(webhook_app(champion_settings)) as events_url, Browser(tmp_path / "chromium") as browser:
        with model_server(champion_settings, inference_table=False) as client:
            post_image(client, solid_png(1))
            _wait_for(champion_settings, lambda s: s["requests"] >= 1)
            browser.open(events_url.removesuffix("/api/events") + "/")
            serving = browser.wait_for(
                f"(() => {{ const t = {rows}; return t.length > 1 && t[1][0] === 'serving' && t; }})()"
            )
        stopped = browser.wait_for(
            f"(() => {{ const t = {rows}; return t.length > 1 && t[1][0] === 'stopped' && t; }})()"
        )
    header, row = serving
    shown = dict(zip(header, row, strict=True))
    assert shown["serve_alias"] == "champion" and shown["model_version"] == "1" and shown["requests"] == "1"
    assert float(shown["p99_ms"]) > 0
    assert dict(zip(*stopped, strict=True))["requests"] == "1"
