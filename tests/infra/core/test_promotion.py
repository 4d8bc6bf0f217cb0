"""Promotion on live evidence (``infra.core.promotion``): McNemar's exact test, the paired tally, and the
decision against a real registry and a real lake: waiting, refused (the Done-when of issue 17), promoted."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from infra import registry
from infra.core import promotion
from infra.core.promotion import (
    PROMOTED,
    REFUSED,
    WAITING,
    Tally,
    assess,
    decide,
    judge,
    mcnemar_worse_p,
    recent_decisions,
    tally,
)
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES, LABEL_SOURCE_HUMAN, PROMOTION_DECISIONS
from tests.helpers.status import promote_versions

TODAY = dt.date(2026, 11, 22)


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [(8, 2, 56 / 1024), (9, 1, 11 / 1024), (10, 0, 1 / 1024), (2, 8, 1013 / 1024), (5, 5, 638 / 1024), (0, 0, 1.0)],
)
def test_the_exact_one_sided_p_value_is_the_binomial_tail(b: int, c: int, expected: float) -> None:
    # P(X >= b), X ~ Binomial(b + c, 1/2): e.g. b=8, c=2 is (C(10,8) + C(10,9) + C(10,10)) / 2^10.
    assert mcnemar_worse_p(b, c) == pytest.approx(expected, rel=1e-12)


def test_the_p_value_agrees_with_scipy_s_binomial_test() -> None:
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(1, 0), (3, 12), (17, 6), (40, 25), (300, 260), (1000, 1100)]:
        expected = stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue
        assert mcnemar_worse_p(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_the_rule_waits_for_enough_pairs_then_refuses_only_a_significantly_worse_challenger() -> None:
    outcome, p, reason = judge(Tally(both_right=40, b=4, c=3), alpha=0.05, min_pairs=20)
    assert (outcome, reason) == (WAITING, "waiting for live evidence: 7 of 20 discordant pairs")
    assert p == pytest.approx(mcnemar_worse_p(4, 3))

    outcome, p, reason = judge(Tally(b=16, c=4), alpha=0.05, min_pairs=20)
    assert outcome == REFUSED and p < 0.05
    assert reason.startswith("refused: worse on live labels (b=16, c=4, p=0.00")
    # Worse, but not significantly: the challenger is not shown worse, so it is promoted.
    assert judge(Tally(b=12, c=8), alpha=0.05, min_pairs=20)[0] == PROMOTED
    assert judge(Tally(b=3, c=17), alpha=0.05, min_pairs=20)[0] == PROMOTED
    # A generous alpha never refuses a challenger that is right more often than the champion.
    assert judge(Tally(b=10, c=10), alpha=0.9, min_pairs=20)[0] == PROMOTED
    assert judge(Tally(), alpha=0.05, min_pairs=0)[0] == PROMOTED  # no pairs asked for: the split decided


def test_the_tally_pairs_champion_and_challenger_on_each_label_and_leaves_out_incomplete_rows() -> None:
    rows = pa.table(
        {
            "label": ["a", "a", "a", "a", "a", None, "a"],
            "predicted_label": ["a", "a", "b", "b", "a", "a", None],
            "shadow_label": ["a", "b", "a", "b", None, "a", "a"],
        }
    )
    assert tally(rows) == Tally(both_right=1, both_wrong=1, b=1, c=1)
    assert tally(rows).pairs == 2


def _labeled(
    settings: Settings,
    rows: list[tuple[str, str, str | None, str | None]],
    *,
    prefix: str,
    source: str = LABEL_SOURCE_HUMAN,
) -> None:
    """``images`` rows as the stream and a label merge leave them: (label, champion's, challenger's, shadow version)."""
    n = len(rows)
    Lake(settings).merge(
        IMAGES,
        pa.table(
            {
                "path": [f"file:/img/{prefix}-{i}.png" for i in range(n)],
                "load_date": [TODAY] * n,
                "label": [r[0] for r in rows],
                "label_source": [source] * n,
                "predicted_label": [r[1] for r in rows],
                "model_version": ["1"] * n,
                "shadow_label": [r[2] for r in rows],
                "shadow_model_version": [r[3] for r in rows],
            }
        ),
    )


def _challenger_setup(settings: Settings) -> Settings:
    """Champion 1 (0.90 on the split) and challenger 2 (0.95), as training leaves them while live labels are due."""
    settings = settings.model_copy(update={"promotion_min_pairs": 20, "promotion_alpha": 0.05})
    assert promote_versions(settings, [0.9, 0.95], min_pairs=settings.promotion_min_pairs) == "1"
    assert str(registry.version_by_alias(settings, registry.CHALLENGER).version) == "2"
    return settings


def _tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(registry.client(settings).get_model_version(settings.model_name, version).tags)


def test_a_challenger_better_on_the_split_but_worse_on_live_labels_is_refused(settings: Settings) -> None:
    settings = _challenger_setup(settings)
    lake = Lake(settings)
    # Noise the tally must leave out: another challenger's shadow scores, folder labels, unscored rows.
    _labeled(settings, [("circle", "circle", "square", "9")] * 5, prefix="other-version")
    _labeled(settings, [("circle", "circle", "square", "2")] * 5, prefix="folder-labels", source="path")
    _labeled(settings, [("circle", "circle", None, None)] * 5, prefix="unshadowed")
    # First labels: 6 discordant pairs against the challenger, 1 for it, 10 concordant.
    _labeled(settings, [("circle", "circle", "square", "2")] * 6 + [("square", "circle", "square", "2")], prefix="a")
    _labeled(
        settings, [("circle", "circle", "circle", "2")] * 8 + [("circle", "square", "square", "2")] * 2, prefix="b"
    )

    waiting = decide(settings, lake)
    assert waiting is not None and waiting.outcome == WAITING and waiting.recorded
    assert waiting.tally == Tally(both_right=8, both_wrong=2, b=6, c=1)
    assert waiting.reason == "waiting for live evidence: 7 of 20 discordant pairs"
    assert (waiting.split_accuracy, waiting.champion_split_accuracy) == (0.95, 0.9)
    again = decide(settings, lake)  # a label event that changed nothing records nothing
    assert again is not None and not again.recorded and again.decision_id == waiting.decision_id
    assert lake.read(PROMOTION_DECISIONS).num_rows == 1

    # More labels: the challenger is wrong where the champion is right, again and again.
    _labeled(settings, [("triangle", "triangle", "circle", "2")] * 13, prefix="c")
    refused = decide(settings, lake)

    assert refused is not None and refused.outcome == REFUSED and refused.tally.pairs == 20
    assert (refused.tally.b, refused.tally.c) == (19, 1) and refused.p_value == pytest.approx(21 / 2**20)
    assert refused.reason.startswith("refused: worse on live labels (b=19, c=1, p=2.")
    assert str(registry.champion_version(settings).version) == "1"  # the champion stays
    assert registry.version_by_alias(settings, registry.CHALLENGER) is None  # no longer shadow-scored
    tags = _tags(settings, "2")
    assert tags[registry.TAG_DECISION] == registry.REFUSED and tags[registry.TAG_LIVE_DECISION] == REFUSED
    assert (tags[registry.TAG_LIVE_B], tags[registry.TAG_LIVE_C]) == ("19", "1")
    assert float(tags[registry.TAG_LIVE_P_VALUE]) == pytest.approx(21 / 2**20, rel=1e-5)
    assert tags[registry.TAG_LIVE_REASON] == refused.reason
    # The run's metrics, one step per number of discordant pairs.
    run_id = registry.client(settings).get_model_version(settings.model_name, "2").run_id
    history = registry.client(settings).get_metric_history(run_id, registry.TAG_LIVE_B)
    assert [(m.step, m.value) for m in history] == [(7, 6.0), (20, 19.0)]
    assert registry.client(settings).get_run(run_id).data.tags[registry.TAG_LIVE_DECISION] == REFUSED
    # The decisions table: one row per change, newest first.
    recorded = recent_decisions(lake)
    assert [r["outcome"] for r in recorded] == [REFUSED, WAITING]
    assert recorded[0] | {"decided_at": None} == {
        **refused.row(),
        "decided_at": None,
    }
    assert (recorded[0]["champion_version"], recorded[0]["min_pairs"], recorded[0]["alpha"]) == ("1", 20, 0.05)
    assert decide(settings, lake) is None and assess(settings, lake) is None  # nothing waits any more


def test_a_challenger_not_worse_on_live_labels_is_promoted_and_a_rollback_returns_to_the_old_champion(
    settings: Settings,
) -> None:
    settings = _challenger_setup(settings)
    lake = Lake(settings)
    _labeled(
        settings, [("circle", "square", "circle", "2")] * 12 + [("circle", "circle", "square", "2")] * 8, prefix="x"
    )

    promoted = decide(settings, lake)

    assert promoted is not None and promoted.outcome == PROMOTED and promoted.tally.pairs == 20
    assert promoted.reason.startswith("promoted: not worse on live labels (b=8, c=12, p=0.8")
    assert str(registry.champion_version(settings).version) == "2"
    assert registry.version_by_alias(settings, registry.CHALLENGER) is None
    tags = _tags(settings, "2")
    assert (tags[registry.TAG_DECISION], tags[registry.TAG_LIVE_DECISION]) == (registry.CHAMPION, PROMOTED)
    assert tags[registry.TAG_CHAMPION_VERSION] == "1"
    assert promotion.rollback(settings, reason="paged").to_version == "1"


def test_without_labels_on_shadow_scored_images_a_challenger_waits_and_the_status_read_changes_nothing(
    settings: Settings,
) -> None:
    settings = _challenger_setup(settings)
    lake = Lake(settings)
    seen = assess(settings, lake)  # no images table yet: no evidence, nothing created
    assert seen is not None and seen.outcome == WAITING and seen.tally == Tally()
    assert not lake.exists(IMAGES) and not lake.exists(PROMOTION_DECISIONS)
    assert seen.reason == "waiting for live evidence: 0 of 20 discordant pairs"
    labels = [("circle", "circle", "square", "2")] * 30
    _labeled(settings, labels, prefix="enough")
    assert assess(settings, lake).outcome == REFUSED  # type: ignore[union-attr]
    assert registry.version_by_alias(settings, registry.CHALLENGER) is not None  # assess moved nothing
    assert recent_decisions(lake) == []


def test_an_images_table_from_before_shadow_scoring_has_no_evidence_until_it_gains_the_columns(
    settings: Settings,
) -> None:
    from deltalake import write_deltalake

    from infra.core.promotion import live_pairs
    from infra.tables import IMAGES_SCHEMA, SHADOW_COLUMNS

    lake = Lake(settings)
    old = pa.schema([f for f in IMAGES_SCHEMA if f.name not in {c.name for c in SHADOW_COLUMNS}])
    write_deltalake(lake.uri(IMAGES), old.empty_table(), partition_by=["load_date"])
    assert live_pairs(lake, "2").num_rows == 0
    assert "shadow_label" not in {f.name for f in lake.table(IMAGES).schema().fields}  # a read adds nothing

    lake.images()  # what every writer opens it with
    assert {c.name for c in SHADOW_COLUMNS} <= {f.name for f in lake.table(IMAGES).schema().fields}
    _labeled(settings, [("circle", "circle", "square", "2")], prefix="after")
    assert tally(live_pairs(lake, "2")) == Tally(b=1)
