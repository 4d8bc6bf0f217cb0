"""Warm scoring workers (``streams.scoring.warm``): the Python workers that scored a batch, and the
champion they loaded, outlive a lull longer than the minute after which Spark ends idle workers."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from infra.settings import Settings
from tests.helpers.streams import scoring_in_background, shapes, wait_for_rows

# Spark ends a Python worker idle for a minute (PythonWorkerFactory's IDLE_WORKER_TIMEOUT) and looks
# for such workers every few seconds: a lull this long outlasts both.
LULL_S = 80.0


def python_workers() -> set[int]:
    """The pids of the Python workers Spark's daemon (``pyspark.daemon``) has forked, alive now."""
    workers = set()
    for process in psutil.Process().children(recursive=True):
        try:
            parent = process.parent()
            if parent is not None and "pyspark.daemon" in " ".join(parent.cmdline()):
                workers.add(process.pid)
        except psutil.Error:  # gone meanwhile
            continue
    return workers


@pytest.mark.spark
@pytest.mark.slow
def test_the_workers_that_scored_a_batch_outlive_a_lull_longer_than_sparks_idle_limit(
    spark, score_settings: Settings, tmp_path: Path
) -> None:
    settings = score_settings.model_copy(update={"score_keep_warm_s": 5.0, "score_workers": "spark"})
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    with scoring_in_background(settings, source=incoming):
        shapes(incoming, 2, prefix="before")
        wait_for_rows(settings, 2)
        scored_the_batch = python_workers()
        assert scored_the_batch, "no Python worker of Spark's daemon was found"
        time.sleep(LULL_S)  # the lull is what is under test: nothing arrives
        shapes(incoming, 1, prefix="after")
        wait_for_rows(settings, 3)

        # Spark ends every worker idle past its limit: without the warm-up job none of them is left.
        # (Workers of another test's idle pool, if any, may go; the stream's own must not.)
        assert scored_the_batch & python_workers(), "every worker that scored before the lull was ended by Spark"
