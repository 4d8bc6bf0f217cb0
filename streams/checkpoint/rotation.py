"""Fresh checkpoints for a file stream whose scored files (images, arrival records) leave its folder.

Spark's file source remembers every file its query has seen (for ``maxFileAge``, a week by
default) in the driver's heap, and lists them all in the checkpoint's source log, which it
rewrites every 10 batches; neither can be purged (SPARK-17604). When scored files are archived
or deleted, the folder itself says what is left to score, so the stream can retire a full
checkpoint and start a new one: memory and log stay bounded by ``score_checkpoint_max_files``.

The one gap is the last committed batches: Spark moves a batch's files only once the next batch
starts, so what it has not moved yet is moved here, as Spark would have, before the checkpoint goes.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from infra.settings import Settings, local_path
from streams.checkpoint.source_log import logged_files
from streams.scoring.sources import Source

log = logging.getLogger(__name__)

RETIRED = ".retired-"


def remembers_every_file(settings: Settings, source: Source) -> bool:
    """True for Spark's file sources; Auto Loader keeps its own state (RocksDB) instead."""
    return not (source.kind == "directory" and settings.score_source_format == "cloudFiles")


def rotation_enabled(settings: Settings, source: Source, checkpoint: str) -> bool:
    """Whether ``source``'s checkpoint may be retired: its files (images or arrival records) leave a
    local folder once scored."""
    return (
        settings.score_checkpoint_max_files > 0
        and remembers_every_file(settings, source)
        and settings.score_clean_source != "off"
        and local_path(source.location) is not None
        and local_path(checkpoint) is not None
    )


def clean_scored_file(path: str, settings: Settings) -> bool:
    """Archive or delete one scored file the way Spark's ``cleanSource`` does; False if already gone."""
    file = local_path(path)
    if file is None or not file.exists():
        return False
    if settings.score_clean_source == "delete":
        file.unlink()
        return True
    # Spark keeps the file's full path under the archive folder.
    target = Path(settings.score_archive_dir).expanduser() / str(file.absolute()).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(file, target)
    return True


def retire_checkpoint(
    settings: Settings, checkpoint: str, committed_batch: int | None, files_seen: int
) -> dict[str, Any]:
    """Clean the files of the last committed batches, then remove the checkpoint.

    ``committed_batch`` is the last batch id the table recorded for this checkpoint's query.
    Batches after it were not written, so their files stay in the folder for the next query.
    Safe to repeat after a crash at any step: the checkpoint is renamed away before deletion.
    """
    began = time.perf_counter()
    cleaned = 0
    if committed_batch is not None:
        # Spark moves a batch's files in the background once the next batch starts, so the last
        # batches' files may still be here; every logged file is checked (a second per 100k here).
        cleaned = sum(clean_scored_file(path, settings) for path in logged_files(checkpoint, committed_batch))
    folder = local_path(checkpoint)
    assert folder is not None  # rotation_enabled checked it
    if folder.exists():
        retired = folder.with_name(f"{folder.name}{RETIRED}{time.time_ns()}")
        folder.rename(retired)
        shutil.rmtree(retired, ignore_errors=True)
    figures = {"files_seen": files_seen, "files_cleaned": cleaned, "seconds": round(time.perf_counter() - began, 3)}
    log.info("retired checkpoint %s: %s", checkpoint, figures)
    return figures


def remove_retired(checkpoint: str) -> None:
    """Delete what a crash during ``retire_checkpoint`` left renamed but undeleted."""
    folder = local_path(checkpoint)
    if folder is None or not folder.parent.is_dir():
        return
    for leftover in folder.parent.glob(f"{folder.name}{RETIRED}*"):
        shutil.rmtree(leftover, ignore_errors=True)
