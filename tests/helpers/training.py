"""Training-test builders: rows written straight into the images table (no ingest stream)."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from infra.images import content_hash
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES, LABEL_SOURCE_PATH


def write_rows(settings: Settings, rows: Sequence[tuple[str, bytes, str | None, str | None]]) -> int:
    """MERGE ``(path, content, label, error)`` rows into ``images``; return the new Delta version."""
    now = dt.datetime.now(dt.UTC)
    table = pa.table(
        {
            "path": [r[0] for r in rows],
            "load_date": [now.date()] * len(rows),
            "content": [r[1] for r in rows],
            "content_hash": [content_hash(r[1]) for r in rows],
            "size_bytes": [len(r[1]) for r in rows],
            "ingested_at": [now] * len(rows),
            "label": [r[2] for r in rows],
            "label_source": [LABEL_SOURCE_PATH if r[2] else None for r in rows],
            "error": [r[3] for r in rows],
        }
    )
    outcome = Lake(settings).merge(IMAGES, table)
    assert outcome.version is not None
    return outcome.version


def digit_rows(digits_dir: Path, count: int, *, split: str = "train") -> list[tuple[str, bytes, str | None, None]]:
    """The first ``count`` digit PNGs of ``split`` as labeled rows (label = folder name)."""
    files = sorted((digits_dir / split).rglob("*.png"), key=lambda f: f.name)[:count]  # all classes mixed
    return [(f"file:{f}", f.read_bytes(), f.parent.name, None) for f in files]


def flat_copies(source: Path, target: Path) -> dict[str, str]:
    """Copy ``source``'s ``<label>/<name>`` images flat into ``target``; {file name: true label}."""
    target.mkdir(parents=True, exist_ok=True)
    truth = {}
    for image in sorted(source.rglob("*.png")):
        name = f"{image.parent.name}-{image.name}"
        shutil.copy(image, target / name)
        truth[name] = image.parent.name
    return truth
