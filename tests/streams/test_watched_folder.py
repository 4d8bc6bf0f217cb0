"""The driver's look at a watched folder (``streams.watched_folder``): skipped files, changed error files."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pyarrow as pa

from infra.images import IMAGE_GLOB
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import TS
from streams.watched_folder import WatchedFolder, skipped_files, typical_file_bytes


def test_skipped_files_are_those_the_glob_leaves_out_but_not_spark_s_hidden_names(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".partial").mkdir()
    for name in ("a.png", "UPPER.PNG", "notes.txt", "sub/b.JPG", "sub/readme.md", ".tmp-c.txt", "_SUCCESS"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".partial" / "d.txt").write_bytes(b"x")

    assert skipped_files(str(tmp_path), IMAGE_GLOB) == [str(tmp_path / "notes.txt"), str(tmp_path / "sub/readme.md")]
    assert skipped_files(f"file:{tmp_path}", "*.png") == sorted(
        str(tmp_path / n) for n in ("UPPER.PNG", "notes.txt", "sub/b.JPG", "sub/readme.md")
    )
    assert skipped_files("abfss://c@a.dfs.core.windows.net/in", IMAGE_GLOB) == []  # only local folders


def _rows(*rows: tuple[str, int, int, str | None]) -> pa.Table:
    """``images`` rows (path, size, modification time in ms, error)."""
    return pa.table(
        {
            "path": [r[0] for r in rows],
            "load_date": pa.array([dt.date(2026, 11, 30)] * len(rows), pa.date32()),
            "size_bytes": pa.array([r[1] for r in rows], pa.int64()),
            "modified_at": pa.array([r[2] * 1000 for r in rows], TS),
            "error": pa.array([r[3] for r in rows], pa.string()),
        }
    )


def test_an_error_row_is_due_again_once_its_file_changes_size_or_time(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    slow, broken, fixed = (folder / n for n in ("slow.png", "broken.png", "fixed.png"))
    for path in (slow, broken, fixed):
        path.write_bytes(b"half")
    os.utime(broken, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    watched = WatchedFolder(
        str(folder), IMAGE_GLOB, lake=Lake(settings), spark=None, mapper=lambda it: it, ddl="", update={}, when=""
    )
    stat = {p.name: (p.stat().st_size, p.stat().st_mtime_ns // 1_000_000) for p in (slow, broken, fixed)}
    watched.remember(
        _rows(
            (f"file:{slow}", *stat["slow.png"], "undecodable image: image file is truncated"),
            (f"file:{broken}", *stat["broken.png"], "not an image"),
            (f"file:{fixed}", *stat["fixed.png"], "not an image"),
            (f"file:{tmp_path / 'elsewhere.png'}", 1, 1, "not an image"),  # not under this folder
        )
    )
    watched.remember(_rows((f"file:{fixed}", *stat["fixed.png"], None)))  # read fine since
    assert watched.changed() == []

    slow.write_bytes(b"half and the rest")  # the writer finished
    os.utime(broken, ns=(1_700_000_001_000_000_000, 1_700_000_001_000_000_000))  # same bytes, touched
    fixed.write_bytes(b"changed again")
    assert watched.changed() == [f"file:{broken}", f"file:{slow}"]
    slow.unlink()
    assert watched.changed() == [f"file:{broken}"]  # a file gone is not read again


def test_the_typical_file_size_is_the_90th_percentile_of_the_folder_s_images(tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    for i in range(10):
        (folder / "sub" / f"{i}.PNG").write_bytes(b"x" * (100 * (i + 1)))
    (folder / "notes.txt").write_bytes(b"y" * 10**6)  # not an image: not counted
    (folder / ".hidden.png").write_bytes(b"z" * 10**6)  # Spark does not list it either
    assert typical_file_bytes(str(folder), IMAGE_GLOB) == 910
    assert typical_file_bytes(str(tmp_path / "empty"), IMAGE_GLOB) is None
    assert typical_file_bytes("abfss://c@a.dfs.core.windows.net/images", IMAGE_GLOB) is None
