"""A tracking server that is down when ``lakesight score`` or ``train`` starts: one line naming it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from infra.processes import free_port
from tests.helpers.cli import lakesight

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("command", [["score", "--once"], ["train", "--epochs", "1"]])
def test_a_tracking_server_that_is_down_at_start_is_one_line_naming_it(command: list[str], tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    done = lakesight(*command, state=tmp_path / "state", LAKESIGHT_MLFLOW_TRACKING_URI=uri)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"MLflow tracking URI {uri} is not reachable" in errors[0], done.stderr[-3000:]
    assert "API request to" not in errors[0]  # MLflow's own page of URLs stays out of it
    assert time.monotonic() - started < 120  # no retry storm
