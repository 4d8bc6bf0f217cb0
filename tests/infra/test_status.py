"""The status snapshot reads; it never creates state (a first GET /api/status created an MLflow database)."""

from __future__ import annotations

from pathlib import Path

from infra.settings import Settings
from infra.status import snapshot


def test_snapshot_of_a_fresh_state_dir_creates_nothing(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    snap = snapshot(settings)
    assert snap["models"] is None and snap["images"] is None and snap["decisions"] == []
    assert not (tmp_path / "state").exists(), sorted(str(p) for p in tmp_path.rglob("*"))
