"""``lakesight bench labeling --quick`` through the command line: the JSON's shape and its invariants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.core.labeling.strategies import LEAST_CONFIDENCE, MARGIN_DIVERSITY, STRATEGIES, THRESHOLD
from tests.helpers.cli import lakesight
from training.bench.labeling import DRIFT, NEAR_DUPLICATES, duplicates_sent, labels_to_reach


@pytest.mark.slow
def test_quick_benchmark_spends_every_label_and_margin_diversity_sends_no_near_duplicate(tmp_path: Path) -> None:
    result = lakesight("bench", "labeling", "--quick", state=tmp_path / "state")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "round 2" in result.stderr  # progress on stderr, JSON alone on stdout
    figures = json.loads(result.stdout)
    config = figures["config"]
    rounds, labels, seeds = config["rounds"], config["labels"], config["seeds"]
    assert set(figures["scenarios"]) == {DRIFT, NEAR_DUPLICATES}
    for name, scenario in figures["scenarios"].items():
        assert set(scenario["strategies"]) == set(STRATEGIES)
        for strategy, curve in scenario["strategies"].items():
            assert [row["round"] for row in curve["rounds"]] == list(range(rounds + 1))
            for row in curve["rounds"]:
                where = f"{name} {strategy} round {row['round']}"
                assert row["labels"] == labels * row["round"], where
                assert row["labels_per_seed"] == [labels * row["round"]] * seeds, where
                assert len(row["accuracy_per_seed"]) == seeds
                assert all(0.0 <= a <= 1.0 for a in [row["accuracy"], *row["accuracy_per_seed"]]), where
            assert curve["near_duplicates_sent"] == sum(row["near_duplicates_sent"] for row in curve["rounds"])
            if name == DRIFT:  # its pool has no copies: a count here is a bookkeeping bug
                assert curve["near_duplicates_sent"] == 0, strategy
        # Both rank by confidence alone: the same picks, so one shared retraining each round.
        assert scenario["strategies"][THRESHOLD]["rounds"] == scenario["strategies"][LEAST_CONFIDENCE]["rounds"]
    near = figures["scenarios"][NEAR_DUPLICATES]
    # Pixel near-duplicates are skipped for every strategy, as in the stream, and few distinct images with them.
    assert near["strategies"][MARGIN_DIVERSITY]["near_duplicates_sent"] == 0
    for strategy, curve in near["strategies"].items():
        assert 0 <= curve["near_duplicate_false_skip_rate"] <= 0.01, strategy
    assert near["embedding_distances"]["models"] == rounds * seeds  # the pool has copies: their distances
    assert figures["near_duplicates_sent"] == 0
    assert (
        figures["near_duplicate_false_skip_rate"]
        == near["strategies"][MARGIN_DIVERSITY]["near_duplicate_false_skip_rate"]
    )
    ratio = figures["label_ratio_vs_random"]
    assert (ratio is None) == isinstance(figures["label_ratio_reason"], str)
    assert ratio is None or ratio >= 0
    assert isinstance(figures["meets_targets"], bool) and figures["seconds"] > 0
    assert figures["v0_accuracy_on_A_per_seed"] and figures["trainings"] > 0


def test_a_copy_counts_once_its_source_or_another_copy_was_sent() -> None:
    groups = [0, 1, 0, 3, 0, 1]  # images 2 and 4 are copies of 0, image 5 of 1
    assert duplicates_sent(groups, [], [0, 3]) == 0
    assert duplicates_sent(groups, [0], [2, 4]) == 2
    assert duplicates_sent(groups, [], [2, 4, 5]) == 1
    assert duplicates_sent(groups, [3], [1, 5, 0]) == 1


def test_labels_to_reach_interpolates_between_rounds() -> None:
    rounds = [{"labels": 0, "accuracy": 0.3}, {"labels": 100, "accuracy": 0.7}, {"labels": 200, "accuracy": 0.9}]
    assert labels_to_reach(rounds, 0.8) == pytest.approx(150.0)
    assert labels_to_reach(rounds, 0.7) == 100.0
    assert labels_to_reach(rounds, 0.2) == 0.0
    assert labels_to_reach(rounds, 0.95) is None
