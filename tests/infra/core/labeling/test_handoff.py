"""The hand-off with windows and pacing, against Azurite and a lake on disk.

Each test drives ``hand_off`` with the batches a stream would give it at chosen times of day.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from infra.core.labeling import hand_off
from infra.core.labeling.handoff import paced_allowance
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES, LABELING_CANDIDATES, LABELING_REQUESTS

pytestmark = pytest.mark.azurite

DAY = dt.date(2026, 12, 1)
CLASSES = ["cat", "dog"]


def at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(DAY.year, DAY.month, DAY.day, hour, minute, tzinfo=dt.UTC)


def batch(
    rows: list[tuple[str, float, list[float] | None]], *, when: dt.datetime, content: bytes | None = None
) -> pa.Table:
    """Scored rows as the stream hands them over: (name, confidence of 'cat', embedding)."""
    n = len(rows)
    blobs = [content or f"png-{name}".encode() for name, _, _ in rows]
    return IMAGES.conform(
        pa.table(
            {
                "path": [f"file:/in/{name}.png" for name, _, _ in rows],
                "load_date": pa.array([when.date()] * n, pa.date32()),
                "content": blobs,
                "content_hash": [hashlib.sha256(b).hexdigest() for b in blobs],
                "predicted_label": ["cat"] * n,
                "confidence": [c for _, c, _ in rows],
                "probabilities": [[c, 1 - c] for _, c, _ in rows],
                "embedding": pa.array([e for _, _, e in rows], pa.list_(pa.float32())),
                "class_names": [CLASSES] * n,
                "model_name": ["m"] * n,
                "model_version": ["1"] * n,
                "scored_at": pa.array([when] * n, pa.timestamp("us", tz="UTC")),
            }
        )
    )


def spread(i: int) -> list[float]:
    vector = np.zeros(16, np.float32)
    vector[i % 16] = 1.0
    return vector.tolist()


@pytest.fixture
def paced(blob_settings: Settings) -> Settings:
    from infra.blob import BlobStore

    # Its own container: the session's Azurite is shared, and the stream's tests count blobs.
    settings = blob_settings.model_copy(update={"labeling_container": "labeling-paced"})
    BlobStore(settings).ensure_containers()
    return settings.model_copy(
        update={
            "labeling_window_s": 3600,
            "labeling_daily_budget": 24,  # one image an hour
            "confidence_threshold": 0.99,
            "labeling_max_class_share": 1.0,
            "labeling_explore_share": 0.0,  # the strategy alone: exploration has its own tests
        }
    )


def scored(lake: Lake, table: pa.Table, batch_id: int, settings: Settings, when: dt.datetime):
    """What foreachBatch does: the hand-off, then the batch's MERGE into images."""
    handed = hand_off(settings, lake, table, app_id="score:q", batch_id=batch_id, now=when)
    lake.merge(IMAGES, handed.table)
    return handed


def sent_paths(lake: Lake) -> list[str]:
    return sorted(lake.read(LABELING_REQUESTS, columns=["path"]).column("path").to_pylist())


def test_paced_allowance_carries_unspent_shares_forward(paced: Settings) -> None:
    assert paced_allowance(paced, at(0), 0) == 1
    assert paced_allowance(paced, at(5), 0) == 6  # six hours' shares, none spent
    assert paced_allowance(paced, at(5), 4) == 2
    assert paced_allowance(paced, at(23), 24) == 0
    unpaced = paced.model_copy(update={"labeling_window_s": 0})
    assert paced_allowance(unpaced, at(0), 0) == 24


def test_candidates_compete_within_their_window_instead_of_arriving_first(paced: Settings) -> None:
    lake = Lake(paced)
    early = batch([("early-1", 0.80, spread(0)), ("early-2", 0.85, spread(1))], when=at(0, 5))
    late = batch([("late-unsure", 0.51, spread(2))], when=at(0, 50))
    first = scored(lake, early, 0, paced, at(0, 5))
    second = scored(lake, late, 1, paced, at(0, 50))
    # The window is open: nothing is sent yet, everything waits.
    assert (first.sent, first.queued, second.sent, second.queued) == (0, 2, 0, 1)
    assert not lake.exists(LABELING_REQUESTS)

    # The first batch of the next hour closes the window: its one image goes to the most unsure,
    # which arrived last (first come, first served would have sent early-1).
    third = scored(lake, batch([("next", 0.9, spread(3))], when=at(1, 2)), 2, paced, at(1, 2))
    assert third.sent == 1
    assert sent_paths(lake) == ["file:/in/late-unsure.png"]
    ledger = lake.read(LABELING_REQUESTS).to_pylist()[0]
    assert (ledger["strategy"], ledger["rank"], ledger["request_date"]) == ("margin_diversity", 1, DAY)
    outcomes = {r["path"]: r["outcome"] for r in lake.read(LABELING_CANDIDATES).to_pylist()}
    assert outcomes == {
        "file:/in/early-1.png": "not_chosen",
        "file:/in/early-2.png": "not_chosen",
        "file:/in/late-unsure.png": "sent",
        "file:/in/next.png": None,  # its window (01:00) is still open
    }
    # The image sent from an earlier batch is marked in images too.
    images = {r["path"]: r["sent_to_labeling_at"] for r in lake.read(IMAGES).to_pylist()}
    assert images["file:/in/late-unsure.png"] is not None
    assert images["file:/in/early-1.png"] is None
    # No bytes kept for decided candidates.
    decided = [r for r in lake.read(LABELING_CANDIDATES).to_pylist() if r["outcome"]]
    assert all(r["content"] is None for r in decided)


def test_the_first_hour_cannot_spend_the_day(paced: Settings) -> None:
    lake = Lake(paced)
    burst = batch([(f"burst-{i}", 0.5 + i / 100, spread(i)) for i in range(10)], when=at(0, 10))
    scored(lake, burst, 0, paced, at(0, 10))
    closed = scored(lake, batch([("later", 0.9, spread(11))], when=at(1, 1)), 1, paced, at(1, 1))
    assert closed.sent == 1  # 24 a day paced hourly: one for the first hour
    # Quiet hours: the 01:00 window closes when the next batch comes, at 04:10.
    more = batch([(f"more-{i}", 0.5 + i / 100, spread(i)) for i in range(8)], when=at(4, 10))
    assert scored(lake, more, 2, paced, at(4, 10)).sent == 1
    # The 04:00 window may have spent 5 by its end; 2 were spent: the unspent shares carry over.
    again = scored(lake, batch([("x", 0.9, spread(9))], when=at(5, 1)), 3, paced, at(5, 1))
    assert again.sent == 3
    assert len(sent_paths(lake)) == 5
    # more-0 looks exactly like burst-0, sent at 01:01.
    assert again.outcomes == {"sent": 3, "near_duplicate": 1, "not_chosen": 4}


def test_a_replayed_batch_chooses_nothing_again(paced: Settings) -> None:
    lake = Lake(paced)
    scored(lake, batch([("a", 0.6, spread(0)), ("b", 0.7, spread(1))], when=at(2)), 0, paced, at(2))
    closing = batch([("c", 0.8, spread(2))], when=at(3, 1))
    first = scored(lake, closing, 1, paced, at(3, 1))
    versions = (lake.version(LABELING_REQUESTS), lake.version(LABELING_CANDIDATES))
    replay = hand_off(paced, lake, closing, app_id="score:q", batch_id=1, now=at(3, 2))
    assert first.sent == 2 and replay.replayed and replay.sent == 0
    assert (lake.version(LABELING_REQUESTS), lake.version(LABELING_CANDIDATES)) == versions


def test_images_repeating_sent_ones_are_skipped_as_near_duplicates(paced: Settings) -> None:
    settings = paced.model_copy(update={"labeling_window_s": 0, "labeling_min_distance": 0.05})
    lake = Lake(settings)
    scored(lake, batch([("original", 0.6, spread(0))], when=at(9)), 0, settings, at(9))
    nearly = spread(0)
    nearly[1] = 0.05  # cosine distance ~0.001 from the original
    again = batch([("reencoded", 0.55, nearly), ("same-bytes", 0.55, spread(5)), ("new", 0.7, spread(7))], when=at(10))
    again = again.set_column(
        again.column_names.index("content_hash"),
        "content_hash",
        pa.array([None, lake.read(LABELING_REQUESTS).column("content_hash")[0].as_py(), "fresh"]),
    )
    handed = scored(lake, again, 1, settings, at(10))
    assert handed.sent == 1 and handed.outcomes == {"sent": 1, "near_duplicate": 2}
    assert sent_paths(lake) == ["file:/in/new.png", "file:/in/original.png"]


def test_rows_without_embeddings_fall_back_to_margin_and_say_so(paced: Settings, caplog) -> None:
    settings = paced.model_copy(update={"labeling_window_s": 0})
    lake = Lake(settings)
    handed = scored(lake, batch([("a", 0.6, None), ("b", 0.7, None)], when=at(9)), 0, settings, at(9))
    assert handed.sent == 2 and "falls back to margin" in (handed.fallback or "")
    assert set(lake.read(LABELING_REQUESTS).column("strategy").to_pylist()) == {"margin"}
    assert "falls back to margin" in caplog.text


def test_an_image_without_embedding_is_never_picked_beside_ones_with(paced: Settings) -> None:
    settings = paced.model_copy(update={"labeling_window_s": 0})
    lake = Lake(settings)
    handed = scored(lake, batch([("bare", 0.5, None), ("full", 0.9, spread(0))], when=at(9)), 0, settings, at(9))
    assert handed.sent == 1 and sent_paths(lake) == ["file:/in/full.png"]


def test_errors_are_never_candidates(paced: Settings, tmp_path: Path) -> None:
    settings = paced.model_copy(update={"labeling_window_s": 0})
    lake = Lake(settings)
    table = batch([("broken", 0.1, spread(0))], when=at(9))
    table = table.set_column(table.column_names.index("error"), "error", pa.array(["not an image"]))
    assert hand_off(settings, lake, table, app_id="score:q", batch_id=0, now=at(9)).sent == 0
