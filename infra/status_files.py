"""Status files the running pieces leave in the state folder, and the liveness rule readers apply.

The stream, the supervisor and the model server each rewrite a small JSON file; a reader believes
a "running" file only while its pid lives and its heartbeat is fresh (:func:`judge_stream`).
The snapshot built from these files and the lake is :mod:`infra.core.status`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from infra.processes import pid_alive
from infra.settings import Settings

log = logging.getLogger(__name__)

STREAM_STATUS_FILE = "score-status.json"
SUPERVISOR_STATE_FILE = "supervisor.json"
MODEL_SERVER_STATUS_FILE = "model-server.json"
# One per handler process (several may share a state folder): its health, as /healthz answers it.
HANDLER_STATUS_GLOB = "status-*.json"
# The model server's state while its process lives (the same pid + heartbeat rule as the stream's).
SERVING = "serving"
# The stream's status file carries its ``pid`` and a ``heartbeat_at`` (epoch seconds) that its
# process rewrites every HEARTBEAT_EVERY_S while it runs. A file left behind by a killed or
# crashed stream still says "running"; a reader believes it only while that pid is alive and the
# heartbeat is younger than HEARTBEAT_STALE_S (several missed beats: a busy driver may be late).
HEARTBEAT_EVERY_S = 5.0
HEARTBEAT_STALE_S = 30.0
# The stream's states while its process lives (it writes them; a dead process's file says stopped).
WAITING_FOR_STORAGE = "waiting for storage"
LIVE_STATES = ("starting", "running", WAITING_FOR_STORAGE)


def stream_status_path(settings: Settings) -> Path:
    """Where the scoring stream keeps its progress (rewritten atomically on every batch)."""
    return settings.run_dir / STREAM_STATUS_FILE


def supervisor_state_path(settings: Settings) -> Path:
    """Where ``lakesight up``'s supervisor records its children (rewritten atomically)."""
    return settings.run_dir / SUPERVISOR_STATE_FILE


def model_server_status_path(settings: Settings) -> Path:
    """Where ``lakesight serve-model`` keeps its figures (rewritten every heartbeat)."""
    return settings.run_dir / MODEL_SERVER_STATUS_FILE


def handler_state_dir(settings: Settings) -> Path:
    """The handlers' own folder under the state dir (their databases and status files)."""
    return settings.state_dir / "handlers"


def handler_status_path(settings: Settings, pid: int | None = None) -> Path:
    """Where the handler process ``pid`` (default: this one) keeps its health (rewritten every few seconds)."""
    return handler_state_dir(settings) / f"status-{pid or os.getpid()}.json"


def handler_states(settings: Settings, *, now: float | None = None) -> list[dict[str, Any]] | None:
    """The health of every live handler process (its pid alive, its heartbeat fresh); None when none runs.

    A process that died leaves its file behind: it is reported with ``state`` "stopped" and its
    ``stale_reason``, so status shows the handlers that were there and are gone. One that runs but
    has stopped rewriting its file (a read-only or full state folder) is "unresponsive".
    """
    now = time.time() if now is None else now
    states = []
    for path in sorted(handler_state_dir(settings).glob(HANDLER_STATUS_GLOB)):
        status = _read_json(path)
        if status is None:
            continue
        reason = _why_not_live(status, now)
        state = status.get("status")
        if reason is not None:
            state = "unresponsive" if _pid_of(status) else "stopped"
        if state == "unresponsive":
            reason = f"{reason} while its process runs: can it write {handler_state_dir(settings)}?"
        states.append({**status, "state": state, "stale_reason": reason})
    return states or None


def _pid_of(status: dict[str, Any]) -> int | None:
    """The ``pid`` a status file names, when that process is alive."""
    pid = status.get("pid")
    return pid if isinstance(pid, int) and pid > 0 and pid_alive(pid) else None


def write_status_file(path: Path, state: dict[str, Any]) -> None:
    """Replace ``path`` with ``state`` as JSON in one rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(state, default=str, indent=1))
    temp.replace(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_stream_status(settings: Settings) -> dict[str, Any] | None:
    return _read_json(stream_status_path(settings))


def read_supervisor_state(settings: Settings) -> dict[str, Any] | None:
    return _read_json(supervisor_state_path(settings))


def _iso(epoch: Any) -> str | None:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat() if isinstance(epoch, (int, float)) else None


def _why_not_live(status: dict[str, Any], now: float) -> str | None:
    """Why a status file that claims a live stream is not believed; None when it is."""
    pid, heartbeat = status.get("pid"), status.get("heartbeat_at")
    if not isinstance(pid, int) or pid <= 0 or not pid_alive(pid):
        return f"process {pid} is not running"
    if not isinstance(heartbeat, (int, float)):
        return "no heartbeat recorded"
    if now - heartbeat > HEARTBEAT_STALE_S:
        return f"no heartbeat for {now - heartbeat:.0f} s"
    return None


def judge_stream(status: dict[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """The status file with ``state`` as it really is: a live state only while the stream's
    process is alive and its heartbeat fresh, else ``stopped``. Adds ``reported_state`` (what
    the file says), ``stale_reason``, ``heartbeat_age_s`` and ``last_batch_at`` (ISO, UTC)."""
    now = time.time() if now is None else now
    claimed = status.get("state")
    reason = _why_not_live(status, now) if claimed in LIVE_STATES else None
    heartbeat = status.get("heartbeat_at")
    return {
        **status,
        "state": "stopped" if reason else claimed,
        "reported_state": claimed,
        "stale_reason": reason,
        "heartbeat_age_s": round(now - heartbeat, 1) if isinstance(heartbeat, (int, float)) else None,
        "last_batch_at": _iso((status.get("last_batch") or {}).get("committed_at")),
    }


def model_server_state(settings: Settings, *, now: float | None = None) -> dict[str, Any] | None:
    """The model server's figures, ``state`` "serving" only while its process lives and beats."""
    status = _read_json(model_server_status_path(settings))
    if status is None:
        return None
    now = time.time() if now is None else now
    reason = _why_not_live(status, now) if status.get("state") == SERVING else None
    return {**status, "state": "stopped" if reason else status.get("state"), "stale_reason": reason}


def stream_state(settings: Settings) -> dict[str, Any] | None:
    """The scoring stream's status file, judged by :func:`judge_stream`; None when it never ran."""
    status = read_stream_status(settings)
    return None if status is None else judge_stream(status)
