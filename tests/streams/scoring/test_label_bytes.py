"""Labels belong to bytes: an image overwritten in storage keeps one row and loses its stale label.

Blobs in Azurite announced by arrival records (as the handlers write them), the scoring stream run
with a registered champion, the human label through a real export of the hand-off's copy URL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import numpy as np
import pytest

from handlers.intake.label_exports import apply_export, parse_export
from infra.arrivals import write_arrival_records
from infra.blob import BlobStore
from infra.image_bytes import STALE_BYTES
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES, LABEL_HISTORY, LABELING_REQUESTS
from streams.scoring.query import run_scoring
from tests.helpers.images import png_bytes
from tests.helpers.streams import CLASSES, arrival_record

pytestmark = [pytest.mark.spark, pytest.mark.azurite]


def arrive(settings: Settings, name: str, data: bytes, day: dt.date, event: str) -> str:
    store = BlobStore(settings)
    store.upload(settings.images_container, name, data, content_type="image/png")
    at = dt.datetime(day.year, day.month, day.day, 9, tzinfo=dt.UTC).isoformat()
    record = arrival_record(settings, store, name, data, at=at)
    write_arrival_records(settings, [dataclasses.replace(record, event_id=event, etag=f"0x{event}")])
    return store.url(settings.images_container, name)


def label(settings: Settings, image_url: str, value: str, event: str) -> dict:
    export = json.dumps({"image_url": image_url, "label": value}).encode()
    lake = Lake(settings)
    stamp = dt.datetime.now(dt.UTC)
    return apply_export(
        settings, lake, parse_export(export), event_id=event, export_url=event, classes=CLASSES, labeled_at=stamp
    ).as_dict()


def halves(*, vertical: bool, size: int = 32) -> bytes:
    """A dark and a light half, split left/right or top/bottom: two pictures, not one picture twice
    (the hand-off would skip a near-duplicate, and a change of brightness alone is one)."""
    pixels = np.full((size, size, 3), 20, dtype=np.uint8)
    if vertical:
        pixels[:, size // 2 :] = 220
    else:
        pixels[size // 2 :, :] = 220
    return png_bytes(pixels)


def copies(settings: Settings, path: str) -> dict[str | None, str]:
    """content hash sent -> the copy's URL, from the ledger."""
    ledger = Lake(settings).read(LABELING_REQUESTS, columns=["path", "content_hash", "image_url"]).to_pylist()
    return {r["content_hash"]: r["image_url"] for r in ledger if r["path"] == path}


@pytest.mark.parametrize(("engine", "days_apart"), [("delta-rs", 1), ("spark", 1), ("delta-rs", 0)])
def test_an_overwritten_image_keeps_one_row_and_loses_its_stale_label(
    spark, score_blob_settings: Settings, engine: str, days_apart: int
) -> None:
    tag = f"{engine.replace('-', '')}{days_apart}"
    settings = score_blob_settings.model_copy(
        update={
            "lake_engine": engine,
            "labeling_container": f"labeling-bytes-{tag}",
            "labeling_daily_budget": 10,
            "labeling_window_s": 0,
            "labeling_strategy": "threshold",
            "confidence_threshold": 1.01,  # every image is unsure: each content is sent
        }
    )
    BlobStore(settings).ensure_containers()
    first_day = dt.date(2026, 12, 1)
    path = arrive(settings, f"bytes-{tag}/img.png", halves(vertical=True), first_day, "ev-1")
    run_scoring(settings, once=True)
    lake = Lake(settings)
    (old_hash, old_copy), *_ = copies(settings, path).items()
    assert label(settings, old_copy, CLASSES[0], "label-1")["merged"] == 1

    arrive(settings, f"bytes-{tag}/img.png", halves(vertical=False), first_day + dt.timedelta(days=days_apart), "ev-2")
    run_scoring(settings, once=True)

    rows = [r for r in lake.read(IMAGES).to_pylist() if r["path"] == path]
    assert len(rows) == 1, "one row per path, whatever the day"
    row = rows[0]
    assert row["load_date"] == first_day and row["content"] == halves(vertical=False)
    assert (row["label"], row["label_source"], row["labeled_at"], row["labeled_content_hash"]) == (None,) * 4
    history = lake.read(LABEL_HISTORY).to_pylist()
    assert [(h["label"], h["reason"], h["content_hash"]) for h in history] == [(CLASSES[0], STALE_BYTES, old_hash)]
    # The new bytes were scored and sent again, as a request of their own.
    sent = copies(settings, path)
    assert set(sent) == {old_hash, row["content_hash"]} and row["sent_to_labeling_at"] is not None

    # A late label of the old copy is not the label of the new bytes.
    late = label(settings, old_copy, CLASSES[1], "label-late")
    assert late["merged"] == 1 and late["updated"] == 0
    assert lake.read(IMAGES, columns=["label"]).column("label").to_pylist() == [None]
    # The new copy's label is.
    assert label(settings, sent[row["content_hash"]], CLASSES[1], "label-2")["updated"] == 1
    final = lake.read(IMAGES, columns=["label", "labeled_content_hash", "content_hash"]).to_pylist()
    assert final == [
        {"label": CLASSES[1], "labeled_content_hash": row["content_hash"], "content_hash": row["content_hash"]}
    ]
