"""What a file-stream micro-batch was given, read from the query's checkpoint.

Spark drops zero-byte files (and files that vanished after listing) from the batch's
DataFrame without a word; comparing with the source log finds them so they still get a row.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote


def normalise_path(path: str) -> str:
    """One spelling per local file: ``file:/abs/path`` with no percent-escapes."""
    path = unquote(path)
    if path.startswith("file://"):
        return "file:" + path[len("file://") :]
    return path


def listed_files(checkpoint: str, batch_id: int, source_index: int = 0) -> dict[str, int]:
    """``{path: modification time in ms}`` of the files Spark assigned to ``batch_id``."""
    folder = Path(checkpoint.removeprefix("file:")) / "sources" / str(source_index)
    for candidate in (folder / str(batch_id), folder / f"{batch_id}.compact"):
        if candidate.exists():
            break
    else:
        return {}
    # Every tenth batch's log is Spark's compact file, which lists every file the query ever
    # saw (15 MB after 120,000 files): a substring test (Spark writes compact JSON) skips the
    # other batches' lines before any parsing.
    marker = f'"batchId":{batch_id}'
    files: dict[str, int] = {}
    with candidate.open() as handle:
        for line in handle:
            if marker not in line:
                continue
            entry = json.loads(line)
            if entry.get("batchId") == batch_id:
                files[normalise_path(entry["path"])] = int(entry["timestamp"])
    return files
