"""The inference table: every answered image is a row; a full queue drops and counts instead of blocking."""

from __future__ import annotations

import datetime as dt

from infra.lake import Lake
from infra.settings import Settings
from infra.tables import ONLINE_PREDICTIONS
from serving.inference_log import InferenceLog
from tests.helpers.images import solid_png, truncated_png
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
