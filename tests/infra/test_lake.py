import datetime as dt
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra.lake import Lake, LakeError, Transaction, from_source
from infra.settings import Settings
from infra.tables import IMAGES, PREDICTION_COLUMNS, column_names


def rows(paths: list[str], day: dt.date, label: str | None = None, confidence: float | None = None) -> pa.Table:
    return pa.table(
        {
            "path": paths,
            "load_date": [day] * len(paths),
            "content_hash": [f"h-{p}" for p in paths],
            "label": [label] * len(paths),
            "confidence": [confidence] * len(paths),
        }
    )


DAY = dt.date(2026, 11, 1)


def test_images_table_is_created_partitioned(settings: Settings) -> None:
    lake = Lake(settings)
    table = lake.images()
    assert table.metadata().partition_columns == ["load_date"]
    assert lake.summary() == [
        {"table": IMAGES.name, "version": 0, "versions": 1, "rows": 0, "files": 0, "partitions": ["load_date"]}
    ]


def test_merge_same_batch_twice_changes_nothing(settings: Settings) -> None:
    lake = Lake(settings)
    batch = rows(["a", "b"], DAY)
    first = lake.merge(IMAGES, batch, txn=Transaction("test", 0))
    assert (first.inserted, first.skipped) == (2, False)
    version = lake.version(IMAGES)
    again = lake.merge(IMAGES, batch, txn=Transaction("test", 0))
    assert again.skipped
    assert lake.version(IMAGES) == version
    assert lake.read(IMAGES).num_rows == 2
    assert lake.committed_version(IMAGES, "test") == 0


def test_merge_without_transaction_is_still_keyed(settings: Settings) -> None:
    lake = Lake(settings)
    lake.merge(IMAGES, rows(["a"], DAY))
    outcome = lake.merge(IMAGES, rows(["a", "c"], DAY))
    assert (outcome.inserted, outcome.updated) == (1, 0)
    assert sorted(lake.read(IMAGES, columns=["path"]).column("path").to_pylist()) == ["a", "c"]


def test_update_touches_only_named_columns(settings: Settings) -> None:
    lake = Lake(settings)
    lake.merge(IMAGES, rows(["a"], DAY, label="cat"))
    update = from_source(["confidence"])
    outcome = lake.merge(IMAGES, rows(["a"], DAY, label=None, confidence=0.5), update=update)
    assert outcome.updated == 1
    row = lake.read(IMAGES).to_pylist()[0]
    assert (row["label"], row["confidence"]) == ("cat", 0.5)


def test_merge_predicate_names_only_touched_partitions(settings: Settings) -> None:
    lake = Lake(settings)
    for day in range(1, 6):
        lake.merge(IMAGES, rows([f"p{day}"], dt.date(2026, 11, day)))
    lake.merge(IMAGES, rows(["p1"], dt.date(2026, 11, 1), confidence=0.9), update=from_source(["confidence"]))
    last = lake.history(IMAGES, 1)[0]
    predicate = last["operationParameters"]["predicate"]
    assert "2026-11-01" in predicate and "2026-11-02" not in predicate
    # Files outside the batch's partition were neither read for rewrite nor removed.
    assert int(last["operationMetrics"]["num_target_files_removed"]) <= 1


def test_time_travel_reads_a_pinned_version(settings: Settings) -> None:
    lake = Lake(settings)
    lake.merge(IMAGES, rows(["a"], DAY))
    pinned = lake.version(IMAGES)
    lake.merge(IMAGES, rows(["b"], DAY))
    assert lake.read(IMAGES, version=pinned).num_rows == 1
    assert lake.read(IMAGES).num_rows == 2


def test_concurrent_writers_both_land(settings: Settings) -> None:
    """The stream and the label handlers write images at once: conflicts are retried, nothing lost."""
    lake = Lake(settings)
    lake.merge(IMAGES, rows([f"x{i}" for i in range(20)], DAY))
    errors: list[BaseException] = []

    def writer(name: str, column: str) -> None:
        try:
            for i in range(5):
                batch = rows([f"x{i}", f"{name}{i}"], DAY, label="l", confidence=0.1 * i)
                Lake(settings).merge(IMAGES, batch, update=from_source([column]))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=("s", "confidence")),
        threading.Thread(target=writer, args=("h", "label")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    table = lake.read(IMAGES).to_pylist()
    assert len(table) == 30
    assert len({r["path"] for r in table}) == 30


def test_missing_lake_root_is_created_and_unwritable_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "lake"
    Lake(Settings(state_dir=tmp_path, lake_root=str(root)))
    assert root.is_dir()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(LakeError, match="cannot create lake root"):
        Lake(Settings(state_dir=tmp_path, lake_root=str(blocker / "lake")))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that ignores permissions")
        with pytest.raises(LakeError, match="not writable"):
            Lake(Settings(state_dir=tmp_path, lake_root=str(locked)))
    finally:
        locked.chmod(0o700)


def test_prediction_columns_are_owned_by_the_stream() -> None:
    assert {"predicted_label", "confidence", "model_version", "sent_to_labeling_at"} <= set(
        column_names(PREDICTION_COLUMNS)
    )


def test_compaction_merges_small_files_of_named_partitions_only(settings: Settings) -> None:
    lake = Lake(settings)
    other = DAY - dt.timedelta(days=1)
    for batch in range(4):
        lake.merge(IMAGES, rows([f"p{batch}"], DAY), txn=Transaction("stream", batch))
        lake.merge(IMAGES, rows([f"q{batch}"], other))
    before = lake.read(IMAGES).sort_by("path")

    figures = lake.compact(IMAGES, "load_date", [DAY])

    assert (figures["files_removed"], figures["files_added"]) == (4, 1)
    table = lake.table(IMAGES)
    files = [uri for uri in table.file_uris() if DAY.isoformat() in uri]
    assert len(files) == 1 and len(table.file_uris()) == 5  # the other day keeps its 4 files
    assert lake.read(IMAGES).sort_by("path").equals(before)
    assert lake.committed_version(IMAGES, "stream") == 3  # exactly-once bookkeeping survives
    assert lake.compact(IMAGES, "load_date", [DAY])["files_removed"] == 0  # nothing left to do


def test_reused_tables_follow_commits_from_other_writers(settings: Settings) -> None:
    stream = Lake(settings, reuse_tables=True)
    other = Lake(settings)
    first = stream.merge(IMAGES, rows(["a"], DAY), txn=Transaction("stream", 0))
    assert stream.table(IMAGES) is stream.table(IMAGES)  # one handle, brought up to date in place

    other.merge(IMAGES, rows(["b"], DAY, label="cat"))  # e.g. a label MERGE from the handlers
    second = stream.merge(IMAGES, rows(["c"], DAY), txn=Transaction("stream", 1))

    assert (first.version, second.version) == (1, 3)
    assert stream.version(IMAGES) == other.version(IMAGES) == 3
    assert sorted(stream.read(IMAGES, columns=["path"]).column("path").to_pylist()) == ["a", "b", "c"]
    assert stream.committed_version(IMAGES, "stream") == 1
    assert stream.merge(IMAGES, rows(["c"], DAY), txn=Transaction("stream", 1)).skipped
    assert stream.read(IMAGES, version=1).num_rows == 1  # time travel still opens its own snapshot


def test_compaction_leaves_files_at_the_target_size_alone(settings: Settings) -> None:
    lake = Lake(settings)
    for batch in range(3):
        lake.merge(IMAGES, rows([f"p{batch}-{i:05d}" for i in range(2000)], DAY))
    sizes = sorted(a["size_bytes"] for a in pa.table(lake.table(IMAGES).get_add_actions()).to_pylist())

    # Every file already counts as full: nothing to rewrite.
    assert lake.compact(IMAGES, "load_date", [DAY], target_bytes=sizes[0])["files_removed"] == 0
    assert lake.compact(IMAGES, "load_date", [DAY], target_bytes=10 * sizes[-1])["files_removed"] == 3


def test_path_statistics_are_not_truncated_so_newer_names_skip_older_files(settings: Settings) -> None:
    lake = Lake(settings)
    prefix = "abfss://images@account.dfs.core.windows.net/" + "camera-07/" * 12  # 160 characters
    lake.merge(IMAGES, rows([f"{prefix}2026-11-01T08-{i:02d}.png" for i in range(50)], DAY))
    older = pa.table(lake.table(IMAGES).get_add_actions(flatten=True)).to_pylist()[0]
    assert older["min.path"] == f"{prefix}2026-11-01T08-00.png"
    assert older["max.path"] == f"{prefix}2026-11-01T08-49.png"
    assert older.get("min.content") is None  # image bytes carry no statistics

    lake.merge(IMAGES, rows([f"{prefix}2026-11-01T09-{i:02d}.png" for i in range(50)], DAY))
    newer = lake.merge(IMAGES, rows([f"{prefix}2026-11-01T10-{i:02d}.png" for i in range(50)], DAY))

    assert newer.inserted == 50 and lake.read(IMAGES).num_rows == 150
    metrics = lake.table(IMAGES).history(1)[0]["operationMetrics"]
    assert metrics["num_target_files_scanned"] == 0 and metrics["num_target_files_skipped_during_scan"] == 2


def test_merge_into_a_compacted_partition_past_8192_rows_matches_each_key_once(settings: Settings) -> None:
    # delta-rs#4475 (deltalake 1.6.0): once a partition's file holds more than 8,192 rows (one
    # DataFusion batch), a MERGE matching rows of both batches failed with a false "multiple
    # source rows matched", and an update of the row just past the boundary could drop rows.
    lake = Lake(settings)
    for batch in range(3):
        lake.merge(IMAGES, rows([f"p-{batch}-{i:04d}" for i in range(3000)], DAY), txn=Transaction("stream", batch))
    assert lake.compact(IMAGES, "load_date", [DAY])["files_added"] == 1
    (file,) = lake.table(IMAGES).file_uris()
    in_file_order = pq.read_table(file.removeprefix("file://"), columns=["path"]).column("path").to_pylist()
    assert len(in_file_order) == 9000

    # Every key of the file (both batches) and as many new ones.
    new = [f"q-{i:04d}" for i in range(1000)]
    everything = lake.merge(
        IMAGES,
        rows(in_file_order + new, DAY, confidence=0.5),
        update=from_source(["confidence"]),
        txn=Transaction("stream", 3),
    )
    # Only the row just past the first batch.
    boundary = lake.merge(IMAGES, rows([in_file_order[8192]], DAY, confidence=0.9), update=from_source(["confidence"]))

    assert (everything.updated, everything.inserted) == (9000, 1000)
    assert (boundary.updated, boundary.inserted) == (1, 0)
    table = lake.read(IMAGES, columns=["path", "confidence"])
    assert table.num_rows == 10_000 == len(set(table.column("path").to_pylist()))
    confidence = dict(zip(table.column("path").to_pylist(), table.column("confidence").to_pylist(), strict=True))
    assert confidence.pop(in_file_order[8192]) == 0.9 and set(confidence.values()) == {0.5}


def test_a_string_filter_reads_files_delta_rs_wrote_with_string_views(settings: Settings) -> None:
    """delta-rs writes a MERGE's string columns as string_view; pyarrow's scan cannot compare a string
    literal with those files' statistics, so the read filters once the rows are in (the retraining
    policy's human-label read failed on every export here)."""
    import pyarrow.compute as pc

    from infra.tables import LABEL_SOURCE_HUMAN

    lake = Lake(settings)
    paths = [f"file:/d/{i}.png" for i in range(6)]
    day = pa.array([dt.date(2026, 1, 2)] * 6, pa.date32())
    lake.merge(IMAGES, pa.table({"path": paths, "load_date": day, "predicted_label": ["circle"] * 6}))
    human = pa.table(
        {"path": paths[:4], "load_date": day[:4], "label": ["square"] * 4, "label_source": [LABEL_SOURCE_HUMAN] * 4}
    )
    lake.merge(IMAGES, human, update={"label": "s.label", "label_source": "s.label_source"})

    wanted = (pc.field("label_source") == LABEL_SOURCE_HUMAN) & pc.field("label").is_valid()
    rows = Lake(settings).read(IMAGES, columns=["path", "label", "label_source"], filters=wanted)
    assert sorted(rows.column("path").to_pylist()) == paths[:4]
