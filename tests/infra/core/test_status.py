"""The status snapshot reads; it never creates state (a first GET /api/status created an MLflow database),
and it says what is true: the registry's champion, and a stream as running only while it lives."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from infra.core.status import snapshot
from infra.processes import pid_alive
from infra.settings import Settings
from infra.status_files import HEARTBEAT_STALE_S, judge_stream
from tests.helpers.status import promote_versions, status_left_by_a_killed_stream

LAST_BATCH = dt.datetime(2026, 11, 22, 9, 58, 30, tzinfo=dt.UTC)


def test_snapshot_of_a_fresh_state_dir_creates_nothing(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    snap = snapshot(settings)
    assert snap["models"] is None and snap["images"] is None and snap["decisions"] == []
    assert not (tmp_path / "state").exists(), sorted(str(p) for p in tmp_path.rglob("*"))


def test_a_status_file_left_by_a_killed_stream_reads_as_stopped_with_its_last_batch(settings: Settings) -> None:
    left = status_left_by_a_killed_stream(settings, committed_at=LAST_BATCH.timestamp(), model_version="2")

    stream = snapshot(settings)["stream"]

    assert not pid_alive(left["pid"])
    assert (stream["state"], stream["reported_state"]) == ("stopped", "running")
    assert stream["stale_reason"] == f"process {left['pid']} is not running"
    assert stream["last_batch_at"] == LAST_BATCH.isoformat() and stream["model_version"] == "2"


def test_a_live_process_counts_as_running_only_while_its_heartbeat_is_fresh() -> None:
    beat = 1_800_000_000.0
    status = {"state": "running", "pid": os.getpid(), "heartbeat_at": beat, "last_batch": None}

    assert judge_stream(status, now=beat + HEARTBEAT_STALE_S)["state"] == "running"
    # The same pid, silent for longer: a hung stream, or the pid reused by another process.
    late = judge_stream(status, now=beat + HEARTBEAT_STALE_S + 1)
    assert (late["state"], late["stale_reason"]) == ("stopped", f"no heartbeat for {HEARTBEAT_STALE_S + 1:.0f} s")
    assert judge_stream({**status, "heartbeat_at": None}, now=beat)["state"] == "stopped"  # a file without one
    assert judge_stream({**status, "state": "stopped"}, now=beat)["stale_reason"] is None  # believed as it is


def test_the_champion_is_the_registry_s_alias_holder(settings: Settings) -> None:
    # As after 'lakesight demo': v1 was champion, v2 trained better and took the alias.
    champion = promote_versions(settings, [0.9, 0.95])

    models = snapshot(settings)["models"]

    assert champion == "2" and models["champion"] == champion
    by_version = {v["version"]: v for v in models["versions"]}
    assert by_version["2"]["aliases"] == ["champion"] and by_version["1"]["aliases"] == []
    assert (by_version["2"]["accuracy"], by_version["2"]["delta_version"]) == (0.95, 3)  # numbers, not tag strings
