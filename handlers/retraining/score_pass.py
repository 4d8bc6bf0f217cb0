"""Scoring without an always-on stream: an ``availableNow`` pass after image arrivals (``score_when_idle``).

When no continuous scoring stream runs (no live ``score`` service pid under ``run_dir``), new arrival
records start ``lakesight score --source arrivals --once`` as a separate process. One pass at a
time; arrivals during a pass are coalesced into exactly one more pass, which picks them all up
because the stream's checkpoint remembers what earlier passes read.
"""

from __future__ import annotations

import logging
import os
import subprocess

from handlers.background import WakeableWorker
from infra.processes import SCORING_SERVICE, Service, lakesight_argv
from infra.settings import Settings

log = logging.getLogger(__name__)


def stream_running(settings: Settings) -> bool:
    """Whether the continuous scoring stream (service ``score``) is alive."""
    return Service(SCORING_SERVICE, settings).pid() is not None


class ScorePass(WakeableWorker):
    """Single-flight, coalescing runner of availableNow scoring passes."""

    thread_name = "lakesight-score-pass"

    def __init__(self, settings: Settings, *, argv: list[str] | None = None):
        super().__init__()
        self.settings = settings
        self.argv = argv or lakesight_argv("score", "--source", "arrivals", "--once")
        self.passes: list[int] = []  # exit codes, oldest first
        self._busy = False

    def notify(self) -> str:
        """New arrivals were written: ask for a pass unless a stream will score them anyway."""
        if stream_running(self.settings):
            return "stream running"
        self._wake.set()
        return "coalesced" if self._busy else "requested"

    def idle(self) -> bool:
        return not self._busy and not self._wake.is_set()

    def _loop(self) -> None:

        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            self._busy = True
            self._wake.clear()  # arrivals from here on ask for the next pass
            try:
                self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
                with (self.settings.logs_dir / "score-pass.log").open("ab") as out:
                    code = subprocess.run(
                        self.argv,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        check=False,
                        env={**os.environ, **self.settings.to_env()},
                    ).returncode
            except OSError as exc:
                log.error("cannot start a scoring pass: %s", exc)
                code = -1
            self.passes.append(code)
            (log.info if code == 0 else log.error)("availableNow scoring pass exited with %d", code)
            self._busy = False
