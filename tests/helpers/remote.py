"""A remote-like filesystem for tests: Hadoop's ``viewfs://`` mounted over a local folder.

A ``viewfs://`` URI is not a local path to lakesight (``infra.locations.local_path`` gives None), so
everything that handles cloud checkpoints (``abfss://``) takes its remote path: Hadoop's
FileSystem through the SparkSession's JVM, the very API Spark uses for the stream's own files.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any


def viewfs_root(spark: Any, folder: Path) -> str:
    """A new ``viewfs://<table>/root`` URI served by Hadoop from ``folder`` (a fresh mount table each
    call: Hadoop caches a filesystem per scheme and authority)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = f"t{uuid.uuid4().hex[:12]}"
    spark._jsc.hadoopConfiguration().set(f"fs.viewfs.mounttable.{table}.link./root", folder.absolute().as_uri())
    return f"viewfs://{table}/root"
