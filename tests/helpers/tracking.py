"""A real MLflow tracking server over HTTP (``mlflow server``) that a test can stop mid-way."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from infra.processes import free_port


class TrackingServer:
    def __init__(self, process: subprocess.Popen[bytes], uri: str, log_path: Path):
        self.process, self.uri, self.log_path = process, uri, log_path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextmanager
def tracking_server(database: Path, artifacts: Path, *, timeout_s: float = 120.0) -> Iterator[TrackingServer]:
    """``mlflow server`` on a free loopback port over the SQLite ``database``; stopped on exit."""
    port = free_port()
    # mlflow execs its web server by name: the venv's bin must be on PATH, as in an activated venv.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{database}"]
    argv += ["--artifacts-destination", str(artifacts), "--serve-artifacts", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", "1"]
    log_path = database.with_suffix(".server.log")
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, env={**os.environ, "PATH": path}, stdout=log, stderr=subprocess.STDOUT)
    server = TrackingServer(process, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_until_up(server, timeout_s)
        yield server
    finally:
        server.stop()


def _wait_until_up(server: TrackingServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {server.log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.uri}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer within {timeout_s} s: {server.log_path.read_text()[-3000:]}")
