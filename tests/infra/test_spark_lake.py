"""The spark engine against the delta-rs engine: same tables, each MERGEs what the other wrote."""

import datetime as dt

import pyarrow as pa
import pytest

from infra.lake import Lake, Transaction, from_source, open_lake
from infra.settings import Settings
from infra.spark_lake import SparkLake
from infra.tables import IMAGES, LABELING_CANDIDATES
from tests.helpers.streams import merge_engines

pytestmark = pytest.mark.spark

DAY = dt.date(2026, 11, 1)
OTHER_DAY = dt.date(2026, 11, 2)


def rows(paths: list[str], day: dt.date = DAY, label: str | None = None, confidence: float | None = None) -> pa.Table:
    return pa.table(
        {
            "path": paths,
            "load_date": pa.array([day] * len(paths), pa.date32()),
            "content": [p.encode() for p in paths],
            "label": [label] * len(paths),
            "confidence": pa.array([confidence] * len(paths), pa.float64()),
            "embedding": pa.array([[0.5, 0.25]] * len(paths), pa.list_(pa.float32())),
        }
    )


@pytest.fixture
def engines(tmp_path) -> tuple[Lake, SparkLake]:
    settings = Settings(state_dir=tmp_path / "state", spark_master="local[2]", lake_engine="spark")
    return Lake(settings), SparkLake(settings)


def on_executors(lake: SparkLake, table: pa.Table):
    """``table`` as a DataFrame: what the spark engine MERGEs with delta-spark (a micro-batch)."""
    return lake.frame(IMAGES, table)


def by_path(lake: Lake) -> dict[str, dict]:
    return {row["path"]: row for row in lake.read(IMAGES).to_pylist()}


def test_open_lake_follows_the_engine_setting(tmp_path) -> None:
    assert type(open_lake(Settings(state_dir=tmp_path, lake_engine="spark"))) is SparkLake
    assert type(open_lake(Settings(state_dir=tmp_path))) is Lake


def test_spark_merge_is_keyed_and_a_replayed_transaction_changes_nothing(engines) -> None:
    _, spark_lake = engines
    first = spark_lake.merge(IMAGES, on_executors(spark_lake, rows(["a", "b"])), txn=Transaction("q", 0))
    assert (first.inserted, first.updated, first.skipped) == (2, 0, False)
    version = spark_lake.version(IMAGES)
    again = spark_lake.merge(
        IMAGES, rows(["a", "b"], label="x"), update=from_source(["label"]), txn=Transaction("q", 0)
    )
    assert again.skipped and spark_lake.version(IMAGES) == version
    nxt = spark_lake.merge(
        IMAGES,
        on_executors(spark_lake, rows(["b", "c"], label="y")),
        update=from_source(["label"]),
        txn=Transaction("q", 1),
    )
    assert (nxt.inserted, nxt.updated) == (1, 1)
    assert {p: r["label"] for p, r in by_path(spark_lake).items()} == {"a": None, "b": "y", "c": "y"}
    assert spark_lake.committed_version(IMAGES, "q") == 1


def test_delta_skips_a_replayed_statement_by_itself(engines) -> None:
    """The idempotency confs, not only lakesight's own pre-check, stop a replay (Delta's txn table)."""
    _, spark_lake = engines
    spark_lake.merge(IMAGES, on_executors(spark_lake, rows(["a"])), txn=Transaction("q", 3))
    spark_lake._committed = lambda spec, txn: False  # type: ignore[method-assign]  # bypass the pre-check
    version = spark_lake.version(IMAGES)
    spark_lake.merge(IMAGES, on_executors(spark_lake, rows(["z"])), txn=Transaction("q", 3))
    assert spark_lake.version(IMAGES) == version
    assert sorted(by_path(spark_lake)) == ["a"]


@pytest.mark.parametrize("first, second", [("delta-rs", "spark"), ("spark", "delta-rs")])
def test_each_engine_merges_what_the_other_wrote(engines, first: str, second: str) -> None:
    lakes = dict(zip(("delta-rs", "spark"), engines, strict=True))
    writer, merger = lakes[first], lakes[second]

    def source(lake: Lake, table: pa.Table):
        return on_executors(lake, table) if isinstance(lake, SparkLake) else table

    writer.merge(IMAGES, source(writer, rows(["a", "b"], label="cat")), txn=Transaction(f"{first}-app", 0))
    writer.merge(IMAGES, source(writer, rows(["c"], day=OTHER_DAY)), txn=Transaction(f"{first}-app", 1))
    outcome = merger.merge(
        IMAGES,
        source(merger, rows(["b", "d"], confidence=0.7)),
        update=from_source(["confidence"]),
        txn=Transaction(f"{second}-app", 0),
    )
    assert (outcome.inserted, outcome.updated) == (1, 1)
    for lake in engines:  # both read the same rows
        table = by_path(lake)
        assert sorted(table) == ["a", "b", "c", "d"]
        assert (table["b"]["label"], table["b"]["confidence"]) == ("cat", 0.7)
        assert table["d"]["embedding"] == pytest.approx([0.5, 0.25])
        assert table["c"]["load_date"] == OTHER_DAY
    # app transactions of both engines are in the one log, and each still skips its own replay
    assert merger.committed_version(IMAGES, f"{first}-app") == 1
    assert writer.committed_version(IMAGES, f"{second}-app") == 0
    assert writer.merge(IMAGES, source(writer, rows(["e"])), txn=Transaction(f"{second}-app", 0)).skipped
    assert merge_engines(engines[0]) == {"delta-rs", "spark"}
    operations = [entry["operation"] for entry in engines[0].history(IMAGES)]
    assert operations.count("MERGE") == 3
    protocol = engines[0].table(IMAGES).protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2)


def test_spark_merge_takes_a_dataframe_and_conforms_its_columns(engines, spark) -> None:
    delta_rs, spark_lake = engines
    frame = spark.createDataFrame(
        [("p1", DAY, "dog", "not a column"), ("p2", OTHER_DAY, "cat", "x")],
        "path string, load_date date, label string, note string",
    )
    outcome = spark_lake.merge(IMAGES, frame, txn=Transaction("df", 0))
    assert outcome.inserted == 2
    table = by_path(delta_rs)
    assert table["p1"]["label"] == "dog" and table["p2"]["load_date"] == OTHER_DAY
    assert "note" not in delta_rs.read(IMAGES).column_names


def test_rows_built_on_the_driver_go_through_delta_rs(engines) -> None:
    delta_rs, spark_lake = engines
    assert spark_lake.merge(IMAGES, rows(["a"]), txn=Transaction("d", 0)).inserted == 1
    assert spark_lake.append(LABELING_CANDIDATES, LABELING_CANDIDATES.schema.empty_table()).skipped  # nothing to add
    assert merge_engines(delta_rs) == {"delta-rs"}
    assert spark_lake.merge(IMAGES, rows(["a"]), txn=Transaction("d", 0)).skipped


def test_spark_append_and_compaction(engines) -> None:
    delta_rs, spark_lake = engines
    for batch in range(3):
        spark_lake.merge(IMAGES, on_executors(spark_lake, rows([f"p{batch}"])), txn=Transaction("c", batch))
    appended = spark_lake.append(IMAGES, on_executors(spark_lake, rows(["q"], day=OTHER_DAY)), txn=Transaction("c", 3))
    assert not appended.skipped
    assert spark_lake.append(IMAGES, on_executors(spark_lake, rows(["r"])), txn=Transaction("c", 3)).skipped
    assert delta_rs.history(IMAGES, 1)[0]["engineInfo"].startswith("Apache-Spark")
    files_before = delta_rs.summary([IMAGES.name])[0]["files"]
    figures = spark_lake.compact(IMAGES, "load_date", [DAY])
    # the three files of DAY become one; OTHER_DAY's is left alone
    assert (files_before, figures["files_removed"], figures["files_added"]) == (4, 3, 1)
    assert sorted(by_path(delta_rs)) == ["p0", "p1", "p2", "q"]


def jobs_to_list_files(lake: SparkLake, group: str) -> list[int]:
    """The Spark jobs that listing ``images``' files (what a MERGE reads first) starts."""
    from delta.tables import DeltaTable

    context = lake.spark.sparkContext
    context.setJobGroup(group, "listing the table's files")
    try:
        DeltaTable.forPath(lake.spark, lake.uri(IMAGES)).toDF().inputFiles()
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
    return list(context.statusTracker().getJobIdsForGroup(group))


def test_a_merge_builds_the_next_merges_snapshot_ahead(engines) -> None:
    delta_rs, spark_lake = engines
    delta_rs.merge(IMAGES, rows(["a"]))  # a version delta-spark has never read: its snapshot is built on use
    unprepared = jobs_to_list_files(spark_lake, "unprepared")
    spark_lake.merge(IMAGES, on_executors(spark_lake, rows(["b"])), txn=Transaction("q", 0))
    assert spark_lake.wait_prepared(IMAGES, timeout=120)
    prepared = jobs_to_list_files(spark_lake, "prepared")
    # Built: at most one job, reading the cached file list; unbuilt, the log is read and reduced
    # first (4 jobs after the MERGE without prepare, 5 for the version delta-rs wrote).
    assert len(prepared) <= 1 < len(unprepared)
