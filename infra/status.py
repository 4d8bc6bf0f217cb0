"""One snapshot of the live pipeline, for ``lakesight status`` and the status page.

Everything is read from where the running pieces leave it (the lake, MLflow, the state dir),
so the snapshot works from any process, and a missing piece shows as absent, not as an error.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infra.deadletters import read_dead_letters
from infra.processes import pid_alive
from infra.settings import Settings, local_path
from infra.tables import DRIFT_REPORTS, IMAGES, LABEL_SOURCE_HUMAN, LABELING_REQUESTS, RETRAINING_DECISIONS

log = logging.getLogger(__name__)

STATS_COLUMNS = [
    "label",
    "label_source",
    "predicted_label",
    "confidence",
    "model_version",
    "scored_at",
    "sent_to_labeling_at",
    "error",
    "labeled_at",
]
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
    ``stale_reason``, so status shows the handlers that were there and are gone.
    """
    now = time.time() if now is None else now
    states = []
    for path in sorted(handler_state_dir(settings).glob(HANDLER_STATUS_GLOB)):
        status = _read_json(path)
        if status is None:
            continue
        reason = _why_not_live(status, now)
        states.append({**status, "state": "stopped" if reason else status.get("status"), "stale_reason": reason})
    return states or None


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


def _counts(values: list[Any]) -> dict[str, int]:
    return dict(sorted(Counter(str(v) for v in values if v is not None).items()))


def image_stats(table: pa.Table) -> dict[str, Any]:
    """Counts and distributions over the images table's label and prediction columns."""

    def column(name: str) -> list[Any]:
        return table.column(name).to_pylist()

    confidence = [c for c in column("confidence") if c is not None]
    hist, _edges = np.histogram(confidence, bins=10, range=(0.0, 1.0)) if confidence else (np.zeros(10), None)
    sent = pc.is_valid(table.column("sent_to_labeling_at"))
    human = pc.equal(table.column("label_source"), LABEL_SOURCE_HUMAN)
    pending = pc.and_(sent, pc.invert(pc.fill_null(human, False)))
    training_labels = pc.filter(table.column("label"), pc.is_valid(table.column("label"))).to_pylist()
    return {
        "images": table.num_rows,
        "scored": int(pc.sum(pc.is_valid(table.column("scored_at"))).as_py() or 0),
        "errors": int(pc.sum(pc.is_valid(table.column("error"))).as_py() or 0),
        "labeled": len(training_labels),
        "human_labels": int(pc.sum(pc.fill_null(human, False)).as_py() or 0),
        "sent_to_labeling": int(pc.sum(sent).as_py() or 0),
        "pending_labels": int(pc.sum(pending).as_py() or 0),
        "confidence_histogram": [int(v) for v in hist],
        "predicted_classes": _counts(column("predicted_label")),
        "label_classes": _counts(training_labels),
        "rows_by_model_version": _counts(column("model_version")),
    }


def _models(settings: Settings) -> dict[str, Any] | None:
    """The registered versions, oldest first, and the champion; None before any registry exists
    (reading a local SQLite registry would create one: a status read must change nothing)."""
    from infra import registry

    if not registry.registry_exists(settings):
        return None
    rows = sorted(registry.versions(settings), key=lambda row: int(row.version))
    versions = [
        {
            "version": row.version,
            "aliases": list(row.aliases),
            "accuracy": row.accuracy,
            "delta_version": row.delta_version,
            "decision": row.tags.get(registry.TAG_DECISION),
            "live_decision": row.tags.get(registry.TAG_LIVE_DECISION),
            "created": row.created,
        }
        for row in rows
    ]
    champion = next((row.version for row in rows if registry.CHAMPION in row.aliases), None)
    challenger = next((row.version for row in rows if registry.CHALLENGER in row.aliases), None)
    return {"champion": champion, "challenger": challenger, "versions": versions}


def _existing_lake(settings: Settings) -> Any:
    """The lake, or None when its local root does not exist yet (opening it would create the folder)."""
    from infra.lake import Lake

    root = local_path(settings.lake_root)
    return None if root is not None and not root.exists() else Lake(settings)


def _images(settings: Settings) -> dict[str, Any] | None:
    lake = _existing_lake(settings)
    if lake is None or not lake.exists(IMAGES):
        return None
    return image_stats(lake.read(IMAGES, columns=STATS_COLUMNS))


def _labeling(settings: Settings) -> dict[str, Any] | None:
    """The labeling queue, and the stream's word when its strategy had to fall back."""
    from infra.labeling import queue_state

    lake = _existing_lake(settings)
    if lake is None:
        return None
    state = queue_state(settings, lake)
    stream = read_stream_status(settings) or {}
    state["fallback"] = stream.get("labeling_fallback")
    state["spend_vs_accuracy"] = _spend_vs_accuracy(settings, lake)
    return state


def _spend_vs_accuracy(settings: Settings, lake: Any) -> list[dict[str, Any]]:
    """Per model version: the labels sent before it was registered, and its test accuracy."""
    models = _models(settings)
    if not models or not lake.exists(LABELING_REQUESTS):
        return []
    sent = sorted(t for t in lake.read(LABELING_REQUESTS, columns=["sent_at"]).column("sent_at").to_pylist() if t)
    rows = []
    for version in models["versions"]:
        created = dt.datetime.fromisoformat(version["created"]) if version["created"] else None
        spent = sum(1 for t in sent if created is None or t <= created)
        rows.append({"version": version["version"], "labels_spent": spent, "accuracy": version["accuracy"]})
    return rows


def _drift(settings: Settings, limit: int = 10) -> list[dict[str, Any]]:
    """The stream's latest drift windows, newest first."""
    lake = _existing_lake(settings)
    if lake is None or not lake.exists(DRIFT_REPORTS):
        return []
    columns = ["window_end", "images", "model_version", "drifted", "reasons", "psi_confidence", "psi_classes"]
    rows = lake.read(DRIFT_REPORTS, columns=[*columns, "mmd_p_value", "atypical_paths", "event_error"]).to_pylist()
    rows.sort(key=lambda r: str(r["window_end"]), reverse=True)
    return [{k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in r.items()} for r in rows[:limit]]


def _promotion(settings: Settings) -> dict[str, Any] | None:
    """The challenger's live evidence now (what the next label merge would decide) and the recorded decisions."""
    from infra import promotion_evidence

    lake = _existing_lake(settings)
    if lake is None:
        return None
    live = promotion_evidence.assess(settings, lake)
    return {
        "challenger": None if live is None else live.as_dict(),
        "recent": promotion_evidence.recent_decisions(lake),
    }


def _decisions(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    lake = _existing_lake(settings)
    if lake is None or not lake.exists(RETRAINING_DECISIONS):
        return []
    rows = lake.read(RETRAINING_DECISIONS).to_pylist()
    rows.sort(key=lambda r: str(r[RETRAINING_DECISIONS.sort_by]), reverse=True)
    return [
        {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in r.items()}
        for r in rows[:limit]
    ]


def snapshot(settings: Settings) -> dict[str, Any]:
    """The whole status as plain JSON-able values; each section degrades to ``None`` on failure."""
    result: dict[str, Any] = {
        "at": dt.datetime.now(dt.UTC).isoformat(),
        "model_name": settings.model_name,
        "mlflow_ui": f"http://127.0.0.1:{settings.mlflow_ui_port}",
    }
    sections = {
        "services": lambda: read_supervisor_state(settings),
        "stream": lambda: stream_state(settings),
        "model_server": lambda: model_server_state(settings),
        "images": lambda: _images(settings),
        "labeling": lambda: _labeling(settings),
        "models": lambda: _models(settings),
        "promotion": lambda: _promotion(settings),
        "decisions": lambda: _decisions(settings),
        "drift": lambda: _drift(settings),
        "dead_letters": lambda: read_dead_letters(settings),
        "handlers": lambda: handler_states(settings),
    }
    for name, read in sections.items():
        try:
            result[name] = read()
        except Exception as exc:  # noqa: BLE001 - a status page shows what it can
            log.info("status section %s unavailable: %s", name, exc)
            result[name] = None
            result.setdefault("unavailable", {})[name] = str(exc)[:300]
    return result


class CachedSnapshot:
    """:func:`snapshot` computed at most once per ``max_age_s``, however many readers ask: every status
    page polls, and a snapshot scans tables. One reader computes while the others wait for its result."""

    def __init__(self, settings: Settings, *, max_age_s: float):
        self.settings = settings
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._taken_at = float("-inf")
        self.computed = 0  # snapshots taken so far

    def get(self) -> dict[str, Any]:
        with self._lock:
            if self._value is None or time.monotonic() - self._taken_at >= self.max_age_s:
                self._value = snapshot(self.settings)
                self._taken_at = time.monotonic()
                self.computed += 1
            return self._value
