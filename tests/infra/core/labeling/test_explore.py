"""The exploration share: part of every window's allowance is a stable-hash draw from every scored
image, sure or unsure, and its returned labels measure the serving model's live accuracy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from infra.core.labeling import phases, queue_state
from infra.core.labeling.handoff import explore_count, explore_key
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES, LABELING_REQUESTS
from tests.infra.core.labeling.test_handoff import at, batch, paced, scored

__all__ = ["paced"]  # the fixture, shared with test_handoff


def one_hot(i: int) -> list[float]:
    return np.eye(32, dtype=np.float32)[i].tolist()


def window_of(*, embeddings: bool) -> pa.Table:
    """20 confident images and 10 unsure ones."""
    rows = [(f"sure-{i}", 0.999, one_hot(i) if embeddings else None) for i in range(20)]
    rows += [(f"unsure-{i}", 0.6 + i / 100, one_hot(20 + i) if embeddings else None) for i in range(10)]
    return batch(rows, when=at(9))


@pytest.fixture
def exploring(paced: Settings) -> Settings:
    return paced.model_copy(
        update={
            "labeling_window_s": 0,
            "labeling_daily_budget": 10,
            "labeling_explore_share": 0.5,
            "labeling_explore_sample": 1.0,  # every scored image is in the draw's pool
        }
    )


@pytest.mark.parametrize("embeddings", [True, False], ids=["embeddings", "no embeddings"])
def test_a_share_of_the_allowance_is_drawn_from_every_scored_image(exploring: Settings, embeddings: bool) -> None:
    lake = Lake(exploring)
    table = window_of(embeddings=embeddings)
    handed = scored(lake, table, 0, exploring, at(9))
    ledger = lake.read(LABELING_REQUESTS, columns=["path", "strategy", "confidence"]).to_pylist()
    explored = sorted(r["path"] for r in ledger if r["strategy"] == "explore")
    paths = table.column("path").to_pylist()
    assert explored == sorted(sorted(paths, key=explore_key)[:5])  # the lowest keys, sure or unsure
    chosen = [r for r in ledger if r["strategy"] != "explore"]
    # The rest of the allowance goes to the strategy, among the unsure images only.
    assert handed.sent == 10 and len(chosen) == 5 and all(r["confidence"] < 0.99 for r in chosen)
    # No exploration label of this model came back yet: a cold window, stratified random either way.
    assert {r["strategy"] for r in chosen} == {phases.STRATIFIED}


def test_returned_exploration_labels_give_the_models_live_accuracy(exploring: Settings) -> None:
    lake = Lake(exploring)
    assert queue_state(exploring, lake, now=at(9))["prequential"]["accuracy"] is None
    scored(lake, window_of(embeddings=True), 0, exploring, at(9))
    explored = sorted(
        r["path"]
        for r in lake.read(LABELING_REQUESTS, columns=["path", "strategy"]).to_pylist()
        if r["strategy"] == "explore"
    )
    # Humans agree with the model ("cat") on three of the five, and one label is not back yet.
    returned = {explored[0]: "cat", explored[1]: "cat", explored[2]: "cat", explored[3]: "dog"}
    lake.merge(
        IMAGES,
        IMAGES.conform(
            pa.table(
                {
                    "path": list(returned),
                    "load_date": pa.array([at(9).date()] * len(returned), pa.date32()),
                    "label": list(returned.values()),
                }
            )
        ),
        update={"label": "s.label"},
        insert=False,
    )
    state = queue_state(exploring, lake, now=at(10))
    assert state["explore_share"] == 0.5
    assert state["prequential"] == {"model_version": "1", "accuracy": 0.75, "labels": 4, "explored": 5}


def test_small_allowances_explore_at_the_share_on_average(exploring: Settings) -> None:
    settings = exploring.model_copy(update={"labeling_explore_share": 0.2})
    counts = [explore_count(settings, 1, f"window-{n}") for n in range(2000)]
    assert set(counts) == {0, 1} and 0.17 < np.mean(counts) < 0.23
    assert explore_count(settings, 10, "w") == 2
    assert explore_count(settings.model_copy(update={"labeling_explore_share": 0.0}), 10, "w") == 0


def test_an_empty_window_sends_nothing_and_its_share_carries_over(exploring: Settings) -> None:
    settings = exploring.model_copy(update={"labeling_window_s": 3600, "labeling_daily_budget": 24})
    lake = Lake(settings)
    # Nothing was scored in the 00:00 window; the 01:00 one has three unsure images.
    unsure = batch([(f"u{i}", 0.6 + i / 100, one_hot(i)) for i in range(3)], when=at(1, 10))
    assert scored(lake, unsure, 0, settings, at(1, 10)).sent == 0
    closing = scored(lake, batch([("sure", 0.999, one_hot(9))], when=at(2, 1)), 1, settings, at(2, 1))
    # Its own share and the empty hour's: two, one drawn for exploration, one by the strategy.
    assert closing.sent == 2 and closing.outcomes == {"sent": 2, "not_chosen": 1}
    strategies = sorted(lake.read(LABELING_REQUESTS, columns=["strategy"]).column("strategy").to_pylist())
    assert strategies == ["explore", phases.STRATIFIED]  # no label of this model came back: cold


def test_a_window_whose_one_candidate_the_exploration_share_takes_sends_it(exploring: Settings) -> None:
    """Explore drew the window's only unsure image: the strategy has nothing left to rank, and the
    close sends the one image instead of failing the micro-batch (it failed every time the stable
    hash drew it, so the scoring stream died on some image names and not others)."""
    settings = exploring.model_copy(update={"labeling_explore_share": 1.0})
    lake = Lake(settings)
    handed = scored(lake, batch([("only", 0.6, one_hot(1))], when=at(9)), 0, settings, at(9))
    ledger = lake.read(LABELING_REQUESTS, columns=["path", "strategy"]).to_pylist()
    assert handed.sent == 1 and [r["strategy"] for r in ledger] == ["explore"]
