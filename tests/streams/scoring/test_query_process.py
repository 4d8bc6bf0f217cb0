"""`lakesight score` as its own process: SIGKILL mid-run, restart, every image scored exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from infra.lake import Lake
from infra.local.sample_data import ShapeKnobs, shape_images, write_images
from infra.settings import Settings
from infra.status_files import read_stream_status, stream_state
from infra.tables import IMAGES
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.spark, pytest.mark.e2e, pytest.mark.slow]
FILES = 60


def start_score(settings: Settings, source: Path, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "LAKESIGHT_STATE_DIR": str(settings.state_dir),
        "LAKESIGHT_SPARK_MASTER": "local[1]",  # one Python worker: one TensorFlow start-up
        "LAKESIGHT_LABELING_DAILY_BUDGET": "0",
        "LAKESIGHT_SCORE_MAX_FILES_PER_TRIGGER": "6",
        "LAKESIGHT_SCORE_MAX_BYTES_PER_TRIGGER": "0",
        "LAKESIGHT_SCORE_TRIGGER_S": "0.2",
    }
    cli = Path(sys.executable).with_name("lakesight")
    with log.open("ab") as handle:
        # Own session: SIGKILL takes the driver, its JVM and its Python workers together, like a crash.
        return subprocess.Popen(
            [str(cli), "score", "--source", str(source)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def row_count(lake: Lake) -> int:
    try:
        return lake.read(IMAGES, columns=["path"]).num_rows if lake.exists(IMAGES) else 0
    except Exception:  # noqa: BLE001 - a commit in flight: ask again
        return 0


def batch_recorded(settings: Settings, lake: Lake) -> bool:
    """A batch committed to the table and recorded in the stream's status file: the commit comes first,
    so a kill right after it saw rows without ``last_batch`` (a flake); both must be there."""
    status = read_stream_status(settings) or {}
    return status.get("last_batch") is not None and row_count(lake) > 0


def test_sigkill_mid_run_then_restart_scores_every_image_exactly_once(score_settings: Settings, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    write_images(shape_images(ShapeKnobs(count=FILES, size=24, holdout_fraction=0)), out_dir=incoming)
    files = {f"file:{p}" for p in incoming.rglob("*.png")}
    lake = Lake(score_settings)
    log = tmp_path / "score.log"

    first = start_score(score_settings, incoming, log)
    try:
        wait_until(lambda: batch_recorded(score_settings, lake), "a recorded batch", process=first, log=log)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    killed_at = row_count(lake)
    assert 0 < killed_at < FILES, "the kill should land mid-run"
    # The killed stream's status file still claims "running"; what status reports is the truth.
    stream = stream_state(score_settings)
    assert stream is not None and (stream["reported_state"], stream["state"]) == ("running", "stopped")
    assert stream["pid"] == first.pid and stream["last_batch_at"] is not None

    second = start_score(score_settings, incoming, log)
    try:
        wait_until(lambda: row_count(lake) >= FILES, "every image scored", process=second, log=log)
        assert (stream_state(score_settings) or {}).get("state") == "running"
        second.send_signal(signal.SIGTERM)  # graceful stop: exit 0 with a report
        assert second.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)

    # Counts in = rows out (no MERGE lost a record under a kill, delta#370): one row per file.
    table = lake.read(IMAGES, columns=["path", "model_version", "error"])
    paths = table.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == FILES
    assert set(paths) == files
    assert pc.all(pc.equal(table.column("model_version"), "1")).as_py()
    # Exactly once: across every MERGE commit, each image was inserted once and never rewritten.
    merges = [h for h in lake.history(IMAGES) if h.get("operation") == "MERGE"]
    inserted = sum(int(h["operationMetrics"]["num_target_rows_inserted"]) for h in merges)
    updated = sum(int(h["operationMetrics"]["num_target_rows_updated"]) for h in merges)
    assert (inserted, updated) == (FILES, 0)
