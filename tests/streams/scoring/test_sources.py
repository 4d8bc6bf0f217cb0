"""Arrival records -> blob bytes fetched on executors from Azurite -> scored rows."""

from __future__ import annotations

import datetime as dt

import pytest

from infra.arrivals import write_arrival_records
from infra.blob import BlobStore
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES
from streams.scoring.fetch import VANISHED
from streams.scoring.query import run_scoring
from tests.helpers.images import solid_png, truncated_png
from tests.helpers.streams import CLASSES, arrival_record

pytestmark = [pytest.mark.spark, pytest.mark.azurite]


def test_records_are_fetched_scored_and_a_vanished_blob_is_recorded_once(spark, score_blob_settings: Settings) -> None:
    settings = score_blob_settings
    store = BlobStore(settings)
    now = dt.datetime.now(dt.UTC).isoformat()
    present = {f"incoming/img-{i}.png": solid_png(40 * i + 20) for i in range(4)}
    for name, data in present.items():
        store.upload(settings.images_container, name, data, content_type="image/png")
    store.upload(settings.images_container, "incoming/broken.png", truncated_png())
    records = [arrival_record(settings, store, name, data, at=now) for name, data in present.items()]
    records.append(arrival_record(settings, store, "incoming/broken.png", truncated_png(), at=now))
    records.append(arrival_record(settings, store, "incoming/gone.png", solid_png(1), at=now))  # never uploaded
    records.append(records[0])  # Event Grid delivers at least once
    write_arrival_records(settings, records[:3])
    write_arrival_records(settings, records[3:])

    report = run_scoring(settings, once=True)

    rows = {r["path"]: r for r in Lake(settings).read(IMAGES).to_pylist()}
    assert len(rows) == 6 and report.rows == 6
    for name, data in present.items():
        row = rows[store.url(settings.images_container, name)]
        assert row["content"] == data and row["error"] is None
        assert row["predicted_label"] in CLASSES and row["model_version"] == "1"
        assert row["load_date"] == dt.date.fromisoformat(now[:10])
    gone = rows[store.url(settings.images_container, "incoming/gone.png")]
    assert gone["error"] == VANISHED and gone["predicted_label"] is None and gone["content"] is None
    broken = rows[store.url(settings.images_container, "incoming/broken.png")]
    assert broken["error"].startswith("undecodable") and broken["predicted_label"] is None

    # Nothing new: a second pass reads no record again (the vanished blob is not retried).
    assert run_scoring(settings, once=True).rows == 0


def test_arrival_batches_keep_to_the_byte_budget(spark, score_blob_settings: Settings) -> None:
    store = BlobStore(score_blob_settings)
    now = dt.datetime.now(dt.UTC).isoformat()
    images = {f"big/img-{i}.png": solid_png(30 * i + 10, size=48) for i in range(6)}
    for name, data in images.items():
        store.upload(score_blob_settings.images_container, name, data, content_type="image/png")
    # Two images' worth of bytes per micro-batch: large blobs must not all reach the driver at once.
    budget = 2 * max(len(data) for data in images.values())
    settings = score_blob_settings.model_copy(update={"score_max_bytes_per_trigger": budget})
    records = [arrival_record(settings, store, name, data, at=now) for name, data in images.items()]
    assert len(write_arrival_records(settings, records)) == 3  # one delivery, cut at the budget

    batches: list[int] = []
    report = run_scoring(settings, once=True, on_batch=lambda batch: batches.append(batch.table.num_rows))

    assert report.rows == 6 and batches == [2, 2, 2]  # before: one batch of all six
    assert sum(len(images[n]) for n in list(images)[:2]) <= budget
