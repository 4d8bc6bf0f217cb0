"""The label-efficiency benchmark's figures: labels to reach random, paired gaps, bootstrap intervals.

Every figure compares the default with random *paired by seed* (same initial weights, same
windows), and its 90 % interval is a percentile bootstrap over seeds: resample the seeds with
replacement, recompute the figure from the mean curves of the resampled seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0
NEVER = 1e9  # a draw whose default never reaches random, in the percentiles


def labels_to_reach(rounds: Sequence[dict[str, Any]], target: float) -> float | None:
    """Labels at which the mean accuracy first reaches ``target`` (linear between rounds), or None."""
    for index, row in enumerate(rounds):
        if row["accuracy"] < target:
            continue
        if index == 0:
            return float(row["labels"])
        before = rounds[index - 1]
        gain = row["accuracy"] - before["accuracy"]
        share = (target - before["accuracy"]) / gain if gain > 0 else 1.0
        return float(before["labels"] + share * (row["labels"] - before["labels"]))
    return None


def label_ratio(default: np.ndarray, random: np.ndarray, labels: Sequence[int]) -> float | None:
    """Labels the default's mean curve needs to reach random's mean accuracy at the budget, over the budget.

    ``default`` and ``random``: accuracies ``(seeds, rounds + 1)``; ``labels``: labels spent by round.
    None when the default never reaches it within the budget.
    """
    target = float(random[:, -1].mean())
    curve = [{"labels": n, "accuracy": float(a)} for n, a in zip(labels, default.mean(axis=0), strict=True)]
    needed = labels_to_reach(curve, target)
    return None if needed is None or not labels[-1] else needed / labels[-1]


def _draws(seeds: int) -> np.ndarray:
    return np.random.default_rng(BOOTSTRAP_SEED).integers(0, seeds, (BOOTSTRAP_DRAWS, seeds))


def ratio_interval(default: np.ndarray, random: np.ndarray, labels: Sequence[int]) -> dict[str, Any]:
    """The label ratio's 90 % bootstrap interval; a draw where the default never reaches random counts
    as above every ratio (so the upper bound is None when more than 5 % of draws never reach it)."""
    ratios = []
    for draw in _draws(len(default)):
        found = label_ratio(default[draw], random[draw], labels)
        ratios.append(np.inf if found is None else found)
    values = np.asarray(ratios)
    low, high = np.percentile(np.where(np.isfinite(values), values, NEVER), [5, 95])
    low, high = (np.inf if v >= NEVER else v for v in (low, high))
    return {
        "label_ratio_lower_90": None if not np.isfinite(low) else round(float(low), 3),
        "label_ratio_upper_90": None if not np.isfinite(high) else round(float(high), 3),
        "label_ratio_never_share": round(float(np.mean(~np.isfinite(values))), 4),
    }


def paired_gaps(default: np.ndarray, random: np.ndarray) -> list[dict[str, float]]:
    """Per round: the default's mean accuracy less random's, paired by seed, with its 90 % interval."""
    differences = default - random
    means = differences[_draws(len(differences))].mean(axis=1)  # (draws, rounds + 1)
    low, high = np.percentile(means, [5, 95], axis=0)
    return [
        {
            "round": r,
            "gap": round(float(differences[:, r].mean()), 4),
            "lower_90": round(float(low[r]), 4),
            "upper_90": round(float(high[r]), 4),
        }
        for r in range(differences.shape[1])
    ]
