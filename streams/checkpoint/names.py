"""Stable identities for streaming queries, used to make foreachBatch writes exactly-once."""

from __future__ import annotations

import hashlib
import json

from infra.errors import LakesightError
from infra.filesystem import join, read_text


class CheckpointError(LakesightError, RuntimeError):
    """A checkpoint does not say which query wrote it, so no batch of it can be written exactly once."""


def checkpoint_name(kind: str, source: str) -> str:
    """A readable, stable checkpoint folder name for ``kind`` over ``source``."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    return f"{kind}-{digest}"


def query_app_id(checkpoint: str, kind: str) -> str:
    """``kind:<query id>``: the id Spark keeps in the checkpoint's ``metadata`` across restarts.

    A deleted checkpoint gets a new query id, so its batch ids (which restart at 0) are never
    mistaken for batches already committed by the old one. The file is read wherever the
    checkpoint lives (``infra.filesystem``: the local disk, or Hadoop's filesystem for
    ``abfss://``); an id made up when it cannot be read would be the same for every new
    checkpoint, and the new query's batches would be skipped as committed, so that is an error.
    """
    metadata = join(checkpoint, "metadata")
    try:
        return f"{kind}:{json.loads(read_text(metadata))['id']}"
    except LakesightError:
        raise
    except Exception as exc:  # OSError locally; py4j's errors from Hadoop
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{exc}".splitlines()[0][:200]
        raise CheckpointError(
            f"cannot read the query id from {metadata} ({detail}): no batch is written without it"
        ) from exc
