"""File rows (``streams.file_rows``): local files read without following links, refused bytes not kept,
and a file gone between Spark's listing and its read recorded while the stream goes on."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from infra.images import IMAGE_GLOB
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES
from streams.batch_writer import BatchTotals, ExactlyOnceWriter
from streams.checkpoint.source_log import listed_files
from streams.file_rows import (
    ARRIVAL_DDL,
    NOT_REGULAR,
    SYMLINK,
    VANISHED,
    FileChecks,
    arrival_rows,
    image_file_stream,
    read_local_file,
)
from tests.helpers.images import claimed_png, solid_png, truncated_png
from tests.helpers.streams import RecordingSteps

CHECKS = FileChecks(max_bytes=10 * 1024 * 1024)


def test_only_regular_files_within_the_size_limit_are_read(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(solid_png())
    assert read_local_file(f"file:{good}", CHECKS.max_bytes) == (solid_png(), None)

    link = tmp_path / "link.png"
    link.symlink_to("/etc/passwd")
    assert read_local_file(f"file:{link}", CHECKS.max_bytes) == (None, SYMLINK)

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opened blocking, this read would wait for a writer forever
    assert read_local_file(f"file:{fifo}", CHECKS.max_bytes) == (None, NOT_REGULAR)
    assert read_local_file(f"file:{tmp_path}", CHECKS.max_bytes) == (None, NOT_REGULAR)

    huge = tmp_path / "huge.png"
    with huge.open("wb") as handle:
        handle.truncate(60_000_000)  # sparse: refused from its size, never read
    assert read_local_file(f"file:{huge}", CHECKS.max_bytes) == (None, "too large: 60000000 bytes (limit 10485760)")

    assert read_local_file(f"file:{tmp_path / 'gone.png'}", CHECKS.max_bytes) == (None, VANISHED)


def _listed(*paths: Path) -> pd.DataFrame:
    """File rows as Spark lists a local folder: no content column."""
    return pd.DataFrame(
        {
            "path": [f"file:{p}" for p in paths],
            "modificationTime": [pd.Timestamp("2026-11-30T10:00:00Z")] * len(paths),
            "length": [p.lstat().st_size for p in paths],
        }
    )


def test_refused_files_keep_their_row_and_reason_but_not_their_bytes(tmp_path: Path) -> None:
    (tmp_path / "good.png").write_bytes(solid_png(9))
    (tmp_path / "broken.png").write_bytes(truncated_png())
    (tmp_path / "bomb.png").write_bytes(claimed_png(10_000, 10_000))
    (tmp_path / "link.png").symlink_to("/etc/passwd")
    names = ("good.png", "broken.png", "bomb.png", "link.png")
    frame = _listed(*(tmp_path / name for name in names))

    rows = next(arrival_rows([frame], checks=CHECKS)).set_index(pd.Index(names))
    assert rows.loc["good.png", "content"] == solid_png(9) and rows.loc["good.png", "error"] is None
    assert rows.loc["broken.png", "error"].startswith("undecodable")
    assert rows.loc["bomb.png", "error"] == "too many pixels: 10000x10000 = 100,000,000 pixels (limit 40,000,000)"
    assert rows.loc["link.png", "error"] == SYMLINK
    for name in ("broken.png", "bomb.png", "link.png"):
        assert rows.loc[name, "content"] is None, name
    assert rows.loc["broken.png", "content_hash"] is not None  # a changed file can still be told apart
    assert rows.loc["link.png", "content_hash"] is None  # nothing was read

    kept = next(arrival_rows([frame], checks=FileChecks(CHECKS.max_bytes, keep_refused_bytes=True)))
    kept = kept.set_index(pd.Index(names))
    assert kept.loc["broken.png", "content"] == truncated_png()
    assert kept.loc["link.png", "content"] is None  # a link is never read, whatever the setting


@pytest.mark.spark
def test_a_file_gone_between_listing_and_reading_gets_a_row_and_the_stream_goes_on(
    spark, settings: Settings, tmp_path: Path
) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for index in range(4):
        (incoming / f"img-{index}.png").write_bytes(solid_png(10 * index + 5))
    lake = Lake(settings)
    lake.images()
    checkpoint = settings.checkpoint_uri("vanishing")
    checks = FileChecks.of(settings)
    reader = spark.readStream.format("binaryFile").option("maxFilesPerTrigger", 2)
    rows = image_file_stream(reader, str(incoming), IMAGE_GLOB).mapInPandas(
        lambda it: arrival_rows(it, checks=checks), ARRIVAL_DDL
    )
    totals = BatchTotals()
    writer = ExactlyOnceWriter(
        lake, RecordingSteps(totals.add, unread_files=True), checkpoint=checkpoint, totals=totals
    )
    deleted: list[str] = []

    def delete_one_then_write(batch: object, batch_id: int) -> None:
        if batch_id == 0:  # Spark has listed the batch's files; it reads them when the writer collects
            deleted.append(sorted(listed_files(checkpoint, 0))[0])
            Path(deleted[0].removeprefix("file:")).unlink()
        writer(batch, batch_id)

    query = (
        rows.writeStream.foreachBatch(delete_one_then_write)
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .start()
    )
    try:
        query.awaitTermination()  # raised FAILED_READ_FILE.FILE_NOT_EXIST before ignoreMissingFiles
    finally:
        writer.release(query)

    table = {r["path"]: r for r in lake.read(IMAGES).to_pylist()}
    assert len(table) == 4 and totals.batches == 2
    gone = table.pop(deleted[0])
    assert gone["error"] == VANISHED and gone["content"] is None
    for row in table.values():
        assert row["error"] is None and row["content"] == Path(row["path"].removeprefix("file:")).read_bytes()
