"""Fresh checkpoints for a file stream whose scored files (images, arrival records) leave its folder.

Spark's file source remembers every file its query has seen (for ``maxFileAge``, a week by
default) in the driver's heap, and lists them all in the checkpoint's source log, which it
rewrites every 10 batches; neither can be purged (SPARK-17604). When scored files are archived
or deleted, the folder itself says what is left to score, so the stream can retire a full
checkpoint and start a new one: memory and log stay bounded by ``score_checkpoint_max_files``.

The one gap is the last committed batches: Spark moves a batch's files only once the next batch
starts, so what it has not moved yet is moved here, as Spark would have, before the checkpoint goes.
Folders and checkpoints may be local or remote (``abfss://``): every file operation goes through
``infra.filesystem``, Hadoop's filesystem for remote ones, as Spark's own ``cleanSource`` does.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit

from infra.filesystem import basename, files_for, join, parent
from infra.locations import local_path
from infra.settings import Settings
from streams.checkpoint.source_log import logged_files
from streams.scoring.sources import Source

log = logging.getLogger(__name__)

RETIRED = ".retired-"


def remembers_every_file(settings: Settings, source: Source) -> bool:
    """True for Spark's file sources; Auto Loader keeps its own state (RocksDB) instead."""
    return not (source.kind == "directory" and settings.score_source_format == "cloudFiles")


def rotation_enabled(settings: Settings, source: Source, checkpoint: str) -> bool:
    """Whether ``source``'s checkpoint may be retired: its files (images or arrival records) leave
    their folder once scored, local or remote."""
    return (
        settings.score_checkpoint_max_files > 0
        and remembers_every_file(settings, source)
        and settings.score_clean_source != "off"
    )


def archived_location(path: str, archive_dir: str) -> str:
    """Where Spark's ``cleanSource=archive`` puts ``path``: its full path (without scheme and
    authority) under the archive folder."""
    local = local_path(path)
    full = str(local.absolute()) if local is not None else urlsplit(path).path
    archive = local_path(archive_dir)
    root = str(archive.absolute()) if archive is not None else archive_dir
    return join(root, full.lstrip("/"))


def clean_scored_file(path: str, settings: Settings) -> bool:
    """Archive or delete one scored file the way Spark's ``cleanSource`` does; False if already gone."""
    files = files_for(path)
    if not files.exists(path):
        return False
    if settings.score_clean_source == "delete":
        files.delete(path)
    else:
        files.move(path, archived_location(path, settings.score_archive_dir))
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
    files = files_for(checkpoint)
    if files.exists(checkpoint):
        retired = f"{checkpoint.rstrip('/')}{RETIRED}{time.time_ns()}"
        files.move(checkpoint, retired)
        files.delete(retired)
    figures = {"files_seen": files_seen, "files_cleaned": cleaned, "seconds": round(time.perf_counter() - began, 3)}
    log.info("retired checkpoint %s: %s", checkpoint, figures)
    return figures


def remove_retired(checkpoint: str) -> None:
    """Delete what a crash during ``retire_checkpoint`` left renamed but undeleted."""
    files, folder = files_for(checkpoint), parent(checkpoint)
    if not files.is_dir(folder):
        return
    prefix = f"{basename(checkpoint)}{RETIRED}"
    for name in files.names(folder):
        if name.startswith(prefix):
            files.delete(join(folder, name))
