"""The lakesight command, run the way a user runs it."""

import json
from pathlib import Path

import pytest

from tests.helpers.cli import lakesight


def test_help_lists_the_subcommands(tmp_path: Path) -> None:
    result = lakesight("--help", state=tmp_path)
    assert result.returncode == 0
    for command in ("data", "ingest", "stack", "tables", "config"):
        assert command in result.stdout


def test_config_masks_secrets(tmp_path: Path) -> None:
    result = lakesight("config", state=tmp_path, LAKESIGHT_EVENT_KEY="hush-hush")
    assert result.returncode == 0
    shown = json.loads(result.stdout)
    assert shown["event_key"] == "**********" and "hush-hush" not in result.stdout


def test_bad_setting_is_a_one_line_error(tmp_path: Path) -> None:
    result = lakesight("config", state=tmp_path, LAKESIGHT_CONFIDENCE_THRESHOLD="2")
    assert result.returncode == 1
    assert "invalid settings" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.spark
@pytest.mark.slow
def test_data_ingest_twice_and_tables(tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    made = lakesight("data", "shapes", "--out", str(out), "--count", "30", "--size", "32", state=tmp_path)
    assert made.returncode == 0, made.stderr
    assert sum(json.loads(made.stdout)["written"].values()) == 30
    first = lakesight("ingest", str(out), "--labeled", state=tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["inserted"] == 30
    second = lakesight("ingest", str(out), "--labeled", state=tmp_path)
    assert json.loads(second.stdout)["inserted"] == 0
    tables = lakesight("tables", state=tmp_path)
    assert tables.returncode == 0
    assert "images" in tables.stdout and "30" in tables.stdout


def test_ingest_of_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    result = lakesight("ingest", str(tmp_path / "missing"), state=tmp_path)
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_data_needs_exactly_one_destination(tmp_path: Path) -> None:
    result = lakesight("data", "digits", state=tmp_path)
    assert result.returncode == 1 and "exactly one" in result.stderr


def test_status_shows_the_dead_letters(tmp_path: Path) -> None:
    from infra.deadletters import DeadLetter, DeadLetterTable
    from infra.settings import Settings

    state = tmp_path / "state"
    table = DeadLetterTable(Settings(state_dir=state))
    table.record([DeadLetter("e1", "Microsoft.Storage.BlobCreated", "refused", "unsafe blob url: '..' segment", "{}")])
    table.record([DeadLetter("e2", "Microsoft.Storage.BlobCreated", "failed", "OSError: disk full", "{}")])
    result = lakesight("status", state=state, COLUMNS="200")
    assert result.returncode == 0, result.stderr
    assert "dead letters (2 in all, latest first)" in result.stdout
    assert "OSError: disk full" in result.stdout and "unsafe blob url: '..' segment" in result.stdout


def test_status_shows_the_labeling_queue(tmp_path: Path) -> None:
    import datetime as dt

    import pyarrow as pa

    from infra.lake import Lake
    from infra.settings import Settings
    from infra.tables import LABELING_CANDIDATES, LABELING_REQUESTS

    state = tmp_path / "state"
    lake = Lake(Settings(state_dir=state))
    now = dt.datetime.now(dt.UTC)
    lake.merge(LABELING_REQUESTS, pa.table({"path": ["a"], "request_date": [now.date()], "sent_at": [now]}))
    lake.merge(
        LABELING_CANDIDATES,
        pa.table({"path": ["b", "c"], "window_date": [now.date()] * 2, "outcome": [None, None]}),
    )
    result = lakesight("status", state=state, COLUMNS="250", LAKESIGHT_LABELING_WINDOW_S="3600")
    assert result.returncode == 0, result.stderr
    assert "2 waiting, 1 of 1000 sent today" in result.stdout
    assert "(margin_diversity, windows of 3600 s)" in result.stdout
