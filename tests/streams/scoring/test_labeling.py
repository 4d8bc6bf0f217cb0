"""Labeling hand-off against Azurite: budget, never twice, replay, sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pytest

from infra.blob import BlobStore
from infra.core.labeling import hand_off, sampled
from infra.hashing import stable_fraction
from infra.lake import Lake
from infra.local.sample_data import ShapeKnobs, shape_images, write_images
from infra.settings import Settings
from infra.tables import IMAGES, LABELING_REQUESTS
from streams.scoring.query import run_scoring
from tests.helpers.streams import merge_engines

pytestmark = [pytest.mark.spark, pytest.mark.azurite]


def blobs(settings: Settings, prefix: str) -> dict[str, bytes]:
    store = BlobStore(settings)
    return {
        b.name: store.download(settings.labeling_container, b.name)
        for b in store.list(settings.labeling_container, prefix=prefix)
    }


@pytest.mark.parametrize("engine", ["delta-rs", "spark"])
def test_unsure_images_are_sent_once_within_the_daily_budget(
    spark, score_blob_settings: Settings, tmp_path: Path, engine: str
) -> None:
    # The threshold strategy: the most unsure first, nothing skipped (the others have unit tests).
    # No exploration share: its picks are drawn by a hash of the path, and tmp_path differs per run.
    update = {
        "labeling_daily_budget": 3,
        "confidence_threshold": 0.999,
        "labeling_strategy": "threshold",
        "labeling_explore_share": 0.0,
    }
    # Each engine's run has its own labeling container: the session's Azurite is shared.
    update.update(lake_engine=engine, labeling_container=f"labeling-{engine.replace('-', '')}")
    settings = score_blob_settings.model_copy(update=update)
    BlobStore(settings).ensure_containers()
    incoming = tmp_path / "incoming"
    write_images(shape_images(ShapeKnobs(count=5, size=20, holdout_fraction=0)), out_dir=incoming)
    batches = []
    report = run_scoring(settings, source=incoming, once=True, on_batch=batches.append)
    assert report.sent_to_labeling == 3

    lake = Lake(settings)
    # The batch by the configured engine; the ledger, built on the driver, always by delta-rs.
    assert (merge_engines(lake), merge_engines(lake, LABELING_REQUESTS)) == ({engine}, {"delta-rs"})
    table = lake.read(IMAGES)
    sent = [r for r in table.to_pylist() if r["sent_to_labeling_at"] is not None]
    assert len(sent) == 3
    # The most unsure first.
    unsent = [r for r in table.to_pylist() if r["sent_to_labeling_at"] is None]
    assert max(r["confidence"] for r in sent) <= min(r["confidence"] for r in unsent)
    copies = blobs(settings, "images/")
    assert sorted(copies.values()) == sorted(r["content"] for r in sent)
    manifests = blobs(settings, "manifests/")
    assert len(manifests) == 1
    lines = [json.loads(line) for line in next(iter(manifests.values())).decode().splitlines()]
    assert {line["source_url"] for line in lines} == {r["path"] for r in sent}
    store = BlobStore(settings)
    assert {line["image_url"] for line in lines} == {store.url(settings.labeling_container, n) for n in copies}
    assert all(line["model_version"] == "1" and line["confidence"] < 0.999 for line in lines)

    # Budget spent for today: new images are scored but not sent.
    more = ShapeKnobs(count=3, size=20, seed=5, prefix="more", holdout_fraction=0)
    write_images(shape_images(more), out_dir=incoming)
    again = run_scoring(settings, source=incoming, once=True)
    assert (again.rows, again.sent_to_labeling) == (3, 0)

    # Replaying the first batch reuses its selection: nothing uploaded or recorded twice.
    first = batches[0]
    ledger_version = lake.version(LABELING_REQUESTS)
    app_id = lake.read(LABELING_REQUESTS, columns=["app_id"]).column("app_id")[0].as_py()
    replay = hand_off(settings, lake, first.table, app_id=app_id, batch_id=first.batch_id)
    assert replay.replayed and replay.sent == 0
    assert pc.sum(pc.is_valid(replay.table.column("sent_to_labeling_at"))).as_py() == 3
    assert lake.version(LABELING_REQUESTS) == ledger_version

    # A later batch naming the same images with budget left sends only the ones never sent.
    roomy = settings.model_copy(update={"labeling_daily_budget": 100})
    later = hand_off(roomy, lake, first.table, app_id=app_id, batch_id=first.batch_id + 100)
    assert later.sent == 2
    ledger = lake.read(LABELING_REQUESTS).column("path").to_pylist()
    assert len(ledger) == len(set(ledger)) == 5
    assert len(blobs(settings, "manifests/")) == 2


def test_sampling_is_stable_and_follows_the_fraction() -> None:
    paths = [f"file:/in/{i}.png" for i in range(2000)]
    chosen = [p for p in paths if sampled(p, 0.25)]
    assert 400 < len(chosen) < 600
    assert chosen == [p for p in paths if stable_fraction(p) < 0.25]
    assert all(sampled(p, 1.0) for p in paths[:10]) and not any(sampled(p, 0.0) for p in paths[:10])
