"""The inference table: every answered image is a row; a full queue drops and counts instead of blocking."""

from __future__ import annotations

import datetime as dt

import pytest

from infra.blob import BlobStore
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES, LABELING_REQUESTS, ONLINE_PREDICTIONS
from serving.inference_log import InferenceLog
from tests.helpers.images import pattern_png, solid_png, truncated_png
from tests.helpers.models import with_model
from tests.helpers.serving import model_server, post_batch, post_image


def test_answered_images_land_in_online_predictions(champion_settings: Settings) -> None:
    with model_server(champion_settings) as client:
        single = post_image(client, solid_png(90)).json()
        batch = post_batch(
            client, [("a.png", solid_png(1), "image/png"), ("bad.png", truncated_png(), "image/png")]
        ).json()
    # Leaving the block stopped the server, and its shutdown wrote what was still queued.
    rows = Lake(champion_settings).read(ONLINE_PREDICTIONS).to_pylist()
    by_request = {}
    for row in rows:
        by_request.setdefault(row["request_id"], []).append(row)
    assert set(by_request) == {single["request_id"], batch["request_id"]}
    (one,) = by_request[single["request_id"]]
    assert one["label"] == single["label"] and one["model_version"] == "1"
    assert one["content_hash"] and one["size_bytes"] == len(solid_png(90)) and one["latency_ms"] > 0
    assert one["request_date"] == dt.datetime.now(dt.UTC).date()
    two = sorted(by_request[batch["request_id"]], key=lambda r: r["item"])
    assert [r["caller_id"] for r in two] == ["a.png", "bad.png"]
    assert two[0]["error"] is None and two[1]["error"] and two[1]["label"] is None


def test_a_full_queue_drops_and_counts(settings: Settings) -> None:
    small = settings.model_copy(update={"online_log_queue": 2})
    online = InferenceLog(small)  # not started: nothing drains the queue
    online.record([_row(i) for i in range(5)])
    assert (online.queued, online.dropped) == (2, 3)
    online.start()
    online.stop()
    assert online.written == 2 and online.queued == 0
    assert Lake(small).read(ONLINE_PREDICTIONS).num_rows == 2


def _row(item: int) -> dict[str, object]:
    now = dt.datetime.now(dt.UTC)
    return {"request_id": "r", "item": item, "request_date": now.date(), "received_at": now, "label": "x"}


@pytest.mark.azurite
def test_unsure_online_images_go_to_labeling_once_when_asked(blob_settings: Settings, model_store) -> None:
    # Its own labeling container: the session's Azurite is shared, and the stream's tests count blobs.
    # The threshold strategy: a budget of 2 with no class cap (the strategies have their own tests).
    fields = {
        "online_to_labeling": True,
        "confidence_threshold": 1.0,
        "labeling_daily_budget": 2,
        "labeling_strategy": "threshold",
    }
    settings = with_model(
        blob_settings.model_copy(update={**fields, "labeling_container": "labeling-online"}), model_store
    )
    BlobStore(settings).ensure_containers()
    with model_server(settings) as client:
        answers = [post_image(client, pattern_png(seed)).json() for seed in (10, 20, 30)]
        bad = post_image(client, truncated_png())
    assert bad.status_code == 422
    lake = Lake(settings)
    ledger = lake.read(LABELING_REQUESTS).to_pylist()
    assert len(ledger) == 2  # the daily budget, shared with the stream
    assert {r["path"].split("/")[0] for r in ledger} <= {f"online:{a['request_id']}" for a in answers}
    images = {r["path"]: r for r in lake.read(IMAGES).to_pylist()}
    assert set(images) == {f"online:{a['request_id']}/0" for a in answers}  # the unsure ones, not the broken one
    sent = [images[r["path"]] for r in ledger]
    assert all(r["sent_to_labeling_at"] is not None and r["content"] and r["model_version"] == "1" for r in sent)
    blobs = [b.name for b in BlobStore(settings).list(settings.labeling_container)]  # type: ignore[attr-defined]
    assert sum(name.startswith("manifests/") for name in blobs) == 1
    assert sum(name.startswith("images/") for name in blobs) == 2


def test_a_failed_write_is_retried_as_the_same_transaction(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    online = InferenceLog(settings)
    real_merge = online._lake.merge
    failures = {"left": 1}

    def merge_after_a_failure(*args, **kwargs):  # fault injection: the lake is real, one write fails
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("disk full")
        return real_merge(*args, **kwargs)

    monkeypatch.setattr(online._lake, "merge", merge_after_a_failure)
    monkeypatch.setattr("serving.inference_log.time.sleep", lambda _s: None)
    online.record([_row(i) for i in range(3)])
    online.start()
    online.stop()
    assert (online.written, online.dropped, online.failed_writes) == (3, 0, 0)
    assert Lake(settings).read(ONLINE_PREDICTIONS).num_rows == 3
