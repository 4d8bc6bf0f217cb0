"""Fresh checkpoints for a folder stream that archives its files: bounded, and nothing scored twice."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest

from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES
from streams.checkpoint.rotation import RETIRED, clean_scored_file, rotation_enabled
from streams.checkpoint.source_log import listed_files, seen_file_count
from streams.scoring.query import run_scoring
from streams.scoring.sources import arrivals_source, directory_source
from tests.helpers.images import solid_png
from tests.helpers.streams import arrival_record, rows_by_name, shapes, wait_for_rows

pytestmark = pytest.mark.spark


def _archiving(settings: Settings, tmp_path: Path, **fields: object) -> Settings:
    return settings.model_copy(
        update={
            "score_clean_source": "archive",
            "score_archive_dir": str(tmp_path / "archive"),
            "score_max_bytes_per_trigger": 0,
            "score_max_files_per_trigger": 2,
            **fields,
        }
    )


def _checkpoint(settings: Settings, folder: Path) -> str:
    return settings.checkpoint_uri(directory_source(folder).checkpoint)


def _archived(tmp_path: Path) -> set[str]:
    return {p.name for p in (tmp_path / "archive").rglob("*.png")}


def test_which_sources_rotate(score_settings: Settings, tmp_path: Path) -> None:
    folder = directory_source(tmp_path)
    archiving = _archiving(score_settings, tmp_path)
    checkpoint = _checkpoint(archiving, tmp_path)
    assert rotation_enabled(archiving, folder, checkpoint)
    assert not rotation_enabled(archiving.model_copy(update={"score_checkpoint_max_files": 0}), folder, checkpoint)
    assert not rotation_enabled(score_settings, folder, checkpoint)  # clean source off: the folder keeps them
    assert rotation_enabled(archiving, arrivals_source(archiving), checkpoint)  # record files leave too
    auto_loader = archiving.model_copy(update={"score_source_format": "cloudFiles"})
    assert not rotation_enabled(auto_loader, folder, checkpoint)  # keeps its own state
    assert rotation_enabled(archiving, folder, "abfss://c@acct.dfs.core.windows.net/cp")  # remote: through Hadoop
    assert seen_file_count(checkpoint) == 0


def test_a_full_checkpoint_is_retired_before_the_next_run(spark, score_settings: Settings, tmp_path: Path) -> None:
    settings = _archiving(score_settings, tmp_path, score_checkpoint_max_files=4)
    incoming = tmp_path / "incoming"
    first = shapes(incoming, 6, seed=1, prefix="first")
    checkpoint = _checkpoint(settings, incoming)

    report = run_scoring(settings, source=incoming, once=True)
    assert report.batches == 3 and report.checkpoints_retired == 0
    assert seen_file_count(checkpoint) == 6
    left = {p.name for p in incoming.rglob("*.png")}
    assert len(left) == 2  # the last batch's files: Spark moves them when the next batch starts
    scored_at = {name: row["scored_at"] for name, row in rows_by_name(settings).items()}

    second = shapes(incoming / "later", 3, seed=2, prefix="second")
    again = run_scoring(settings, source=incoming, once=True)

    assert again.checkpoints_retired == 1
    assert again.rows == len(second) and again.updated == 0  # the retired query's last batch was not rescored
    rows = rows_by_name(settings)
    assert set(rows) == {p.name for p in first + second}
    assert all(rows[name]["scored_at"] == when for name, when in scored_at.items())
    assert left <= _archived(tmp_path)  # moved by the rotation, under their full path like Spark's
    assert all(str(incoming).lstrip("/") in str(p) for p in (tmp_path / "archive").rglob("first-*.png"))
    assert seen_file_count(checkpoint) == len(second)  # the new checkpoint knows only the new files
    assert not list(Path(checkpoint).parent.glob(f"*{RETIRED}*"))
    assert Lake(settings).read(IMAGES).num_rows == len(first) + len(second)


def test_the_running_stream_rotates_and_scores_every_file_once(spark, score_settings: Settings, tmp_path: Path) -> None:
    settings = _archiving(score_settings, tmp_path, score_checkpoint_max_files=4)
    incoming = tmp_path / "incoming"
    files = shapes(incoming, 10, seed=3)
    queries: list[str] = []

    stop = threading.Event()
    result: dict[str, object] = {}
    worker = threading.Thread(
        target=lambda: result.setdefault(
            "report",
            run_scoring(settings, source=incoming, stop_event=stop, on_start=lambda q: queries.append(str(q.id))),
        ),
        daemon=True,
    )
    worker.start()
    try:
        wait_for_rows(settings, len(files), timeout=120)
    finally:
        stop.set()
        worker.join(60)
    assert not worker.is_alive()
    report = result["report"]
    assert report.rows == len(files) and report.updated == 0  # type: ignore[attr-defined]
    # At least one rotation: how many depends on how many batches run before the stream notices the
    # limit (it checks every 0.5 s), and the stop can come before a due rotation (seen in CI: 1 of 2).
    assert report.checkpoints_retired >= 1 and len(set(queries)) == report.checkpoints_retired + 1  # type: ignore[attr-defined]
    assert set(rows_by_name(settings)) == {p.name for p in files}
    assert seen_file_count(_checkpoint(settings, incoming)) <= 4 + 2


def test_files_already_moved_by_an_interrupted_rotation_do_not_stop_spark(
    spark, score_settings: Settings, tmp_path: Path
) -> None:
    settings = _archiving(score_settings, tmp_path, score_checkpoint_max_files=0)
    incoming = tmp_path / "incoming"
    first = shapes(incoming, 4, seed=4, prefix="first")
    checkpoint = _checkpoint(settings, incoming)
    run_scoring(settings, source=incoming, once=True)
    # A crash after the rotation moved the last batch's files but before the checkpoint went:
    # the old query resumes, and Spark's own clean-up finds those files gone.
    assert sum(clean_scored_file(path, settings) for path in listed_files(checkpoint, 1)) == 2
    second = shapes(incoming / "later", 2, seed=5, prefix="second")

    report = run_scoring(settings, source=incoming, once=True)

    assert report.rows == len(second)
    assert set(rows_by_name(settings)) == {p.name for p in first + second}
    assert {p.name for p in first} <= _archived(tmp_path)


@pytest.mark.azurite
def test_arrival_records_are_deleted_and_their_checkpoint_retired(spark, score_blob_settings: Settings) -> None:
    from infra.arrivals import arrivals_dir, write_arrival_records
    from infra.blob import BlobStore

    settings = score_blob_settings.model_copy(
        update={"score_clean_source": "delete", "score_checkpoint_max_files": 2, "score_max_files_per_trigger": 1}
    )
    store = BlobStore(settings)
    now = dt.datetime.now(dt.UTC).isoformat()

    def arrive(names: list[str]) -> None:
        payloads = {name: solid_png(len(name) * 7) for name in names}
        for name, data in payloads.items():
            store.upload(settings.images_container, name, data, content_type="image/png")
        write_arrival_records(
            settings, [arrival_record(settings, store, n, data, at=now) for n, data in payloads.items()]
        )

    arrive(["a/1.png", "a/2.png"])
    arrive(["a/3.png"])
    first = run_scoring(settings, once=True)
    assert first.rows == 3 and first.checkpoints_retired == 0
    arrive(["b/4.png"])

    second = run_scoring(settings, once=True)

    assert second.checkpoints_retired == 1 and second.rows == 1 and second.updated == 0
    assert Lake(settings).read(IMAGES).num_rows == 4
    assert not list(arrivals_dir(settings).glob("*.jsonl"))[1:]  # at most the last batch's record file is left
    assert seen_file_count(settings.checkpoint_uri(arrivals_source(settings).checkpoint)) == 1
