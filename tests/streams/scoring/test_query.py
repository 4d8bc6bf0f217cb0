"""The scoring stream in-process (``streams.scoring.query``): bad input, replay, human labels, archiving, the report."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from infra.arrivals import arrivals_dir, write_arrival_records
from infra.blob import BlobStore, account_url
from infra.lake import Lake, MergeOutcome, Transaction
from infra.processes import free_port
from infra.settings import Settings
from infra.status_files import read_stream_status as read_status
from infra.tables import IMAGES, LABEL_SOURCE_HUMAN
from streams.batch_writer import Committed
from streams.file_rows import SYMLINK
from streams.scoring.query import SCORE_UPDATE, SCORE_UPDATE_WHEN, ScoreError, ScoreReport, run_scoring
from streams.scoring.sources import folder_limits
from tests.helpers.images import claimed_png, solid_png, truncated_png
from tests.helpers.streams import (
    CLASSES,
    arrival_record,
    hand_written_record,
    merge_engines,
    rows_by_name,
    scoring_in_background,
    scoring_settings,
    shapes,
    wait_for_rows,
    with_model,
)
from tests.helpers.waiting import wait_until


@pytest.mark.spark
@pytest.mark.parametrize(
    ("engine", "workers"),
    [("delta-rs", "auto"), ("spark", "auto"), ("spark", "spark")],
    ids=["delta-rs", "spark-engine-pool", "spark-engine-executors"],
)
def test_scores_good_images_and_records_bad_input_without_stopping(
    spark, score_settings: Settings, tmp_path: Path, engine: str, workers: str
) -> None:
    settings = score_settings.model_copy(
        update={"max_image_bytes": 5000, "lake_engine": engine, "score_workers": workers}
    )
    incoming = tmp_path / "incoming"
    good = shapes(incoming, 12)
    bad = incoming / "bad"
    bad.mkdir()
    (bad / "truncated.png").write_bytes(truncated_png())
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.png").write_bytes(b"not an image at all")
    (bad / "huge.png").write_bytes(solid_png(3, size=200) + b"\0" * 6000)
    (bad / "pixmap.png").write_bytes(b"P6\n2 2\n255\n" + bytes(12))  # a PPM: decodable, unsupported

    batches: list = []
    report = run_scoring(settings, source=incoming, once=True, on_batch=batches.append)

    rows = rows_by_name(settings)
    assert len(rows) == len(good) + 5
    assert merge_engines(Lake(settings)) == {engine}
    driver_bytes = sum(batch.table.column("content").null_count < batch.table.num_rows for batch in batches)
    if workers == "spark":  # the executors scored: the driver saw no image bytes (labeling is off)
        assert driver_bytes == 0
    else:  # the stream's own processes scored next to the driver, and the engine MERGEd their rows
        assert driver_bytes == len(batches)
    assert report.rows == len(rows) and report.inserted == len(rows)
    for path in good:
        row = rows[path.name]
        assert row["error"] is None
        assert row["predicted_label"] in CLASSES
        assert row["class_names"] == CLASSES
        assert 0 < row["confidence"] <= 1 and len(row["probabilities"]) == len(CLASSES)
        assert (row["model_name"], row["model_version"]) == (settings.model_name, "1")
        assert row["scored_at"] is not None and row["content"] == path.read_bytes()
    bad_names = ("truncated.png", "empty.png", "text.png", "huge.png", "pixmap.png")
    reasons = {name: rows[name]["error"] for name in bad_names}
    assert reasons["empty.png"] == "empty file"
    assert reasons["huge.png"].startswith("too large")
    assert reasons["text.png"] == "not an image"
    assert reasons["truncated.png"].startswith("undecodable")
    assert reasons["pixmap.png"] == "unsupported format PPM"
    for name in reasons:
        assert rows[name]["predicted_label"] is None and rows[name]["model_version"] is None
    assert rows["huge.png"]["content"] is None
    status = read_status(settings)
    assert status is not None and status["state"] == "stopped"
    assert status["model_version"] == "1" and status["rows_total"] == len(rows) and status["errors_total"] == 5


@pytest.mark.spark
def test_replayed_batch_changes_nothing_and_human_labels_survive(
    spark, score_settings: Settings, tmp_path: Path
) -> None:
    lake = Lake(score_settings)
    incoming = tmp_path / "incoming"
    paths = shapes(incoming, 6)
    batches = []
    run_scoring(score_settings, source=incoming, once=True, on_batch=batches.append)
    assert len(batches) == 1
    first = batches[0]

    # A human labels one image (the handlers' MERGE), then the same batch is replayed.
    target = f"file:{paths[0]}"
    human = pa.table(
        {
            "path": [target],
            "load_date": [first.table.column("load_date")[0].as_py()],
            "label": ["square"],
            "label_source": [LABEL_SOURCE_HUMAN],
        }
    )
    lake.merge(IMAGES, human, update={"label": "s.label", "label_source": "s.label_source"}, insert=False)
    version = lake.version(IMAGES)
    from streams.checkpoint.names import query_app_id
    from streams.scoring.sources import directory_source

    app_id = query_app_id(score_settings.checkpoint_uri(directory_source(incoming).checkpoint), "score")
    replay = lake.merge(
        IMAGES, first.table, update=SCORE_UPDATE, when=SCORE_UPDATE_WHEN, txn=Transaction(app_id, first.batch_id)
    )
    assert replay.skipped and lake.version(IMAGES) == version

    # Re-scoring the same path later (a new batch) updates predictions but not the human label.
    rescored = first.table.set_column(
        first.table.column_names.index("predicted_label"),
        "predicted_label",
        pa.array(["triangle"] * first.table.num_rows),
    )
    outcome = lake.merge(
        IMAGES, rescored, update=SCORE_UPDATE, when=SCORE_UPDATE_WHEN, txn=Transaction(app_id, first.batch_id + 1)
    )
    assert outcome.updated == len(paths) and outcome.inserted == 0
    row = rows_by_name(score_settings)[paths[0].name]
    assert (row["label"], row["label_source"], row["predicted_label"]) == ("square", LABEL_SOURCE_HUMAN, "triangle")
    assert Lake(score_settings).read(IMAGES).num_rows == len(paths)


@pytest.mark.spark
def test_a_finished_query_leaves_no_py4j_thread_behind(spark, score_settings: Settings, tmp_path: Path) -> None:
    # foreachBatch runs on a Python thread serving the query's own py4j connection: a long stream
    # starts a query per fresh checkpoint, and each used to leave that thread (and its memory).
    callback_threads: set[threading.Thread] = set()
    for run in range(2):
        shapes(tmp_path / f"incoming-{run}", 3, prefix=f"run{run}")
        run_scoring(
            score_settings,
            source=tmp_path / f"incoming-{run}",
            once=True,
            on_batch=lambda _result: callback_threads.add(threading.current_thread()),
        )
    assert len(callback_threads) == 2  # one per query
    for thread in callback_threads:
        thread.join(timeout=10)
        assert not thread.is_alive(), f"{thread.name} still serves a stopped query's connection"
    assert run_scoring(score_settings, source=tmp_path / "incoming-0", once=True).rows == 0  # the session still works


def _py4j_callback_threads() -> set[threading.Thread]:
    """The driver's threads serving a connection the JVM opened to call Python (py4j's ``run``)."""
    from py4j.clientserver import ClientServerConnection

    return {
        t
        for t in threading.enumerate()
        if isinstance(getattr(getattr(t, "_target", None), "__self__", None), ClientServerConnection)
    }


@pytest.mark.spark
def test_a_query_stopped_before_its_first_batch_leaves_no_py4j_thread_behind(
    spark, score_settings: Settings, tmp_path: Path
) -> None:
    # The listener's start event comes on the query's own thread, over a connection of its own; a
    # query that ends before any batch never calls foreachBatch, and that connection used to stay.
    (tmp_path / "empty").mkdir()
    assert run_scoring(score_settings, source=tmp_path / "empty", once=True).batches == 0  # the listener bus's own
    before = _py4j_callback_threads()
    for _ in range(3):
        assert run_scoring(score_settings, source=tmp_path / "empty", once=True).batches == 0
    wait_until(lambda: len(_py4j_callback_threads()) <= len(before), what="no more callback threads than before")


@pytest.mark.spark
def test_missing_champion_or_folder_is_a_clear_error(spark, settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ScoreError, match=r"does not exist|not an existing folder"):
        run_scoring(settings, source=tmp_path / "nope", once=True)
    (tmp_path / "here").mkdir()
    with pytest.raises(ScoreError, match="no champion"):
        run_scoring(settings, source=tmp_path / "here", once=True)


@pytest.mark.spark
def test_processed_files_are_archived_and_a_bad_archive_folder_is_refused(
    spark, score_settings: Settings, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    incoming = tmp_path / "incoming"
    settings = score_settings.model_copy(
        update={
            "score_clean_source": "archive",
            "score_archive_dir": str(archive),
            "score_max_bytes_per_trigger": 0,
            "score_max_files_per_trigger": 2,
        }
    )
    files = shapes(incoming, 6)
    contents = {p.name: p.read_bytes() for p in files}

    report = run_scoring(settings, source=incoming, once=True)

    assert report.batches == 3
    rows = rows_by_name(settings)
    assert {name: row["content"] for name, row in rows.items()} == contents  # every image kept in Delta
    # Spark moves a batch's files once the next batch starts: the last batch's stay until then.
    archived = {p.name for p in archive.rglob("*.png")}
    left = {p.name for p in incoming.rglob("*.png")}
    assert len(archived) == 4 and archived | left == set(contents) and not archived & left
    assert all(str(incoming).lstrip("/") in str(p) for p in archive.rglob("*.png"))  # original path kept

    inside = settings.model_copy(update={"score_archive_dir": str(incoming / "done")})
    with pytest.raises(ScoreError, match="outside the watched folder"):
        run_scoring(inside, source=incoming, once=True)
    with pytest.raises(ValueError, match="needs score_archive_dir"):
        Settings(state_dir=tmp_path / "other", score_clean_source="archive")


@pytest.mark.spark
def test_local_checkpoints_use_the_filesystem_manager(spark) -> None:
    from infra.spark import PLAIN_CHECKPOINT_MANAGER

    # Every stream test in this session (SIGKILL/restart, replay) then runs on this manager.
    assert spark.conf.get("spark.sql.streaming.checkpointFileManagerClass") == PLAIN_CHECKPOINT_MANAGER


@pytest.mark.spark
def test_the_file_status_cache_is_off_and_finished_work_is_kept_briefly(spark) -> None:
    # Each micro-batch's file index caches its files' statuses session-wide; with the cache on
    # (250 MB by default) the stream's heap grows with every file it scores.
    jvm = spark._jvm
    cache = jvm.org.apache.spark.sql.execution.datasources.FileStatusCache.getOrCreate(spark._jsparkSession)
    assert cache.getClass().getSimpleName() == "NoopCache$"
    conf = spark.sparkContext.getConf()
    assert int(conf.get("spark.ui.retainedJobs")) <= 100 and int(conf.get("spark.sql.ui.retainedExecutions")) <= 50


def _committed(versions: list[str | None], errors: list[str | None], outcome: MergeOutcome) -> Committed:
    table = pa.table({"path": [f"p{i}" for i in range(len(versions))], "model_version": versions, "error": errors})
    return Committed(
        batch_id=0, table=table, merged=table, staged=None, outcome=outcome, began=0.0, collected=0.0, committed_at=0.0
    )


def test_the_score_report_adds_each_batch_and_reports_every_figure() -> None:
    report = ScoreReport(source="directory:/in")
    report.count(
        _committed(["1", "1", None], [None, None, "empty file"], MergeOutcome(False, 3, 2, 1, seconds=0.5)), sent=1
    )
    report.count(_committed(["2"], [None], MergeOutcome(True, 3, seconds=0.25)), sent=0)
    report.skipped_batches += 1  # what the writer counts for a batch skipped before it ran

    assert (report.batches, report.rows, report.inserted, report.updated) == (2, 4, 2, 1)
    assert (report.errors, report.sent_to_labeling, report.skipped_batches) == (1, 1, 2)
    assert report.model_versions == {"1": 2, "2": 1} and report.merge_seconds_mean == 0.375
    figures = report.as_dict()
    assert set(figures) == {
        "source", "batches", "rows", "inserted", "updated", "errors", "skipped_batches", "sent_to_labeling",
        "checkpoints_retired", "model_versions", "merge_seconds_total", "storage_retries", "seconds", "stopped_by",
        "table_version", "merge_seconds_mean", "reread_files", "read_ahead_rows", "read_ahead_hits",
    }  # fmt: skip
    assert type(figures["model_versions"]) is dict and figures["stopped_by"] == "end of input"
    assert ScoreReport(source="x").as_dict()["merge_seconds_mean"] is None


@pytest.mark.spark
@pytest.mark.azurite
@pytest.mark.slow
def test_a_storage_outage_holds_the_batch_until_storage_is_back(spark, model_store: Path, tmp_path: Path) -> None:
    """Azurite stopped after the blobs were announced: no row is committed while it is down, the
    status says so, and once it is back every row has its bytes (nothing became a permanent error)."""
    from infra.local.stack import Azurite

    settings = with_model(scoring_settings(tmp_path, blob_port=free_port(), blob_retry_s=1.0), model_store)
    azurite = Azurite(settings)  # its own: the session's Azurite stays up for the other tests
    azurite.start()
    try:
        store = BlobStore(settings)
        images = {f"outage/img-{i}.png": solid_png(30 * i + 10) for i in range(5)}
        now = dt.datetime.now(dt.UTC).isoformat()
        for name, data in images.items():
            store.upload(settings.images_container, name, data, content_type="image/png")
        write_arrival_records(settings, [arrival_record(settings, store, n, d, at=now) for n, d in images.items()])
        azurite.stop()

        with scoring_in_background(settings, handle_signals=False) as result:
            wait_until(lambda: (read_status(settings) or {}).get("storage"), "reporting the outage")
            status = read_status(settings)
            assert (
                status["storage"].startswith("unreachable since") and "ServiceRequestError" in status["storage_error"]
            )
            assert not Lake(settings).exists(IMAGES) or Lake(settings).read(IMAGES).num_rows == 0
            azurite.start()
            wait_for_rows(settings, len(images), timeout=120)
            wait_until(lambda: (read_status(settings) or {}).get("storage") is None, "clearing the outage")
    finally:
        azurite.stop()
    rows = {r["path"]: r for r in Lake(settings).read(IMAGES).to_pylist()}
    assert len(rows) == len(images)
    for name, data in images.items():
        row = rows[store.url(settings.images_container, name)]
        assert row["content"] == data and row["error"] is None and row["predicted_label"] in CLASSES
    assert result["report"].storage_retries >= 1  # type: ignore[attr-defined]


@pytest.mark.spark
def test_a_run_once_pass_reports_unreachable_storage_and_commits_nothing(
    spark, model_store: Path, tmp_path: Path
) -> None:
    settings = with_model(scoring_settings(tmp_path, blob_port=free_port(), blob_retry_s=0.5), model_store)
    url = f"{account_url(settings)}{settings.images_container}/a.png"
    record = hand_written_record(url, settings.images_container, "a.png", at=dt.datetime.now(dt.UTC).isoformat())
    folder = arrivals_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "arrivals-hand-written.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(ScoreError, match="blob storage unreachable"):
        run_scoring(settings, once=True, handle_signals=False)
    assert Lake(settings).read(IMAGES).num_rows == 0


@pytest.mark.spark
def test_the_stream_refuses_links_and_bombs_unread_and_reports_the_files_its_glob_skips(
    spark, score_settings: Settings, tmp_path: Path
) -> None:
    incoming = tmp_path / "incoming"
    good = shapes(incoming, 2)
    upper = incoming / "UPPER.PNG"
    upper.write_bytes(good[0].read_bytes())
    (incoming / "link.png").symlink_to("/etc/passwd")
    (incoming / "bomb.png").write_bytes(claimed_png(11_000, 11_000))
    (incoming / "truncated.png").write_bytes(truncated_png())
    (incoming / "notes.txt").write_text("not an image name")

    run_scoring(score_settings, source=incoming, once=True)

    rows = rows_by_name(score_settings)
    assert set(rows) == {p.name for p in good} | {"UPPER.PNG", "link.png", "bomb.png", "truncated.png"}
    assert rows["UPPER.PNG"]["predicted_label"] in CLASSES and rows["UPPER.PNG"]["error"] is None
    assert rows["link.png"]["error"] == SYMLINK
    assert rows["bomb.png"]["error"] == "too many pixels: 11000x11000 = 121,000,000 pixels (limit 40,000,000)"
    assert rows["truncated.png"]["error"].startswith("undecodable")  # the model's decoder says so
    for name in ("link.png", "bomb.png", "truncated.png"):
        assert rows[name]["content"] is None and rows[name]["predicted_label"] is None, name
    status = read_status(score_settings)
    assert status is not None and status["skipped_files"] == 1


@pytest.mark.spark
def test_a_backlog_is_scored_in_batches_of_at_most_the_file_cap(
    spark, score_settings: Settings, tmp_path: Path
) -> None:
    # The byte budget alone put a backlog of 19,500 small files in one ~47 s batch.
    settings = score_settings.model_copy(update={"score_max_files_per_trigger": 3})
    incoming = tmp_path / "incoming"
    shapes(incoming, 7)
    sizes: list[int] = []

    report = run_scoring(settings, source=incoming, once=True, on_batch=lambda b: sizes.append(b.table.num_rows))

    assert sum(sizes) == 7 and len(sizes) >= 3 and max(sizes) <= 3
    assert report.rows == 7


@pytest.mark.spark
def test_a_byte_budget_bounds_the_batches_of_spark_s_file_source(
    spark, score_settings: Settings, tmp_path: Path
) -> None:
    incoming = tmp_path / "incoming"
    image = shapes(tmp_path / "one", 1)[0].read_bytes()
    incoming.mkdir()
    for i in range(7):
        (incoming / f"same-size-{i}.png").write_bytes(image)
    settings = score_settings.model_copy(update={"score_max_bytes_per_trigger": 3 * len(image)})
    sizes: list[int] = []

    report = run_scoring(settings, source=incoming, once=True, on_batch=lambda b: sizes.append(b.table.num_rows))

    assert report.rows == 7 and sum(sizes) == 7 and max(sizes) <= 3  # the budget, as a file count


def test_spark_s_file_source_turns_the_byte_budget_into_a_file_count(settings: Settings) -> None:
    mib = 1024 * 1024
    assert folder_limits(settings, 4 * mib) == {"maxFilesPerTrigger": "16"}  # 64 MiB of 4 MB photos
    assert folder_limits(settings, 3000) == {"maxFilesPerTrigger": "2000"}  # small files: the file cap
    assert folder_limits(settings, 100 * mib) == {"maxFilesPerTrigger": "1"}  # never none
    assert folder_limits(settings, None) == {"maxFilesPerTrigger": "2000"}  # an empty folder at start
    files_only = settings.model_copy(update={"score_max_bytes_per_trigger": 0})
    assert folder_limits(files_only, 4 * mib) == {"maxFilesPerTrigger": "2000"}


def test_auto_loader_gets_both_limits_and_spark_s_file_source_the_file_cap(settings: Settings) -> None:
    assert folder_limits(settings) == {"maxFilesPerTrigger": "2000"}  # Spark refuses both together
    auto = settings.model_copy(update={"score_source_format": "cloudFiles"})
    assert folder_limits(auto) == {
        "cloudFiles.maxFilesPerTrigger": "2000",
        "cloudFiles.maxBytesPerTrigger": str(64 * 1024 * 1024),
    }
    files_only = auto.model_copy(update={"score_max_bytes_per_trigger": 0})
    assert folder_limits(files_only) == {"cloudFiles.maxFilesPerTrigger": "2000"}


@pytest.mark.spark
def test_a_file_read_half_written_is_scored_once_it_changed(spark, score_settings: Settings, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    whole = shapes(incoming, 1)[0].read_bytes()
    slow = incoming / "slow.png"
    slow.write_bytes(whole[: len(whole) // 2])
    run_scoring(score_settings, source=incoming, once=True)
    assert rows_by_name(score_settings)["slow.png"]["error"] is not None

    slow.write_bytes(whole)  # the writer finished: Spark's file source will not list the path again
    report = run_scoring(score_settings, source=incoming, once=True)

    assert report.reread_files == 1
    row = rows_by_name(score_settings)["slow.png"]
    assert row["error"] is None and row["predicted_label"] in CLASSES and row["content"] == whole
    assert row["size_bytes"] == len(whole)
