"""MLflow's own scoring server serves the registered pyfunc and agrees with ``serve-model``."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time

import httpx
import pytest

from infra.processes import free_port
from infra.settings import Settings
from tests.helpers.images import solid_png
from tests.helpers.serving import model_server, post_image

pytestmark = pytest.mark.slow


def test_mlflow_models_serve_gives_the_same_label(champion_settings: Settings, tmp_path) -> None:
    images = [solid_png(30), solid_png(220)]
    with model_server(champion_settings, inference_table=False) as client:
        ours = [post_image(client, image).json() for image in images]

    port = free_port()
    # mlflow execs ``uvicorn`` by name: the venv's bin must be on PATH, as in an activated venv.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": champion_settings.mlflow_tracking_uri}
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{champion_settings.model_name}@champion"]
    argv += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    log_path = tmp_path / "mlflow-serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_until_up(server, f"{base}/ping", log_path)
            # The signature declares one binary column, "content": JSON carries it base64-encoded.
            payload = {
                "dataframe_split": {"columns": ["content"], "data": [[base64.b64encode(i).decode()] for i in images]}
            }
            response = httpx.post(f"{base}/invocations", json=payload, timeout=60)
        finally:
            server.terminate()
            server.wait(30)
    assert response.status_code == 200, response.text
    theirs = response.json()["predictions"]
    assert [p["label"] for p in theirs] == [o["label"] for o in ours]
    for p, o in zip(theirs, ours, strict=True):
        assert p["confidence"] == pytest.approx(o["confidence"], abs=1e-5)


def _wait_until_up(server: subprocess.Popen, url: str, log_path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow models serve did not answer within {timeout} s:\n{log_path.read_text()[-3000:]}")
