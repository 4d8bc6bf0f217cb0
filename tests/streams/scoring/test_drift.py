"""The stream's drift monitor on a champion that learnt the shapes: false alarms, detection, and the event path
through the azure-eventgrid SDK to a real handler whose policy launches retraining."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from infra.lake import Lake
from infra.local.sample_data import ShapeKnobs, shape_images, write_images
from infra.settings import Settings
from infra.tables import DRIFT_REPORTS, IMAGES, LABEL_SOURCE_HUMAN, RETRAINING_DECISIONS
from streams.bench.drift import bench_drift, window_table
from streams.scoring.drift import DriftMonitor
from streams.scoring.query import run_scoring
from tests.helpers.handlers import fake_train_command, serving
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.spark


def test_training_images_raise_at_most_one_alarm_in_20_windows_and_shifts_one_within_3(
    drift_settings: Settings,
) -> None:
    figures = bench_drift(drift_settings, windows=20, images=100, shift_windows=3)
    assert figures["false_alarms"] <= 1, figures
    for name in ("darker", "brighter", "rotated"):
        assert figures["shifts"][name]["windows_to_detect"] is not None, figures
        assert figures["shifts"][name]["windows_to_detect"] <= 3, figures
    assert figures["reports_written"] == 20 + 3 * len(figures["shifts"])
    assert figures["meets_targets"]


def test_a_window_is_one_report_row_and_a_replay_rewrites_it(drift_settings: Settings) -> None:
    settings = drift_settings.model_copy(
        update={"drift_window_batches": 2, "drift_min_images": 50, "drift_events": False}
    )
    lake = Lake(settings)
    monitor = DriftMonitor(settings, lake)
    rotated = ShapeKnobs(count=40, size=32, rotation=60.0, holdout_fraction=0)
    assert monitor.after_batch(window_table(settings, rotated, batch=0), app_id="score:q", batch_id=7) is None
    second = ShapeKnobs(count=40, size=32, rotation=60.0, seed=1, holdout_fraction=0)
    report = monitor.after_batch(window_table(settings, second, batch=1), app_id="score:q", batch_id=8)
    assert report is not None and report["drifted"] and report["images"] == 80
    assert (report["report_id"], report["first_batch_id"], report["last_batch_id"]) == ("score:q:7", 7, 8)
    assert len(report["atypical_paths"]) == 5 and report["event_id"] is None
    # The same window again (a replay after a restart) is the same row.
    again = DriftMonitor(settings, lake)
    again.after_batch(window_table(settings, rotated, batch=0), app_id="score:q", batch_id=7)
    again.after_batch(window_table(settings, second, batch=1), app_id="score:q", batch_id=8)
    assert lake.read(DRIFT_REPORTS).num_rows == 1


def test_a_window_of_a_model_without_reference_is_not_assessed(score_settings: Settings) -> None:
    settings = score_settings.model_copy(update={"drift_window_batches": 1, "drift_min_images": 10})
    monitor = DriftMonitor(settings, Lake(settings))
    table = pa.table(
        {
            "path": [f"p{i}" for i in range(20)],
            "confidence": [0.9] * 20,
            "predicted_label": ["circle"] * 20,
            "model_version": ["1"] * 20,
        }
    )
    assert monitor.after_batch(table, app_id="score:q", batch_id=0) is None
    assert not Lake(settings).exists(DRIFT_REPORTS)


def test_shifted_images_reach_retraining_through_the_drift_event(drift_settings: Settings, tmp_path: Path) -> None:
    record = tmp_path / "launches.txt"
    settings = drift_settings.model_copy(
        update={
            "drift_window_batches": 1,
            "drift_min_images": 60,
            "retrain_command": fake_train_command(record),
            "retrain_cooldown_s": 0,
        }
    )
    lake = Lake(settings)
    # A few human labels since the champion: too few to retrain for (the image drift decides).
    lake.merge(IMAGES, _human_labels(3))
    incoming = tmp_path / "incoming"
    write_images(shape_images(ShapeKnobs(count=80, size=32, brightness=0.5, holdout_fraction=0)), out_dir=incoming)
    with serving(settings) as (url, service):
        run_scoring(settings.model_copy(update={"drift_event_url": url}), source=incoming, once=True)
        assert service.wait_idle(60)
        decisions = wait_until(lambda: _image_drift_decisions(lake), "an image-drift decision")
    reports = lake.read(DRIFT_REPORTS).to_pylist()
    assert len(reports) == 1 and reports[0]["drifted"] and reports[0]["event_error"] is None
    decision = decisions[0]
    assert decision["decision_id"] == reports[0]["event_id"]
    assert "image_drift" in decision["reasons"] and decision["retrain"] and decision["launch"] != "none"
    assert decision["new_labels"] == 3 and decision["dataset_drift"] >= 1
    wait_until(lambda: record.exists() and record.read_text().strip(), "the launcher to run the retraining")


def _human_labels(count: int) -> pa.Table:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    return pa.table(
        {
            "path": [f"file:/labeled/{i}.png" for i in range(count)],
            "load_date": [now.date()] * count,
            "label": ["circle"] * count,
            "label_source": [LABEL_SOURCE_HUMAN] * count,
            "labeled_at": [now] * count,
        }
    )


def _image_drift_decisions(lake: Lake) -> list[dict]:
    if not lake.exists(RETRAINING_DECISIONS):
        return []
    return [r for r in lake.read(RETRAINING_DECISIONS).to_pylist() if r["trigger"] == "image-drift"]
