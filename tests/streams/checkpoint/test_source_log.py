"""Reading which files Spark assigned to a batch from the file source's log."""

from __future__ import annotations

import json
from pathlib import Path

from streams.checkpoint.source_log import listed_files, logged_files, seen_file_count


def _entry(path: str, batch_id: int, timestamp: int = 1_000) -> str:
    return json.dumps({"path": path, "timestamp": timestamp, "batchId": batch_id}, separators=(",", ":"))


def test_a_compact_log_yields_only_the_batchs_own_files(tmp_path: Path) -> None:
    folder = tmp_path / "sources" / "0"
    folder.mkdir(parents=True)
    lines = ["v1"] + [_entry(f"file:///in/b{b}-{i}.png", b) for b in (9, 10, 19, 99, 199) for i in range(3)]
    (folder / "199.compact").write_text("\n".join(lines) + "\n")
    (folder / "9").write_text("v1\n" + _entry("file:///in/odd%20name.png", 9, 7) + "\n")

    assert listed_files(str(tmp_path), 199) == {f"file:/in/b199-{i}.png": 1_000 for i in range(3)}
    # The plain log of batch 9 wins over the compact file; "batchId":9 must not match 99 or 199.
    assert listed_files(f"file:{tmp_path}", 9) == {"file:/in/odd name.png": 7}
    assert listed_files(str(tmp_path), 42) == {}


def test_the_current_log_is_the_latest_compact_file_and_the_batches_after_it(tmp_path: Path) -> None:
    folder = tmp_path / "sources" / "0"
    folder.mkdir(parents=True)
    assert seen_file_count(str(tmp_path)) == 0
    old = ["v1"] + [_entry(f"file:///in/old-{i}.png", 8) for i in range(5)]
    (folder / "9.compact").write_text("\n".join(old) + "\n")  # superseded by 19.compact
    compact = ["v1"] + [_entry(f"file:///in/b{b}.png", b) for b in range(20)]
    (folder / "19.compact").write_text("\n".join(compact) + "\n")
    for batch in (20, 21):
        (folder / str(batch)).write_text(f"v1\n{_entry(f'file:///in/b{batch}.png', batch)}\n")

    assert seen_file_count(f"file:{tmp_path}") == 22
    assert list(logged_files(str(tmp_path), 20)) == [f"file:/in/b{b}.png" for b in range(21)]
