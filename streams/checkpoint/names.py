"""Stable identities for streaming queries, used to make foreachBatch writes exactly-once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def checkpoint_name(kind: str, source: str) -> str:
    """A readable, stable checkpoint folder name for ``kind`` over ``source``."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    return f"{kind}-{digest}"


def query_app_id(checkpoint: str, kind: str) -> str:
    """``kind:<query id>``: the id Spark keeps in the checkpoint across restarts.

    A deleted checkpoint gets a new query id, so its batch ids (which restart at 0) are
    never mistaken for batches already committed by the old one.
    """
    metadata = Path(checkpoint.removeprefix("file:")) / "metadata"
    try:
        query_id = json.loads(metadata.read_text())["id"]
    except (OSError, ValueError, KeyError):
        query_id = hashlib.sha1(checkpoint.encode()).hexdigest()
    return f"{kind}:{query_id}"
