"""availableNow scoring passes when no stream runs: single-flight, coalesced, skipped beside a live stream."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from handlers.api.app import create_app
from handlers.intake.service import HandlerService
from handlers.retraining.score_pass import ScorePass
from handlers.server import running
from infra.processes import SCORING_SERVICE
from infra.settings import Settings
from tests.helpers.handlers import blob_event


def _fake(record: Path, sleep: float = 0.0) -> list[str]:
    code = f"import time; open({str(record)!r}, 'a').write('pass\\n'); time.sleep({sleep})"
    return [sys.executable, "-c", code]


def test_passes_are_single_flight_and_coalesced(settings: Settings, tmp_path: Path) -> None:
    record = tmp_path / "passes.txt"
    scorer = ScorePass(settings, argv=_fake(record, 0.6))
    scorer.start()
    try:
        assert scorer.notify() == "requested"
        deadline = time.monotonic() + 10
        while not record.exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert [scorer.notify() for _ in range(3)] == ["coalesced"] * 3
        assert scorer.wait_idle(20)
    finally:
        scorer.stop()
    assert record.read_text().split() == ["pass", "pass"] and scorer.passes == [0, 0]


def test_no_pass_beside_a_running_stream(settings: Settings, tmp_path: Path) -> None:
    settings.run_dir.mkdir(parents=True)
    (settings.run_dir / f"{SCORING_SERVICE}.pid").write_text(str(os.getpid()))  # a live "score" service
    record = tmp_path / "passes.txt"
    scorer = ScorePass(settings, argv=_fake(record))
    scorer.start()
    try:
        assert scorer.notify() == "stream running"
        time.sleep(0.2)
    finally:
        scorer.stop()
    assert not record.exists()


def test_image_arrivals_start_a_pass(settings: Settings, tmp_path: Path, publisher) -> None:
    record = tmp_path / "passes.txt"
    settings = settings.model_copy(update={"score_when_idle": True})
    service = HandlerService(settings)
    assert service.scorer is not None
    service.scorer = ScorePass(settings, argv=_fake(record))
    with running(create_app(settings, service=service)) as url:
        publisher(url).send([blob_event(settings, "images", f"s/{i}.png") for i in range(3)])
        assert service.wait_idle() and service.scorer.wait_idle(20)
    # One pass, or two when the fast lane happened to drain the three events in two batches.
    assert record.read_text().split() in (["pass"], ["pass", "pass"])
