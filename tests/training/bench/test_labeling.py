"""``lakesight bench labeling --quick`` through the command line: the JSON's shape and its invariants,
and the figures' arithmetic on curves whose answer is known."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from infra.core.labeling.strategies import MARGIN_DIVERSITY, RANDOM
from tests.helpers.cli import lakesight
from training.bench.labeling import (
    HEADLINE_SCENARIOS,
    HEADLINE_STRATEGIES,
    BenchConfig,
    Learner,
    duplicates_sent,
    run_label_bench,
    seed_units,
    step_batches,
)
from training.bench.labeling_data import with_duplicates
from training.bench.labeling_stats import label_ratio, labels_to_reach, paired_gaps, ratio_interval

KEYS = (
    "label_ratio_vs_random",
    "label_ratio_upper_90",
    "worst_round_gap_vs_random_lower_90",
    "near_duplicates_sent",
    "near_duplicate_false_skip_rate",
)


@pytest.mark.slow
def test_quick_benchmark_spends_every_label_in_fresh_windows_and_sends_no_near_duplicate(tmp_path: Path) -> None:
    result = lakesight("bench", "labeling", "--quick", state=tmp_path / "state")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "near-duplicates sent" in result.stderr  # progress on stderr, JSON alone on stdout
    figures = json.loads(result.stdout)
    config = figures["config"]
    rounds, labels, seeds, window = config["rounds"], config["labels"], config["seeds"], config["window"]
    assert labels <= 0.2 * window  # labels are at most a fifth of what a strategy sees
    assert isinstance(figures["meets_targets"], bool) and figures["seconds"] > 0
    assert figures["meets_targets"] == all(figures["target_checks"].values())
    assert set(figures["scenarios"]) == set(HEADLINE_SCENARIOS)
    for name, scenario in figures["scenarios"].items():
        assert set(KEYS) <= set(scenario), name
        assert scenario["near_duplicates_sent"] == 0, name  # pixel near-duplicates skipped, across versions too
        assert 0 <= scenario["near_duplicate_false_skip_rate"] <= 1
        ratio, upper = scenario["label_ratio_vs_random"], scenario["label_ratio_upper_90"]
        assert ratio is None or ratio >= 0
        assert upper is None or ratio is None or upper >= ratio
        expected = set(HEADLINE_STRATEGIES) if "drift" in name else {MARGIN_DIVERSITY}
        assert set(scenario["strategies"]) == expected, name
        if RANDOM in expected:
            assert len(scenario["gap_vs_random"]) == rounds + 1
        for strategy, curve in scenario["strategies"].items():
            where = f"{name} {strategy}"
            assert curve["labels"] == [labels * r for r in range(rounds + 1)], where  # every label spent
            assert len(curve["accuracy_per_seed"]) == seeds
            assert all(0.0 <= a <= 1.0 for row in curve["accuracy_per_seed"] for a in row), where
            # Paired seeds: v0 is the same model for every strategy of a seed.
            first = scenario["strategies"][MARGIN_DIVERSITY]["accuracy_per_seed"]
            assert [row[0] for row in curve["accuracy_per_seed"]] == [row[0] for row in first], where
        # The default reports the phase it chose in, every round and seed.
        chosen = scenario["strategies"][MARGIN_DIVERSITY]["chosen_by_per_round"]
        assert all(key.split(":")[0] in ("cold", "warm") for row in chosen for key in row)


@pytest.mark.slow
def test_the_figures_do_not_depend_on_how_many_processes_ran_the_seeds() -> None:
    """Each (source, seed) restarts the augmentation's draws: before, a seed's trainings drew what the
    process's earlier trainings left, so two processes gave other figures than one."""
    config = BenchConfig.quick(seeds=2)
    one, two = (run_label_bench(replace(config, processes=count)) for count in (1, 2))
    assert one["scenarios"] == two["scenarios"]
    assert one["v0_accuracy_on_A_per_seed"] == two["v0_accuracy_on_A_per_seed"]
    assert one["trainings"] == two["trainings"] > 0


def test_seeds_of_the_source_with_more_curves_go_first() -> None:
    """Shapes runs two scenarios in the headline, digits one: its seeds start first so both processes
    end together."""
    assert seed_units(BenchConfig(seeds=2)) == [("shapes", 0), ("shapes", 1), ("digits", 0), ("digits", 1)]


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


def test_the_label_ratio_and_the_paired_gaps_and_their_intervals() -> None:
    labels = [0, 50, 100, 150, 200]
    rng = np.random.default_rng(0)
    random = np.asarray([[0.2, 0.4, 0.5, 0.6, 0.7]] * 8) + rng.normal(0, 0.01, (8, 5))
    # The default is random's curve one round early: it reaches random's final accuracy at 150 of 200.
    default = np.concatenate([random[:, 1:], random[:, -1:] + 0.1], axis=1)
    assert label_ratio(default, random, labels) == pytest.approx(0.75, abs=0.03)
    interval = ratio_interval(default, random, labels)
    assert interval["label_ratio_lower_90"] <= 0.75 + 0.03 and interval["label_ratio_upper_90"] < 0.85
    assert interval["label_ratio_never_share"] == 0.0
    gaps = paired_gaps(default, random)
    assert [round(g["gap"], 1) for g in gaps] == [0.2, 0.1, 0.1, 0.1, 0.1]
    assert all(g["lower_90"] <= g["gap"] <= g["upper_90"] for g in gaps)
    # A default that never gets there: no ratio, and no upper bound.
    worse = random - 0.2
    assert label_ratio(worse, random, labels) is None
    assert ratio_interval(worse, random, labels)["label_ratio_upper_90"] is None


def test_duplicate_windows_copy_images_of_this_window_or_earlier_ones() -> None:
    from training.bench.labeling_data import images

    fresh = images("shapes", 60, 5, "B", file_size=48, image_size=16, prefix="b")
    pool = with_duplicates(fresh, 20, 0.3, 1, 16)
    assert len(pool) == 60
    for start in range(0, 60, 20):
        members = range(start, start + 20)
        copies = [i for i in members if pool.groups[i] != i]
        assert len(copies) == 6
        # A copy's original arrived in this window or an earlier one, never later.
        assert all(pool.groups[i] < start + 20 and pool.groups[pool.groups[i]] == pool.groups[i] for i in copies)
        assert all(pool.labels[i] == pool.labels[pool.groups[i]] for i in copies)


def test_every_training_takes_the_same_number_of_steps_whatever_the_labeled_set() -> None:
    """v0's 120 images got 12 optimizer steps when training ran a fixed number of epochs."""
    learner = Learner(BenchConfig.quick(steps=7), classes=3)
    rng = np.random.default_rng(0)
    for size in (40, 300):
        x = rng.random((size, 16, 16, 3), dtype=np.float32)
        learner.train(seed=1, x=x, y=rng.integers(0, 3, size))
        assert int(learner.optimizer.iterations) == 7


def test_the_learning_rate_follows_the_cosine_from_the_top_to_zero_over_a_training() -> None:
    """The schedule reads the optimizer's step counter, which every training restarts from 0."""
    config = BenchConfig.quick(steps=8)
    learner = Learner(config, classes=3)
    for step in (0, 2, 4, 7):
        learner.optimizer.iterations.assign(step)
        expected = config.learning_rate * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        assert float(learner.optimizer.learning_rate) == pytest.approx(expected, rel=1e-5)


def test_training_batches_are_cut_from_whole_shuffled_passes() -> None:
    batches = list(step_batches(np.random.default_rng(0), 120, 64, 15))
    assert [len(b) for b in batches] == [64] * 15
    stream = np.concatenate(batches)
    for start in range(0, len(stream) - 120, 120):  # every example once in each pass, in a new order
        assert sorted(stream[start : start + 120]) == list(range(120))
    assert list(stream[:120]) != list(stream[120:240])
    assert [len(b) for b in step_batches(np.random.default_rng(0), 40, 64, 3)] == [40, 40, 40]
    assert list(step_batches(np.random.default_rng(0), 0, 64, 5)) == []


@pytest.mark.parametrize("size", [40, 470, 520, 770])
def test_no_training_batch_is_a_remainder_of_a_few_images(size: int) -> None:
    """470 labeled images made 7 batches of 64 and one of 6 (and 770 one of 2): the curves dipped there."""
    sizes = {len(b) for b in step_batches(np.random.default_rng(0), size, 64, 40)}
    assert sizes == {min(size, 64)}
