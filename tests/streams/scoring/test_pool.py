"""The stream's own scoring processes (``streams.scoring.pool``): the same rows as Spark's workers,
a killed process replaced, and a clear refusal where the pool cannot run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pyarrow as pa
import pytest

from infra.images import IMAGE_GLOB
from infra.settings import Settings
from streams.scoring import pool as pool_module
from streams.scoring.pool import ScoringPoolError, uses_pool
from streams.scoring.pooled import PooledScoring
from streams.scoring.query import ScoreError, run_scoring
from tests.helpers.images import solid_png, truncated_png
from tests.helpers.streams import rows_by_name, scoring_in_background, shapes, wait_for_rows
from tests.helpers.waiting import wait_until

# What each path's row must agree on, whoever scored it.
COMPARED = ("error", "predicted_label", "model_version", "content_hash", "size_bytes", "load_date", "class_names")


def _folder(root: Path) -> Path:
    incoming = root / "incoming"
    shapes(incoming, 9)
    (incoming / "truncated.png").write_bytes(truncated_png())
    (incoming / "empty.png").write_bytes(b"")
    (incoming / "text.png").write_bytes(b"not an image at all")
    (incoming / "huge.png").write_bytes(solid_png(3, size=200) + b"\0" * 6000)
    return incoming


@pytest.mark.spark
def test_the_pool_stores_what_sparks_workers_store(spark, score_settings: Settings, tmp_path: Path) -> None:
    incoming = _folder(tmp_path)
    stored: dict[str, dict[str, dict]] = {}
    for workers in ("pool", "spark"):
        state = tmp_path / workers
        state.mkdir()
        settings = score_settings.model_copy(
            update={
                "score_workers": workers,
                "max_image_bytes": 5000,
                "score_max_files_per_trigger": 4,  # several batches: the pool reads each next one ahead
                "lake_root": str(state / "lake"),
                "checkpoint_root": str(state / "checkpoints"),
            }
        )
        report = run_scoring(settings, source=incoming, once=True)
        assert report.rows == 13 and report.batches == 4
        if workers == "pool":
            assert report.read_ahead_hits > 0
        stored[workers] = rows_by_name(settings)

    assert stored["pool"].keys() == stored["spark"].keys()
    for name, spark_row in stored["spark"].items():
        pool_row = stored["pool"][name]
        assert {c: pool_row[c] for c in COMPARED} == {c: spark_row[c] for c in COMPARED}, name
        assert pool_row["content"] == spark_row["content"]
        if spark_row["error"] is None:
            assert pool_row["confidence"] == pytest.approx(spark_row["confidence"], abs=1e-6)
            assert pool_row["probabilities"] == pytest.approx(spark_row["probabilities"], abs=1e-6)
            assert pool_row["embedding"] == pytest.approx(spark_row["embedding"], abs=1e-6)
    assert sum(row["error"] is not None for row in stored["pool"].values()) == 4


def _listed(paths: list[Path]) -> pa.Table:
    """Rows as Spark's file source lists these files (path, modificationTime, length)."""
    stats = [path.stat() for path in paths]
    return pa.table(
        {
            "path": [f"file:{path}" for path in paths],
            "modificationTime": pa.array([s.st_mtime_ns // 1000 for s in stats], pa.timestamp("us", tz="UTC")),
            "length": pa.array([s.st_size for s in stats], pa.int64()),
        }
    )


@pytest.mark.spark
def test_files_read_ahead_are_taken_only_while_unchanged(spark, score_settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    paths = shapes(folder, 8)
    for i, path in enumerate(paths):  # Spark's order: oldest first
        os.utime(path, (1_800_000_000 + i, 1_800_000_000 + i))
    scoring = PooledScoring.start(score_settings, spark, folder=str(folder), glob=IMAGE_GLOB, file_limit=4)
    try:
        scoring.score(_listed(paths[:4]))  # then the next four are read ahead
        scoring.collect_read_ahead()
        assert scoring.read_ahead_rows == 4 and scoring.cache.hits == 0
        rewritten = paths[5]
        new_bytes = solid_png(2, size=24)
        rewritten.write_bytes(new_bytes)  # changed after it was read ahead: its guess must not be used
        os.utime(rewritten, (1_800_000_100, 1_800_000_100))
        listed = _listed(paths[4:])
        table = scoring.score(listed)
        fresh = scoring.pool.score(listed, scoring.config, scoring.schema)  # the same rows, nothing read ahead
    finally:
        scoring.close()
    assert scoring.cache.hits == 3
    assert table.column("path").to_pylist() == listed.column("path").to_pylist()
    rows = {Path(r["path"]).name: r for r in table.to_pylist()}
    assert rows[rewritten.name]["content"] == new_bytes
    for path in paths[4:]:
        assert rows[path.name]["content"] == path.read_bytes()
    for column in ("content_hash", "predicted_label", "size_bytes", "modified_at", "error"):
        assert table.column(column).to_pylist() == fresh.column(column).to_pylist(), column


def _scoring_processes() -> list[psutil.Process]:
    """The pool's live processes (children of this test process)."""
    shared = pool_module._shared
    assert shared is not None, "no scoring pool was started"
    return [psutil.Process(pid) for pid in shared.pids()]


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.spark
def test_a_killed_scoring_process_is_replaced_and_the_stream_goes_on(
    spark, score_settings: Settings, tmp_path: Path
) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    settings = score_settings.model_copy(update={"score_workers": "pool"})
    with scoring_in_background(settings, source=incoming) as result:
        shapes(incoming, 4, prefix="before")
        wait_for_rows(settings, 4)
        victims = _scoring_processes()
        restarts = pool_module._shared.restarts  # type: ignore[union-attr]
        os.kill(victims[0].pid, signal.SIGKILL)
        wait_until(lambda: _gone(victims[0]), "the killed process to end")
        shapes(incoming, 5, prefix="after")
        wait_for_rows(settings, 9)
    report = result["report"]
    rows = rows_by_name(settings)
    assert len(rows) == 9 and all(row["error"] is None and row["predicted_label"] for row in rows.values())
    assert pool_module._shared.restarts == restarts + 1  # type: ignore[union-attr]
    assert report.batches >= 2  # type: ignore[attr-defined]


def test_score_workers_pool_is_refused_where_the_pool_cannot_run(tmp_path: Path) -> None:
    local = Settings(state_dir=tmp_path, spark_master="local[2]", score_workers="pool")
    assert uses_pool(local, "directory", str(tmp_path))
    assert not uses_pool(local.model_copy(update={"score_workers": "spark"}), "directory", str(tmp_path))
    assert uses_pool(local.model_copy(update={"lake_engine": "spark"}), "directory", str(tmp_path))
    with pytest.raises(ScoringPoolError, match="not a local folder"):
        uses_pool(local, "arrivals", str(tmp_path))
    with pytest.raises(ScoringPoolError, match="not local"):
        uses_pool(local.model_copy(update={"spark_master": "spark://host:7077"}), "directory", "/data")
    auto = local.model_copy(update={"score_workers": "auto"})
    assert uses_pool(auto.model_copy(update={"lake_engine": "spark"}), "directory", str(tmp_path))
    assert not uses_pool(auto, "arrivals", str(tmp_path))


@pytest.mark.spark
def test_run_scoring_says_why_the_pool_cannot_run(spark, score_settings: Settings, tmp_path: Path) -> None:
    settings = score_settings.model_copy(update={"score_workers": "pool"})
    with pytest.raises(ScoreError, match=r"score_workers=pool cannot score .*not a local folder"):
        run_scoring(settings, source=None, once=True)  # the arrival records: blobs the executors fetch
