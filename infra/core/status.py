"""One snapshot of the live pipeline, for ``lakesight status`` and the status page.

Everything is read from where the running pieces leave it (the lake, MLflow, the state dir),
so the snapshot works from any process, and a missing piece shows as absent, not as an error.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infra import registry
from infra.core import promotion
from infra.core.labeling import queue_state
from infra.core.labeling.label_studio import LABEL_STUDIO, labeling_service
from infra.deadletters import read_dead_letters
from infra.lake import Lake
from infra.locations import local_path
from infra.redaction import redact, redact_text
from infra.settings import Settings
from infra.status_files import (
    handler_states,
    model_server_state,
    read_stream_status,
    read_supervisor_state,
    stream_state,
)
from infra.tables import (
    DRIFT_REPORTS,
    IMAGES,
    LABEL_REJECTS,
    LABEL_SOURCE_HUMAN,
    LABEL_STUDIO_ANNOTATIONS,
    LABELING_REQUESTS,
    RETRAINING_DECISIONS,
)

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
    root = local_path(settings.lake_root)
    return None if root is not None and not root.exists() else Lake(settings)


def _images(settings: Settings) -> dict[str, Any] | None:
    lake = _existing_lake(settings)
    if lake is None or not lake.exists(IMAGES):
        return None
    return image_stats(lake.read(IMAGES, columns=STATS_COLUMNS))


def _labeling(settings: Settings) -> dict[str, Any] | None:
    """The labeling queue, and the stream's word when its strategy had to fall back."""
    lake = _existing_lake(settings)
    if lake is None:
        return None
    state = queue_state(settings, lake)
    stream = read_stream_status(settings) or {}
    state["fallback"] = stream.get("labeling_fallback")
    state["spend_vs_accuracy"] = _spend_vs_accuracy(settings, lake)
    state["service"] = labeling_service_state(settings, lake)
    return state


def labeling_service_state(settings: Settings, lake: Any) -> dict[str, Any]:
    """The labeling service, as the lake knows it: ``tasks_open`` (Label Studio: picks sent with no
    annotation received; else null, the images' pending labels say it), the annotations received
    (``by_webhook``, ``by_pull``, not counting deleted ones), and the labels refused, by reason."""
    service = labeling_service(settings)
    state: dict[str, Any] = {"name": service, "tasks_open": None, "annotations_received": 0}
    state.update(by_webhook=0, by_pull=0, rejects={})
    received = lake.read(LABEL_STUDIO_ANNOTATIONS) if lake.exists(LABEL_STUDIO_ANNOTATIONS) else None
    live = [r for r in received.to_pylist() if r["deleted_at"] is None] if received is not None else []
    state["annotations_received"] = len(live)
    state["by_webhook"] = sum(1 for r in live if r["via"] == "webhook")
    state["by_pull"] = sum(1 for r in live if r["via"] == "pull")
    if service == LABEL_STUDIO and lake.exists(LABELING_REQUESTS):
        sent = {t for t in lake.read(LABELING_REQUESTS, columns=["task_id"]).column("task_id").to_pylist() if t}
        state["tasks_open"] = len(sent - {r["task_id"] for r in live})
    if lake.exists(LABEL_REJECTS):
        reasons = lake.read(LABEL_REJECTS, columns=["reason"]).column("reason").to_pylist()
        state["rejects"] = dict(Counter(str(r) for r in reasons).most_common())
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
    lake = _existing_lake(settings)
    if lake is None:
        return None
    live = promotion.assess(settings, lake)
    return {
        "challenger": None if live is None else live.as_dict(),
        "recent": promotion.recent_decisions(lake),
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
            log.info("status section %s unavailable: %s", name, redact_text(str(exc)))
            result[name] = None
            result.setdefault("unavailable", {})[name] = redact_text(str(exc))[:300]
    # Errors quote URLs and connection strings: what the page and `lakesight status` show is redacted.
    return redact(result)


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
