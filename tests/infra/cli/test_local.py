"""``lakesight status`` (infra/cli/local.py): run the way a user runs it against a real registry and real processes,
and its pipeline lines."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from infra.cli.local import _pipeline_rows
from infra.settings import Settings
from tests.helpers.cli import lakesight
from tests.helpers.status import promote_versions, shadow_scored, status_left_by_a_killed_stream, stream_process

LAST_BATCH = dt.datetime(2026, 11, 22, 9, 58, 30, tzinfo=dt.UTC)
# The labeling queue as the status snapshot has it (infra.core.labeling.handoff.queue_state).
QUEUE = {
    "waiting": 0,
    "sent_today": 4,
    "daily_budget": 100,
    "budget_left_now": 96,
    "strategy": "margin_diversity",
    "window_s": 0,
    "near_duplicates_skipped_today": 0,
}


def test_status_names_the_registry_champion_and_a_killed_stream_as_stopped(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    promote_versions(settings, [0.9, 0.95])  # as after 'lakesight demo': v2 took the champion alias
    left = status_left_by_a_killed_stream(settings, committed_at=LAST_BATCH.timestamp(), model_version="2")

    result = lakesight("status", state=settings.state_dir, COLUMNS="240")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("champion" in line and "version 2" in line for line in lines), result.stdout
    stopped = f"stopped (last batch 2026-11-22 09:58:30 UTC; process {left['pid']} is not running)"
    assert any("scoring stream" in line and stopped in line for line in lines), result.stdout
    # The versions table, newest first, with the registry's aliases.
    versions = [line for line in lines if re.search(r"0\.9[05]0", line)]
    assert len(versions) == 2, result.stdout
    cells = [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in versions]
    # version, aliases, accuracy, delta version, the split decision (version 1 was champion then), live decision
    assert cells == [["2", "champion", "0.950", "3", "champion", ""], ["1", "", "0.900", "3", "champion", ""]]


def test_status_shows_a_live_stream_as_running(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    with stream_process(settings, committed_at=LAST_BATCH.timestamp(), model_version="1") as live:
        result = lakesight("status", state=settings.state_dir, COLUMNS="240")

    assert result.returncode == 0, result.stderr
    running = f"running (pid {live.pid}, model 1, last batch 2026-11-22 09:58:30 UTC)"
    assert running in result.stdout and "no registry yet" in result.stdout, result.stdout


def test_status_shows_a_storage_outage_only_while_it_lasts() -> None:
    down = {
        "state": "waiting for storage",
        "storage": "unreachable since 2026-12-01T14:00:00+00:00",
        "storage_error": "blob storage unreachable for 10 s: ServiceRequestError: Connection refused",
    }
    lines = {row["what"]: row["value"] for row in _pipeline_rows({"stream": down})}
    assert lines["scoring stream"].startswith("waiting for storage")
    assert lines["blob storage"] == f"{down['storage']}: {down['storage_error']}"
    back = {"state": "running", "storage": None, "storage_error": None}
    assert "blob storage" not in {row["what"] for row in _pipeline_rows({"stream": back})}


def test_a_champion_the_workers_could_not_load_is_a_status_line_while_it_lasts() -> None:
    error = "champion version 3 failed to load; still serving version 2: OSError: truncated archive"
    failing = {"state": "running", "champion_load_error": error}
    lines = {row["what"]: row["value"] for row in _pipeline_rows({"stream": failing, "model_server": failing})}
    assert lines["scoring stream: champion not loaded"] == error
    assert lines["model server: champion not loaded"] == error
    for resolved in (
        {"state": "running", "champion_load_error": None},
        {"state": "stopped", "champion_load_error": error},
    ):
        assert not any("not loaded" in row["what"] for row in _pipeline_rows({"stream": resolved}))


def test_the_last_drift_window_is_a_status_line() -> None:
    windows = [
        {
            "window_end": "2026-12-01T10:00:00+00:00",
            "images": 120,
            "drifted": True,
            "reasons": "confidence,embeddings",
            "psi_confidence": 0.41234,
            "psi_classes": 0.1,
            "mmd_p_value": 0.0025,
        },
        {"window_end": "2026-12-01T09:50:00+00:00", "images": 100, "drifted": False, "reasons": ""},
    ]
    lines = {row["what"]: row["value"] for row in _pipeline_rows({"drift": windows})}
    assert lines["last drift window"] == (
        "2026-12-01 10:00:00 UTC: 120 images, drifted (confidence,embeddings); PSI confidence 0.412, classes 0.1, "
        "MMD p 0.0025 (1 of the last 2 windows drifted)"
    )
    assert "last drift window" not in {row["what"] for row in _pipeline_rows({"drift": []})}


def test_status_shows_the_challenger_s_live_tally_and_why_it_waits(tmp_path: Path) -> None:
    from infra.core.promotion import decide
    from infra.lake import Lake

    settings = Settings(state_dir=tmp_path / "state")
    assert promote_versions(settings, [0.9, 0.95], min_pairs=20) == "1"  # version 2 waits as challenger
    shadow_scored(settings, [("a", "a", "b")] * 4 + [("b", "a", "b")] * 3 + [("a", "a", "a")] * 2, version="2")
    assert decide(settings, Lake(settings)).outcome == "waiting"  # type: ignore[union-attr]

    result = lakesight("status", state=settings.state_dir, COLUMNS="300")

    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "challenger" in line and "split" in line)
    assert (
        "version 2 (split 0.950 vs 0.900): waiting for live evidence: 7 of 20 discordant pairs; "
        "b=4, c=3, both right 2, both wrong 0, p=0.5" in line
    ), result.stdout
    assert "recent promotion decisions (live labels)" in result.stdout
    decided = [line for line in result.stdout.splitlines() if "waiting for live evidence: 7 of 20" in line]
    assert len(decided) == 2, result.stdout  # the pipeline line and the recorded decision


def test_status_before_the_first_batch_says_so_and_never_prints_none(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    result = lakesight("status", state=settings.state_dir, COLUMNS="240")
    assert result.returncode == 0, result.stderr
    assert "None" not in result.stdout, result.stdout
    lines = result.stdout.splitlines()
    assert any("last batch" in line and "no batch yet" in line for line in lines), result.stdout
    assert any("images / scored / errors" in line and "no images yet" in line for line in lines), result.stdout


def test_the_labeling_service_line_counts_open_tasks_annotations_and_refused_labels() -> None:
    service = {
        "name": "label-studio",
        "tasks_open": 3,
        "annotations_received": 12,
        "by_webhook": 11,
        "by_pull": 1,
        "rejects": {"unknown class": 2, "unknown image": 1},
    }
    rows = {r["what"]: r["value"] for r in _pipeline_rows({"labeling": {**QUEUE, "service": service}})}
    assert rows["labeling service"] == (
        "label-studio: 3 tasks open, 12 annotations received (11 by webhook, 1 by pull); "
        "labels refused: unknown class 2, unknown image 1"
    )
    folder = {"name": "container", "tasks_open": None, "annotations_received": 0, "by_webhook": 0, "by_pull": 0}
    rows = {r["what"]: r["value"] for r in _pipeline_rows({"labeling": {**QUEUE, "service": folder}})}
    assert rows["labeling service"] == "container: labels refused: none"
