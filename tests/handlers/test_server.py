"""The webhook under uvicorn: ``lakesight serve-events`` (old name ``serve``) as a process, ``running`` in a thread."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from handlers.api.app import create_app
from handlers.server import running
from infra.processes import free_port
from infra.settings import Settings
from tests.helpers.handlers import answers, blob_event_dict
from tests.helpers.waiting import wait_until


def test_cli_serve_runs_the_webhook(tmp_path: Path) -> None:
    """Through the old name `serve`, which stays an alias of `serve-events` for existing scripts."""
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
        wait_until(lambda: answers(f"{base}/healthz"), "lakesight serve to come up", process=proc)
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


def test_running_serves_until_the_block_ends(settings: Settings) -> None:
    app = create_app(settings)
    with running(app) as url:
        assert url.endswith("/api/events")
        assert httpx.get(url.replace("/api/events", "/healthz")).json()["status"] == "ok"
    with pytest.raises(httpx.TransportError):  # stopped: nothing listens on the port any more
        httpx.get(url.replace("/api/events", "/healthz"), timeout=2)


@pytest.mark.parametrize(("mode", "host"), [("local", "0.0.0.0"), ("azure", "127.0.0.1")])
def test_serve_refuses_an_empty_event_key(tmp_path: Path, mode: str, host: str) -> None:
    env = {
        **os.environ,
        "LAKESIGHT_STATE_DIR": str(tmp_path / "state"),
        "LAKESIGHT_EVENT_KEY": "",
        "LAKESIGHT_MODE": mode,
    }
    # A subprocess with a timeout: a server that starts anyway would otherwise serve forever.
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "serve-events", "--host", host, "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    reason = "allowed only on a loopback bind" if mode == "local" else "LAKESIGHT_EVENT_KEY is empty"
    assert reason in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()  # refused before anything was opened


def test_an_empty_key_on_loopback_serves_unauthenticated_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(state_dir=tmp_path / "state", event_key="")
    with caplog.at_level(logging.WARNING, logger="handlers.api.app"):
        app = create_app(settings, host="127.0.0.1")
    assert any("runs unauthenticated" in r.getMessage() for r in caplog.records)
    with running(app) as url:
        assert httpx.post(url, json=[blob_event_dict(settings, "images", "a.png")]).status_code == 200
