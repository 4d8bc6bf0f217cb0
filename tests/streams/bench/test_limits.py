"""``streams.bench.limits``: R3's processes fail the benchmark at once when one cannot score."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings import Settings
from streams.bench.limits import read_decode_forward
from streams.bench.score import _write_shapes


def test_r3_fails_at_once_with_the_exit_codes_when_its_processes_cannot_load_the_model(tmp_path: Path) -> None:
    files = _write_shapes(tmp_path / "images", 8, seed=0)
    no_champion = Settings(state_dir=tmp_path / "state")  # an empty registry: every process's load fails

    with pytest.raises(RuntimeError, match=r"R3 \(read \+ decode \+ forward\) failed: exit codes \[1(, 1)?\]"):
        read_decode_forward(no_champion, files, processes=2)
