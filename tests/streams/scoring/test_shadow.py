"""Shadow scoring: while a challenger exists the stream also scores the share of rows a path hash picks,
in the same MERGE (a replay changes nothing); without one, or when it fails, the champion scores alone."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from infra.core import model_cache
from infra.hashing import stable_fraction
from infra.lake import Lake, Transaction
from infra.registry import CHALLENGER, load_classifier
from infra.settings import Settings
from infra.tables import IMAGES
from streams.scoring import executor
from streams.scoring.config import ScoringConfig
from streams.scoring.executor import predictions, shadowed
from streams.scoring.query import SCORE_UPDATE, SCORE_UPDATE_WHEN, run_scoring
from tests.helpers.images import truncated_png
from tests.helpers.streams import CLASSES, IMAGE_SIZE, rows_by_name, shapes
from training.bench.toy_models import register_version, tiny_cnn

SHADOW = ("shadow_label", "shadow_confidence", "shadow_model_version", "shadow_scored_at")


def _shadow_of(row: dict) -> tuple:
    return tuple(row[c] for c in SHADOW)


def test_the_shadow_share_is_a_stable_hash_of_the_path() -> None:
    paths = [f"file:/in/{i}.png" for i in range(2000)]
    half = shadowed(paths, 0.5)
    assert half == shadowed(paths, 0.5)  # a replay picks the same rows
    assert 900 < sum(half) < 1100
    assert half == [stable_fraction(f"shadow:{p}") < 0.5 for p in paths]
    assert all(shadowed(paths, 1.0)) and not any(shadowed(paths, 0.0))
    # Not the test split's hash (training.data.feed hashes the bare path): the shadowed share is not the held-out one.
    assert half != [stable_fraction(p) < 0.5 for p in paths]


@pytest.mark.spark
def test_the_stream_shadow_scores_the_configured_share_with_the_challenger_and_a_replay_keeps_it(
    spark, score_settings: Settings, tmp_path: Path
) -> None:
    lake = Lake(score_settings)
    before = shapes(tmp_path / "before", 4, prefix="before")
    run_scoring(score_settings, source=tmp_path / "before", once=True)
    assert {_shadow_of(r) for r in rows_by_name(score_settings).values()} == {(None,) * 4}  # no challenger

    challenger = register_version(
        score_settings,
        tiny_cnn(IMAGE_SIZE, len(CLASSES), seed=7),
        class_names=CLASSES,
        image_size=IMAGE_SIZE,
        alias=CHALLENGER,
    )
    time.sleep(score_settings.champion_check_s + 0.5)  # the workers' next check sees the alias
    everything = shapes(tmp_path / "all", 6, prefix="all")
    (tmp_path / "all" / "broken.png").write_bytes(truncated_png())
    batches: list = []
    run_scoring(score_settings, source=tmp_path / "all", once=True, on_batch=batches.append)
    half = shapes(tmp_path / "half", 16, prefix="half")
    run_scoring(score_settings.model_copy(update={"shadow_fraction": 0.5}), source=tmp_path / "half", once=True)
    off = shapes(tmp_path / "off", 4, prefix="off")
    run_scoring(score_settings.model_copy(update={"shadow_fraction": 0.0}), source=tmp_path / "off", once=True)

    rows = rows_by_name(score_settings)
    model, _ = load_classifier(score_settings, challenger)
    answers = model.classify([p.read_bytes() for p in everything])
    for path, label, confidence in zip(everything, answers["label"], answers["confidence"], strict=True):
        row = rows[path.name]
        assert (row["model_version"], row["shadow_model_version"]) == ("1", challenger)
        assert row["shadow_label"] == label and row["shadow_confidence"] == pytest.approx(confidence)
        assert row["shadow_scored_at"] is not None
    assert _shadow_of(rows["broken.png"]) == (None,) * 4 and rows["broken.png"]["error"] is not None
    picked = {p.name for p in half if stable_fraction(f"shadow:file:{p}") < 0.5}
    assert 0 < len(picked) < len(half)
    assert {p.name for p in half if rows[p.name]["shadow_model_version"] == challenger} == picked
    assert all(rows[p.name]["predicted_label"] in CLASSES for p in half)  # the champion scored every row
    assert {_shadow_of(rows[p.name]) for p in off + before} == {(None,) * 4}

    # The batch replayed after a crash commits nothing: the shadow columns stay as they were.
    from streams.checkpoint.names import query_app_id
    from streams.scoring.sources import directory_source

    app_id = query_app_id(score_settings.checkpoint_uri(directory_source(tmp_path / "all").checkpoint), "score")
    version = lake.version(IMAGES)
    replay = lake.merge(
        IMAGES,
        batches[0].table,
        update=SCORE_UPDATE,
        when=SCORE_UPDATE_WHEN,
        txn=Transaction(app_id, batches[0].batch_id),
    )
    assert replay.skipped and lake.version(IMAGES) == version
    assert {n: _shadow_of(r) for n, r in rows_by_name(score_settings).items()} == {
        n: _shadow_of(r) for n, r in rows.items()
    }


class _Broken:
    """A challenger whose every call fails (an incompatible or corrupt model)."""

    def __init__(self) -> None:
        self.calls = 0

    def decode(self, contents: list[bytes]) -> None:
        self.calls += 1
        raise RuntimeError("challenger exploded")


def test_a_failing_challenger_never_stops_the_champion(
    score_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = _Broken()
    monkeypatch.setattr(executor, "_failed_shadows", set())  # what this process logged before
    monkeypatch.setattr(model_cache, "optional_classifier", lambda settings, **_: (broken, "2"))
    images = [p.read_bytes() for p in shapes(score_settings.state_dir / "in", 3)]
    frame = pd.DataFrame({"path": [f"file:/in/{i}.png" for i in range(3)], "content": images, "error": [None] * 3})

    with caplog.at_level("WARNING", logger=executor.__name__):
        out = predictions(frame, ScoringConfig.of(score_settings))
        predictions(frame, ScoringConfig.of(score_settings))  # failing again: logged once

    assert out["predicted_label"].isin(CLASSES).all() and (out["model_version"] == "1").all()
    assert out["shadow_label"].isna().all() and out["shadow_model_version"].isna().all()
    assert broken.calls == 2 and [r.getMessage() for r in caplog.records if "challenger" in r.getMessage()] == [
        "challenger version 2 failed; its batches get no shadow scores: challenger exploded"
    ]
    # A challenger that is the champion itself is not scored twice; shadow scoring off looks nothing up.
    monkeypatch.setattr(model_cache, "optional_classifier", lambda settings, **_: (broken, "1"))
    assert predictions(frame, ScoringConfig.of(score_settings))["shadow_label"].isna().all() and broken.calls == 2
    off = score_settings.model_copy(update={"shadow_fraction": 0.0})
    monkeypatch.setattr(model_cache, "optional_classifier", lambda settings, **_: pytest.fail("looked up"))
    assert predictions(frame, ScoringConfig.of(off))["shadow_label"].isna().all()
