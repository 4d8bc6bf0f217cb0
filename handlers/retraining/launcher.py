"""The retraining launcher: single-flight, cooldown, coalesced triggers, persisted in SQLite.

A trigger (a retraining decision's id) is recorded once (``INSERT OR IGNORE``); a launch claims
every pending trigger at once inside one ``BEGIN IMMEDIATE`` transaction that also checks that no
launch is running and the cooldown has passed. So triggers that arrive during a training run or a
cooldown are coalesced into the next launch, and no trigger is ever launched twice, even across
handler restarts or two handler processes sharing ``state_dir``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from handlers.background import WakeableWorker
from infra.processes import lakesight_argv, log_tail, pid_alive
from infra.settings import Settings
from infra.sqlite import connect, now_iso, transaction

log = logging.getLogger(__name__)


class LaunchStatus(StrEnum):
    """A launch's status; the values are what the ``launches`` table stores and ``launches()`` returns."""

    RUNNING = "running"
    SUBMITTED = "submitted"  # handed to a remote backend; finished by its RunCompleted event
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABANDONED = "abandoned"  # its process stopped while training ran; never rerun


# Names imported by handlers/retraining/azureml.py, tests/handlers/test_azureml.py and test_launcher.py: the
# enum's own members under their old names (not new strings), until those files use LaunchStatus.
FAILED = LaunchStatus.FAILED
SUBMITTED = LaunchStatus.SUBMITTED
SUCCEEDED = LaunchStatus.SUCCEEDED
ABANDONED = LaunchStatus.ABANDONED

_ACTIVE = (LaunchStatus.RUNNING, LaunchStatus.SUBMITTED)  # a launch in either holds the single flight

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triggers (
    trigger_id TEXT PRIMARY KEY,
    reason TEXT,
    delta_version INTEGER,
    requested_at TEXT NOT NULL,
    launch_id INTEGER
);
CREATE INDEX IF NOT EXISTS triggers_pending ON triggers(launch_id);
CREATE TABLE IF NOT EXISTS launches (
    launch_id INTEGER PRIMARY KEY AUTOINCREMENT,
    backend TEXT NOT NULL,
    delta_version INTEGER,
    triggers INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    started_epoch REAL NOT NULL,
    finished_epoch REAL,
    host TEXT,
    pid INTEGER,
    external_id TEXT,
    outcome TEXT
);
"""


@dataclass(frozen=True)
class LaunchResult:
    """What a backend reports: a final status (or ``submitted``) and its details.

    ``status`` is checked against :class:`LaunchStatus` (ValueError otherwise), so a misspelt
    status fails inside the backend call, where the loop records it as a failed launch.
    """

    status: LaunchStatus
    outcome: dict[str, Any] = field(default_factory=dict)
    external_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", LaunchStatus(self.status))


class Backend(Protocol):
    name: str

    def run(self, delta_version: int, launch_id: int) -> LaunchResult: ...


def train_command(settings: Settings, delta_version: int) -> list[str]:
    """The local training command: ``settings.retrain_command`` when set, else ``lakesight train``."""
    if settings.retrain_command:
        return [part.replace("{version}", str(delta_version)) for part in shlex.split(settings.retrain_command)]
    return lakesight_argv("train", "--version", str(delta_version), "--json")


class LocalBackend:
    """Runs training as a separate process and reads its one JSON result line."""

    name = "local"

    def __init__(self, settings: Settings):
        self.settings = settings

    def run(self, delta_version: int, launch_id: int) -> LaunchResult:
        argv = train_command(self.settings, delta_version)
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.settings.logs_dir / f"retrain-{launch_id}.log"
        env = {**os.environ, **self.settings.to_env()}
        log.info("launch %d: %s", launch_id, shlex.join(argv))
        with log_path.open("wb") as stderr:
            try:
                proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=stderr, env=env, check=False)
            except OSError as exc:
                return LaunchResult(
                    LaunchStatus.FAILED, {"error": f"cannot start {argv[0]}: {exc}", "log": str(log_path)}
                )
        tail = log_tail(log_path)
        if proc.returncode != 0:
            return LaunchResult(
                LaunchStatus.FAILED,
                {"error": f"training exited with code {proc.returncode}", "stderr_tail": tail, "log": str(log_path)},
            )
        result = _last_json_line(proc.stdout.decode("utf-8", "replace"))
        if result is None:
            return LaunchResult(
                LaunchStatus.FAILED,
                {"error": "training printed no JSON result line", "stderr_tail": tail, "log": str(log_path)},
            )
        return LaunchResult(LaunchStatus.SUCCEEDED, result, external_id=str(result.get("run_id") or "") or None)


def _last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


class Launcher(WakeableWorker):
    """Single-flight retraining with cooldown and coalescing over a :class:`Backend`."""

    thread_name = "lakesight-launcher"

    def __init__(self, settings: Settings, backend: Backend, *, db_path: Path | None = None):
        super().__init__()
        self.settings = settings
        self.backend = backend
        self._conn = connect(db_path or settings.state_dir / "handlers" / "launcher.db")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._host = socket.gethostname()
        self._recover()

    # Lifecycle ---------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Launches left ``running`` by a dead process get a clear outcome; they are never rerun."""
        rows = self._query("SELECT launch_id, host, pid FROM launches WHERE status = ?", (LaunchStatus.RUNNING,))
        for launch_id, host, pid in rows:
            if host == self._host and pid is not None and (pid == os.getpid() or pid_alive(pid)):
                continue
            log.error("launch %d was running in a process that stopped; marked abandoned, not rerun", launch_id)
            self._finish(
                launch_id, LaunchResult(LaunchStatus.ABANDONED, {"error": "handler stopped while training ran"})
            )

    # Requests ----------------------------------------------------------------------------------
    def request(self, trigger_id: str, reason: str, delta_version: int) -> str:
        """Record a trigger; return what happens to it (queued, coalesced, cooldown or duplicate).

        The answer is decided in the transaction that records the trigger, and the worker is woken
        only afterwards: woken first, it could start (or even finish) the trigger's own launch
        before the answer is read, and a trigger that started launch 1 would be told "cooldown".
        """
        with self._lock, transaction(self._conn):
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO triggers (trigger_id, reason, delta_version, requested_at) VALUES (?, ?, ?, ?)",
                (trigger_id, reason, delta_version, now_iso()),
            )
            if cursor.rowcount == 0:
                return "duplicate"
            answer = self._answer_for_new_trigger()
        self._wake.set()
        return answer

    def _answer_for_new_trigger(self) -> str:
        """What happens to a trigger recorded now (called inside the recording transaction)."""
        if self._holds_flight():
            return "coalesced"
        return "cooldown" if self._seconds_to_cooldown_end() > 0 else "queued"

    def complete_external(self, external_id: str, status: LaunchStatus, outcome: dict[str, Any]) -> int | None:
        """Finish a submitted launch when its remote run reports back; return its launch id."""
        rows = self._query(
            "SELECT launch_id FROM launches WHERE external_id = ? AND status = ?", (external_id, LaunchStatus.SUBMITTED)
        )
        if not rows:
            return None
        self._finish(rows[0][0], LaunchResult(status, outcome, external_id))
        self._wake.set()
        return rows[0][0]

    # State -------------------------------------------------------------------------------------
    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def _holds_flight(self) -> bool:
        """Whether a launch is running or submitted (the single flight is taken); the caller holds the lock."""
        return (
            self._conn.execute("SELECT 1 FROM launches WHERE status IN (?, ?) LIMIT 1", _ACTIVE).fetchone() is not None
        )

    def _seconds_to_cooldown_end(self) -> float:
        """Seconds until the cooldown after the last launch ends (<= 0: over); the caller holds the lock."""
        last = self._conn.execute("SELECT MAX(COALESCE(finished_epoch, started_epoch)) FROM launches").fetchone()[0]
        return 0.0 if last is None else last + self.settings.retrain_cooldown_s - time.time()

    def launches(self) -> list[dict[str, Any]]:
        cols = ["launch_id", "backend", "delta_version", "triggers", "status", "started_at", "external_id", "outcome"]
        rows = self._query(f"SELECT {', '.join(cols)} FROM launches ORDER BY launch_id")
        return [dict(zip(cols, row, strict=True)) for row in rows]

    def pending_triggers(self) -> int:
        with self._lock:
            return self._pending()

    def _pending(self) -> int:
        """Triggers no launch has taken yet; the caller holds the lock."""
        return self._conn.execute("SELECT COUNT(*) FROM triggers WHERE launch_id IS NULL").fetchone()[0]

    def idle(self) -> bool:
        """No launch in flight and no trigger waiting, read under one lock: read one after the other,
        a claim in between (pending trigger → running launch) looked idle."""
        with self._lock:
            return self._pending() == 0 and not self._holds_flight()

    # The launch loop ---------------------------------------------------------------------------
    def _claim(self) -> tuple[int, int] | float | None:
        """Start a launch for all pending triggers: ``(launch_id, delta_version)``, seconds to wait, or None."""
        with self._lock, transaction(self._conn):
            busy = self._holds_flight()
            count, delta_version = self._conn.execute(
                "SELECT COUNT(*), MAX(delta_version) FROM triggers WHERE launch_id IS NULL"
            ).fetchone()
            if busy or count == 0:
                return None
            wait = self._seconds_to_cooldown_end()
            if wait > 0:
                return wait
            cursor = self._conn.execute(
                "INSERT INTO launches (backend, delta_version, triggers, status, started_at, started_epoch, host,"
                " pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.backend.name,
                    delta_version,
                    count,
                    LaunchStatus.RUNNING,
                    now_iso(),
                    time.time(),
                    self._host,
                    os.getpid(),
                ),
            )
            launch_id = int(cursor.lastrowid or 0)  # an INSERT always sets it
            self._conn.execute("UPDATE triggers SET launch_id = ? WHERE launch_id IS NULL", (launch_id,))
        log.info(
            "launch %d: %d coalesced trigger(s), images@%s, backend %s",
            launch_id,
            count,
            delta_version,
            self.backend.name,
        )
        return launch_id, delta_version

    def _finish(self, launch_id: int, result: LaunchResult) -> None:
        finished = None if result.status == LaunchStatus.SUBMITTED else time.time()
        with self._lock:
            self._conn.execute(
                "UPDATE launches SET status = ?, outcome = ?, external_id = COALESCE(?, external_id),"
                " finished_epoch = ? WHERE launch_id = ?",
                (result.status, json.dumps(result.outcome, default=str), result.external_id, finished, launch_id),
            )
        level = logging.ERROR if result.status in (LaunchStatus.FAILED, LaunchStatus.ABANDONED) else logging.INFO
        log.log(level, "launch %d %s: %s", launch_id, result.status, result.outcome)

    def _run_claimed(self, launch_id: int, delta_version: int) -> None:
        """Run a claimed launch on the backend and record its result, whatever the backend does."""
        try:
            result = self.backend.run(delta_version, launch_id)
        except Exception as exc:  # a backend bug must not kill the loop or leave a launch running
            log.exception("launch %d: backend %s raised", launch_id, self.backend.name)
            result = LaunchResult(LaunchStatus.FAILED, {"error": f"{type(exc).__name__}: {exc}"})
        self._finish(launch_id, result)

    def _fail_overdue(self) -> float | None:
        """Fail submitted launches older than ``retrain_run_deadline_s`` (their run never reported back:
        the single flight is freed); return the seconds until the next one is due, or None."""
        deadline = self.settings.retrain_run_deadline_s
        rows = self._query(
            "SELECT launch_id, started_epoch FROM launches WHERE status = ? ORDER BY started_epoch",
            (LaunchStatus.SUBMITTED,),
        )
        now = time.time()
        for launch_id, started in rows:
            if started + deadline > now:
                return started + deadline - now
            error = f"no end of its run within retrain_run_deadline_s={deadline:g}: launcher released"
            self._finish(launch_id, LaunchResult(LaunchStatus.FAILED, {"error": error}))
        return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            next_deadline = self._fail_overdue()
            claimed = self._claim()
            if isinstance(claimed, tuple):
                self._run_claimed(*claimed)
                continue
            waits = [60.0, *(w for w in (claimed, next_deadline) if w)]
            self._wake.wait(timeout=min(waits))
            self._wake.clear()


def make_backend(settings: Settings) -> Backend:
    """The backend named by ``settings.retrain_backend``."""
    if settings.retrain_backend == "azureml":
        from handlers.retraining.azureml import AzureMLBackend

        return AzureMLBackend(settings)
    return LocalBackend(settings)
