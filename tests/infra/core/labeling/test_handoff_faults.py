"""A window's close killed between any two of its writes: the replay leaves the ledger, the
candidates, their outcomes and the ``images`` marks consistent, and sends nothing twice.

Each hand-off runs in its own process (``tests.helpers.hand_off_process``); the fault is a lake
folder that process cannot write, so it dies at that write with the earlier ones committed, as a
driver killed there would.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES, LABELING_CANDIDATES, LABELING_REQUESTS
from tests.helpers.hand_off_process import read_only, run_hand_off
from tests.infra.core.labeling.test_handoff import at, batch, paced, spread

pytestmark = pytest.mark.azurite
__all__ = ["paced"]  # the fixture, shared with test_handoff


def lake_under(settings: Settings, folder: Path) -> Settings:
    return settings.model_copy(update={"state_dir": folder, "lake_root": str(folder / "lake")})


def handed(settings: Settings, table, batch_id: int, when: dt.datetime) -> None:
    done = run_hand_off(settings, table, batch_id=batch_id, now=when)
    assert done.returncode == 0, done.stderr[-3000:]


def record(settings: Settings) -> dict[str, Any]:
    """What the lake says was sent and decided."""
    lake = Lake(settings)
    ledger = lake.read(LABELING_REQUESTS, columns=["path"]).column("path").to_pylist()
    candidates = lake.read(LABELING_CANDIDATES, columns=["path", "outcome"]).to_pylist()
    images = lake.read(IMAGES, columns=["path", "sent_to_labeling_at"]).to_pylist()
    return {
        "ledger": sorted(ledger),
        "ledger_rows": len(ledger),
        "outcomes": {r["path"]: r["outcome"] for r in candidates},
        "candidate_rows": len(candidates),
        "marked": sorted(r["path"] for r in images if r["sent_to_labeling_at"] is not None),
    }


def windowed_close(settings: Settings, fault: Path | None) -> dict[str, Any]:
    """Two unsure images queued at 02:00; the 03:01 batch (nothing unsure) closes their window and
    sends both, with ``fault`` unwritable during that close; then the close is replayed."""
    handed(settings, batch([("a", 0.6, spread(0)), ("b", 0.7, spread(1))], when=at(2)), 0, at(2))
    closing = batch([("c", 0.999, spread(2))], when=at(3, 1))
    if fault is not None:
        with read_only(fault):
            failed = run_hand_off(settings, closing, batch_id=1, now=at(3, 1))
        assert failed.returncode != 0, "the fault did not stop the close"
    handed(settings, closing, 1, at(3, 5))
    return record(settings)


WINDOW_FAULTS = {
    "ledger": lambda lake: lake,  # the ledger cannot be created: the blobs are up, nothing recorded
    "outcomes": lambda lake: lake / "labeling_candidates" / "_delta_log",  # after the ledger commit
    "images marks": lambda lake: lake / "images" / "_delta_log",  # after the outcomes
}


@pytest.mark.parametrize("fault", sorted(WINDOW_FAULTS))
def test_a_close_killed_between_writes_is_finished_by_its_replay(paced: Settings, tmp_path: Path, fault: str) -> None:
    clean = windowed_close(lake_under(paced, tmp_path / "clean"), None)
    assert clean["ledger"] == ["file:/in/a.png", "file:/in/b.png"]
    assert clean["outcomes"] == {"file:/in/a.png": "sent", "file:/in/b.png": "sent"}
    assert clean["marked"] == clean["ledger"]
    killed = lake_under(paced, tmp_path / "killed")
    assert windowed_close(killed, WINDOW_FAULTS[fault](Path(killed.lake_root))) == clean


def test_an_unwindowed_batch_killed_after_its_ledger_commit_keeps_its_candidate_rows(
    paced: Settings, tmp_path: Path
) -> None:
    settings = lake_under(paced, tmp_path).model_copy(update={"labeling_window_s": 0})
    handed(settings, batch([("first", 0.6, spread(0))], when=at(9)), 0, at(9))
    second = batch([("x", 0.6, spread(3)), ("y", 0.65, spread(4)), ("z", 0.999, spread(5))], when=at(10))
    with read_only(Path(settings.lake_root) / "labeling_candidates" / "_delta_log"):
        assert run_hand_off(settings, second, batch_id=1, now=at(10)).returncode != 0
    assert record(settings)["ledger_rows"] == 3  # the ledger committed before the kill
    handed(settings, second, 1, at(10, 5))
    after = record(settings)
    assert after["ledger_rows"] == 3
    # Every image sent has its candidate row, with the outcome sent, and is marked in images.
    assert {p for p, o in after["outcomes"].items() if o == "sent"} == set(after["ledger"])
    assert after["candidate_rows"] == 3 and after["marked"] == after["ledger"]
