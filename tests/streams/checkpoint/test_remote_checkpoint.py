"""Checkpoints on remote storage (``abfss://`` on a cluster; here Hadoop's ``viewfs://`` over a
local folder, which lakesight cannot open as a local path either): the query id, the source log
and the rotation all read them through Hadoop's filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.filesystem import join
from infra.settings import Settings
from streams.checkpoint.names import CheckpointError, query_app_id
from streams.checkpoint.rotation import clean_scored_file, remove_retired, retire_checkpoint, rotation_enabled
from streams.checkpoint.source_log import listed_files, seen_file_count
from streams.scoring.sources import Source
from tests.helpers.remote import viewfs_root

pytestmark = pytest.mark.spark


def _run_once(spark, folder: str, checkpoint: str) -> list[int]:
    """A JSON file stream over ``folder`` until it has read what is there; the batch ids it ran."""
    batches: list[int] = []
    query = (
        spark.readStream.format("json")
        .schema("x long")
        .load(folder)
        .writeStream.foreachBatch(lambda _, batch_id: batches.append(batch_id))
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    return batches


def test_a_new_remote_checkpoint_gets_a_new_app_id(spark, tmp_path: Path) -> None:
    root = viewfs_root(spark, tmp_path / "remote")
    (tmp_path / "remote" / "in").mkdir()
    (tmp_path / "remote" / "in" / "a.json").write_text('{"x":1}\n')
    (tmp_path / "remote" / "in" / "empty.json").write_text("")
    checkpoint = join(root, "checkpoints/score")

    assert _run_once(spark, join(root, "in"), checkpoint) == [0]
    first = query_app_id(checkpoint, "score")
    assert first == query_app_id(checkpoint, "score")  # stable while the checkpoint stays
    # The zero-byte file Spark dropped from the batch is in the log, so it still gets an error row.
    assert set(listed_files(checkpoint, 0)) == {join(root, "in/a.json"), join(root, "in/empty.json")}
    assert seen_file_count(checkpoint) == 2

    retire_checkpoint(Settings(state_dir=tmp_path / "state"), checkpoint, None, 2)  # a checkpoint reset
    assert not (tmp_path / "remote" / "checkpoints" / "score").exists()
    assert _run_once(spark, join(root, "in"), checkpoint) == [0]
    # Before, a remote checkpoint's app id was a hash of its URI: the new query's batch 0 was
    # skipped as already committed.
    assert query_app_id(checkpoint, "score") != first


def test_an_unreadable_query_id_is_an_error_not_a_made_up_id(spark, tmp_path: Path) -> None:
    root = viewfs_root(spark, tmp_path / "remote")
    with pytest.raises(CheckpointError, match="cannot read the query id"):
        query_app_id(join(root, "never-started"), "score")
    with pytest.raises(CheckpointError, match="cannot read the query id"):
        query_app_id(str(tmp_path / "local-never-started"), "score")


def test_rotation_cleans_and_retires_remote_folders(spark, tmp_path: Path) -> None:
    root = viewfs_root(spark, tmp_path / "remote")
    incoming = tmp_path / "remote" / "in"
    incoming.mkdir()
    for name in ("a.json", "b.json"):
        (incoming / name).write_text('{"x":1}\n')
    archiving = Settings(
        state_dir=tmp_path / "state", score_clean_source="archive", score_archive_dir=join(root, "archive")
    )
    arrivals = Source("arrivals", join(root, "in"))
    assert rotation_enabled(archiving, arrivals, join(root, "checkpoints/score"))

    assert clean_scored_file(join(root, "in/a.json"), archiving)
    assert (tmp_path / "remote" / "archive" / "root" / "in" / "a.json").exists()  # full path, as Spark keeps it
    deleting = archiving.model_copy(update={"score_clean_source": "delete"})
    assert clean_scored_file(join(root, "in/b.json"), deleting)
    assert not clean_scored_file(join(root, "in/b.json"), deleting)  # already gone
    assert list(incoming.iterdir()) == []

    leftover = tmp_path / "remote" / "checkpoints" / "score.retired-1"
    leftover.mkdir(parents=True)
    (tmp_path / "remote" / "checkpoints" / "score").mkdir()
    remove_retired(join(root, "checkpoints/score"))
    assert not leftover.exists() and (tmp_path / "remote" / "checkpoints" / "score").exists()
