"""Entry points: the Azure Functions app, and the CLI commands (bench events, relay --once)."""

from __future__ import annotations

import asyncio
import importlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.cli import app as cli
from infra.settings import get_settings


@pytest.fixture
def env_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LAKESIGHT_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_function_app_serves_the_same_app(env_settings) -> None:
    import azure.functions as func

    module = importlib.import_module("handlers.function_app")
    module = importlib.reload(module)  # build it with this test's settings
    assert isinstance(module.app, func.AsgiFunctionApp)
    (function,) = module.app.get_functions()
    trigger = function.get_bindings_dict()["bindings"][0]
    assert trigger["type"] == "httpTrigger" and trigger["route"] == "/{*route}"

    async def call(method: str, path: str, body: bytes = b"") -> func.HttpResponse:
        request = func.HttpRequest(method=method, url=f"http://localhost{path}", headers={}, body=body)
        return await function.get_user_function()(request, None)

    assert json.loads(asyncio.run(call("GET", "/healthz")).get_body())["status"] == "ok"
    assert asyncio.run(call("POST", "/api/events", b"[]")).status_code == 401


def test_cli_bench_events_prints_figures(env_settings) -> None:
    result = CliRunner().invoke(cli, ["bench", "events", "--events", "300", "--batch", "30", "--concurrency", "2"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["events"] == 300 and figures["duplicates_suppressed"] == 30
    assert figures["processed"] == {"done": 300} and figures["events_per_s"] > 0
    assert {"seconds", "p50_ms", "p99_ms"} <= set(figures)


@pytest.mark.azurite
def test_cli_relay_once(env_settings, azurite_port: int) -> None:
    from handlers.app import create_app
    from handlers.server import running
    from infra.blob import BlobStore
    from infra.settings import Settings
    from tests.helpers.images import solid_png

    env_settings.setenv("LAKESIGHT_BLOB_PORT", str(azurite_port))
    settings = Settings()
    BlobStore(settings).upload(settings.images_container, "cli/one.png", solid_png(), content_type="image/png")
    with running(create_app(settings)) as url:
        result = CliRunner().invoke(cli, ["relay", "--once", "--url", url])
        again = CliRunner().invoke(cli, ["relay", "--once", "--url", url])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["announced"] >= 1  # the session's Azurite may hold other tests' blobs
    assert json.loads(again.stdout) == {"announced": 0}


def test_cli_serve_runs_the_webhook(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    import httpx

    from handlers.server import free_port

    port = free_port()
    env = {**os.environ, "LAKESIGHT_STATE_DIR": str(tmp_path / "state"), "LAKESIGHT_EVENT_KEY": "serve-key"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "lakesight serve did not come up"
            time.sleep(0.2)
        validation = [
            {
                "id": "v",
                "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                "data": {"validationCode": "c0de"},
            }
        ]
        answer = httpx.post(f"{base}/api/events", json=validation, headers={"aeg-sas-key": "serve-key"})
        assert answer.json() == {"validationResponse": "c0de"}
        assert httpx.post(f"{base}/api/events", json=validation).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "refused unauthenticated delivery" in proc.stderr.read().decode()
