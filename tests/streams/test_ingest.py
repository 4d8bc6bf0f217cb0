"""Batch ingest (``streams.ingest``): new files only, bad files recorded, labels from folders, human labels kept."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from infra.lake import Lake, MergeOutcome
from infra.settings import Settings
from infra.tables import IMAGES, LABEL_SOURCE_HUMAN
from streams.batch_writer import Committed
from streams.file_rows import NOT_REGULAR, SYMLINK
from streams.ingest import IngestError, IngestReport, ingest
from tests.helpers.images import claimed_png, solid_png, truncated_png
from tests.helpers.streams import rows_by_name

pytestmark = pytest.mark.spark
DIGITS = [str(i) for i in range(10)]


@pytest.fixture
def small_labeled(tmp_path: Path, digits_dir: Path) -> Path:
    """40 real digit images, 4 per class, in <label>/ folders."""
    out = tmp_path / "incoming"
    for path in [p for label in DIGITS for p in sorted((digits_dir / "train" / label).glob("*.png"))[:4]]:
        target = out / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return out


def test_second_run_adds_nothing_and_new_files_are_picked_up(spark, settings: Settings, small_labeled: Path) -> None:
    first = ingest(settings, str(small_labeled), labeled=True, classes=DIGITS)
    assert (first.files, first.inserted, first.errors) == (40, 40, 0)
    lake = Lake(settings)
    version = lake.version(IMAGES)

    second = ingest(settings, str(small_labeled), labeled=True, classes=DIGITS)
    assert (second.files, second.inserted, second.batches) == (0, 0, 0)
    assert lake.version(IMAGES) == version

    (small_labeled / "7" / "late.png").write_bytes(solid_png(10))
    third = ingest(settings, str(small_labeled), labeled=True, classes=DIGITS)
    assert third.inserted == 1
    table = lake.read(IMAGES, columns=["path", "label", "label_source", "content", "content_hash", "load_date"])
    assert table.num_rows == 41
    assert len(set(table.column("path").to_pylist())) == 41
    row = next(r for r in table.to_pylist() if r["path"].endswith("/7/late.png"))
    assert (row["label"], row["label_source"]) == ("7", "path")
    assert row["content"] == solid_png(10)
    assert row["load_date"] is not None


def test_bad_files_get_one_error_row_each_and_good_rows_all_land(
    spark, settings: Settings, small_labeled: Path
) -> None:
    (small_labeled / "3" / "truncated.png").write_bytes(truncated_png())
    (small_labeled / "3" / "empty.png").write_bytes(b"")
    (small_labeled / "3" / "notes.png").write_bytes(b"this is text, not a picture")
    (small_labeled / "3" / "odd name ü #1.png").write_bytes(solid_png(50))
    report = ingest(settings, str(small_labeled), labeled=True, classes=DIGITS)
    table = Lake(settings).read(IMAGES, columns=["path", "error", "label"]).to_pylist()
    assert len(table) == 44
    errors = {Path(r["path"]).name: r["error"] for r in table if r["error"]}
    assert set(errors) == {"truncated.png", "empty.png", "notes.png"}
    assert errors["empty.png"] == "empty file"
    assert errors["notes.png"] == "not an image"
    assert "truncated" in errors["truncated.png"] or "undecodable" in errors["truncated.png"]
    assert report.errors == 3
    assert any(r["path"].endswith("odd name ü #1.png") and r["label"] == "3" for r in table)


def test_unknown_label_folder_is_reported_not_guessed(spark, settings: Settings, small_labeled: Path) -> None:
    (small_labeled / "dog").mkdir()
    (small_labeled / "dog" / "rex.png").write_bytes(solid_png(200))
    report = ingest(settings, str(small_labeled), labeled=True, classes=DIGITS)
    assert report.unknown_labels == {"dog": 1}
    rex = next(r for r in Lake(settings).read(IMAGES).to_pylist() if r["path"].endswith("/dog/rex.png"))
    assert rex["label"] is None and rex["error"] is None


def test_reingest_keeps_a_human_label(spark, settings: Settings, small_labeled: Path) -> None:
    ingest(settings, str(small_labeled), labeled=True, classes=DIGITS)
    lake = Lake(settings)
    target = lake.read(IMAGES, columns=["path", "load_date"]).slice(0, 1)
    import pyarrow as pa

    human = pa.table(
        {
            "path": target.column("path"),
            "load_date": target.column("load_date"),
            "label": ["9"],
            "label_source": [LABEL_SOURCE_HUMAN],
        }
    )
    lake.merge(IMAGES, human, update={"label": "s.label", "label_source": "s.label_source"})
    # A fresh checkpoint re-reads every file with its folder label.
    shutil.rmtree(settings.checkpoint_root)
    ingest(settings, str(small_labeled), labeled=True, classes=DIGITS)
    path = target.column("path")[0].as_py()
    row = next(r for r in lake.read(IMAGES).to_pylist() if r["path"] == path)
    assert (row["label"], row["label_source"]) == ("9", LABEL_SOURCE_HUMAN)
    assert lake.read(IMAGES).num_rows == 40


def test_missing_source_is_a_clear_error(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="does not exist"):
        ingest(settings, str(tmp_path / "nowhere"))


def test_a_finished_ingest_leaves_no_py4j_thread_behind(spark, settings: Settings, small_labeled: Path) -> None:
    # The writer shared with the scoring stream closes the connection foreachBatch ran on.
    threads: set[threading.Thread] = set()
    ingest(settings, str(small_labeled), on_batch=lambda _report: threads.add(threading.current_thread()))
    assert len(threads) == 1
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive(), f"{thread.name} still serves a stopped query's connection"


def test_the_ingest_report_counts_files_and_unlabeled_folders() -> None:
    table = pa.table(
        {
            "path": ["file:/in/3/a.png", "file:/in/dog/b.png", "file:/in/dog/c.png", "file:/in/7/d.png"],
            "label": ["3", None, None, None],
            "error": [None, None, None, "empty file"],
        }
    )
    batch = Committed(
        batch_id=0,
        table=table,
        merged=table,
        staged=None,
        outcome=MergeOutcome(skipped=False, version=2, inserted=4),
        began=0.0,
        collected=0.0,
        committed_at=0.0,
    )
    report = IngestReport(source="/in")
    report.count(batch, labeled=True)
    report.count(batch, labeled=False)  # an unlabeled ingest reports no folders

    assert (report.files, report.batches, report.inserted, report.errors) == (8, 2, 8, 2)
    assert report.unknown_labels == {"dog": 2}
    figures = report.as_dict()
    assert figures["unknown_labels"] == {"dog": 2} and type(figures["unknown_labels"]) is dict
    assert set(figures) == {
        "source", "files", "inserted", "updated", "errors", "batches", "skipped_batches", "unknown_labels",
        "seconds", "table_version", "skipped_files", "reread_files",
    }  # fmt: skip


def test_upper_case_extensions_are_read_and_skipped_files_counted_and_logged(
    spark, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for name in ("lower.png", "UPPER.PNG", "Mixed.JpEg"):
        (incoming / name).write_bytes(solid_png(30))
    (incoming / "notes.txt").write_text("not an image name")
    (incoming / ".upload-in-progress.png").write_bytes(b"")  # hidden: Spark never lists it

    with caplog.at_level(logging.WARNING, logger="streams"):
        report = ingest(settings, str(incoming))

    assert {Path(r["path"]).name for r in Lake(settings).read(IMAGES).to_pylist()} == {
        "lower.png", "UPPER.PNG", "Mixed.JpEg"
    }  # fmt: skip
    assert report.skipped_files == 1
    skipped_logs = [r.getMessage() for r in caplog.records if "do not match the glob" in r.getMessage()]
    assert len(skipped_logs) == 1 and "notes.txt" in skipped_logs[0]


def test_links_special_files_bombs_and_over_size_files_are_refused_unread(
    spark, settings: Settings, tmp_path: Path
) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "good.png").write_bytes(solid_png(60))
    (incoming / "link.png").symlink_to("/etc/passwd")
    os.mkfifo(incoming / "pipe.png")
    (incoming / "bomb.png").write_bytes(claimed_png(10_000, 10_000))
    (incoming / "truncated.png").write_bytes(truncated_png())
    with (incoming / "huge.png").open("wb") as handle:
        handle.truncate(60_000_000)  # 60 MB (sparse)

    report = ingest(settings, str(incoming))

    rows = rows_by_name(settings)
    assert set(rows) == {"good.png", "link.png", "pipe.png", "bomb.png", "truncated.png", "huge.png"}
    assert rows["good.png"]["error"] is None and rows["good.png"]["content"] == solid_png(60)
    assert rows["link.png"]["error"] == SYMLINK
    assert rows["pipe.png"]["error"] == NOT_REGULAR
    assert rows["bomb.png"]["error"] == "too many pixels: 10000x10000 = 100,000,000 pixels (limit 40,000,000)"
    assert rows["huge.png"]["error"] == "too large: 60000000 bytes (limit 10485760)"
    assert rows["truncated.png"]["error"].startswith("undecodable")
    for name in ("link.png", "pipe.png", "bomb.png", "truncated.png", "huge.png"):
        assert rows[name]["content"] is None, name  # quarantined: the row and its reason
    assert report.errors == 5


def test_a_file_read_half_written_is_read_again_once_it_changed(spark, settings: Settings, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    whole = solid_png(90, size=48)
    slow = incoming / "slow.png"
    slow.write_bytes(whole[: len(whole) // 2])
    (incoming / "other.png").write_bytes(solid_png(20))
    first = ingest(settings, str(incoming))
    assert first.errors == 1
    assert rows_by_name(settings)["slow.png"]["error"].startswith("undecodable")

    slow.write_bytes(whole)  # the writer finished: same path, new size and modification time
    second = ingest(settings, str(incoming))

    assert (second.reread_files, second.updated, second.files) == (1, 1, 0)
    row = rows_by_name(settings)["slow.png"]
    assert row["error"] is None and row["content"] == whole and row["size_bytes"] == len(whole)
    assert Lake(settings).read(IMAGES).num_rows == 2
    assert ingest(settings, str(incoming)).reread_files == 0  # read once, not on every run


def test_an_error_row_that_stays_an_error_follows_its_file_and_is_not_read_again_and_again(
    spark, settings: Settings, tmp_path: Path
) -> None:
    # Nothing is read of an over-size file, so old and new row have no content hash: only the size
    # and modification time in the MERGE condition let the error row follow the file.
    settings = settings.model_copy(update={"max_image_bytes": 1000})
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    big = incoming / "big.png"
    big.write_bytes(b"\0" * 2000)
    ingest(settings, str(incoming))
    big.write_bytes(b"\0" * 3000)

    assert ingest(settings, str(incoming)).reread_files == 1
    row = rows_by_name(settings)["big.png"]
    assert (row["size_bytes"], row["error"]) == (3000, "too large: 3000 bytes (limit 1000)")
    assert ingest(settings, str(incoming)).reread_files == 0
