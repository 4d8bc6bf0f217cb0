"""What a file-stream micro-batch was given, read from the query's checkpoint.

Spark drops zero-byte files (and files that vanished after listing) from the batch's
DataFrame without a word; comparing with the source log finds them so they still get a row.
The log is read wherever the checkpoint lives (``infra.filesystem``: local disk or ``abfss://``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import unquote

from infra.filesystem import Files, files_for, join


def normalise_path(path: str) -> str:
    """One spelling per local file: ``file:/abs/path`` with no percent-escapes."""
    path = unquote(path)
    if path.startswith("file://"):
        return "file:" + path[len("file://") :]
    return path


def _source_log(checkpoint: str, source_index: int = 0) -> str:
    return join(join(checkpoint, "sources"), str(source_index))


def listed_files(checkpoint: str, batch_id: int, source_index: int = 0) -> dict[str, int]:
    """``{path: modification time in ms}`` of the files Spark assigned to ``batch_id``."""
    folder = _source_log(checkpoint, source_index)
    files = files_for(folder)
    for candidate in (join(folder, str(batch_id)), join(folder, f"{batch_id}.compact")):
        if files.exists(candidate):
            break
    else:
        return {}
    # Every tenth batch's log is Spark's compact file, which lists every file the query ever
    # saw (15 MB after 120,000 files): a substring test (Spark writes compact JSON) skips the
    # other batches' lines before any parsing.
    marker = f'"batchId":{batch_id}'.encode()
    listed: dict[str, int] = {}
    for line in files.lines(candidate):
        if marker not in line:
            continue
        entry = json.loads(line)
        if entry.get("batchId") == batch_id:
            listed[normalise_path(entry["path"])] = int(entry["timestamp"])
    return listed


def _current_logs(checkpoint: str) -> tuple[Files, list[str]]:
    """The latest compact file (every file up to its batch) and the batch logs after it, in order."""
    folder = _source_log(checkpoint)
    files = files_for(folder)
    batches = {int(name.removesuffix(".compact")): name for name in files.names(folder) if _is_log(name)}
    start = max((b for b, name in batches.items() if name.endswith(".compact")), default=-1)
    return files, [join(folder, batches[b]) for b in sorted(batches) if b >= start]


def _is_log(name: str) -> bool:
    return name.removesuffix(".compact").isdigit()


def _entries(checkpoint: str) -> Iterator[bytes]:
    files, logs = _current_logs(checkpoint)
    for log in logs:
        yield from (line for line in files.lines(log) if line.startswith(b"{"))  # the first line is a version


def seen_file_count(checkpoint: str) -> int:
    """How many files the query's file source has recorded (0 for a new checkpoint)."""
    return sum(1 for _ in _entries(checkpoint))


def logged_files(checkpoint: str, up_to_batch: int) -> Iterator[str]:
    """Every file the source log assigned to batches up to ``up_to_batch``, one at a time (a log
    names 50,000 files at a rotation: a list of them all would be ~10 MB of short-lived strings)."""
    for line in _entries(checkpoint):
        entry = json.loads(line)
        if entry.get("batchId", up_to_batch + 1) <= up_to_batch:
            yield normalise_path(entry["path"])
