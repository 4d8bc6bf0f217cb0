"""The webhook under uvicorn: ``lakesight serve`` as its own process, and ``running`` in a thread."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from handlers.app import create_app
from handlers.server import running
from infra.processes import free_port
from infra.settings import Settings


def test_cli_serve_runs_the_webhook(tmp_path: Path) -> None:
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


def test_running_serves_until_the_block_ends(settings: Settings) -> None:
    app = create_app(settings)
    with running(app) as url:
        assert url.endswith("/api/events")
        assert httpx.get(url.replace("/api/events", "/healthz")).json()["status"] == "ok"
    with pytest.raises(httpx.TransportError):  # stopped: nothing listens on the port any more
        httpx.get(url.replace("/api/events", "/healthz"), timeout=2)
