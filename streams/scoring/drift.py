"""The scoring stream's drift monitor: windows of scored images against the champion's reference.

After each committed micro-batch the monitor adds the batch's scored rows to the open window. A
window closes after ``drift_window_batches`` batches or ``drift_window_s`` seconds, once it holds
``drift_min_images`` images, or early when the champion changes (its reference changes with it).
Each closed window is one ``drift_reports`` row; a drifted one is also published as a CloudEvents
``lakesight.drift.detected`` event to the handler's webhook through the azure-eventgrid SDK, the
way an Event Grid custom topic would deliver it (docs/DRIFT.md).

The window lives in the driver's memory: a restart starts a new one (monitoring, not data). A
report's id is the query's app id and the window's first batch id, so a replay writes the same
row and the handler's event log suppresses a re-sent event.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infra import registry
from infra.core.drift import DRIFT_EVENT_TYPE, Assessment, Thresholds, Window, assess
from infra.lake import Lake
from infra.registry import Baseline
from infra.settings import Settings
from infra.tables import DRIFT_REPORTS

log = logging.getLogger(__name__)

# Embeddings kept per window: the test samples 200 of them; more only costs memory.
MAX_WINDOW_EMBEDDINGS = 2000

Publisher = Callable[[dict[str, Any], str], None]  # (event data, event id)


@dataclass
class _Open:
    first_batch_id: int
    started_at: float
    started: dt.datetime
    version: str
    batches: int = 0
    confidences: list[float] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)
    embeddings: list[list[float]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


class DriftMonitor:
    """Feeds windows of the stream's scored rows to :func:`infra.core.drift.assess`."""

    def __init__(self, settings: Settings, lake: Lake, *, publish: Publisher | None = None):
        self.settings = settings
        self.lake = lake
        self.publish = publish if publish is not None else event_publisher(settings)
        self.thresholds = Thresholds(psi=settings.drift_psi_threshold, alpha=settings.drift_alpha)
        self.window: _Open | None = None
        self.last: dict[str, Any] | None = None  # the latest report, for the status file
        self._baselines: dict[str, Baseline | None] = {}

    def after_batch(
        self, table: pa.Table, *, app_id: str, batch_id: int, now: float | None = None
    ) -> dict[str, Any] | None:
        """Add a committed batch; the report when this closed a window."""
        now = time.time() if now is None else now
        rows = _scored(table)
        if rows.num_rows == 0:
            return None
        versions = pc.unique(rows.column("model_version")).to_pylist()
        report = None
        if self.window is not None and self.window.version not in versions:
            report = self._close(app_id, batch_id - 1)  # the champion changed: its own window from here
        if self.window is None:
            self.window = _Open(batch_id, now, dt.datetime.fromtimestamp(now, dt.UTC), str(versions[-1]))
        self._add(rows.filter(pc.equal(rows.column("model_version"), self.window.version)))
        self.window.batches += 1
        if self._due(now):
            report = self._close(app_id, batch_id)
        return report

    def _add(self, rows: pa.Table) -> None:
        window = self.window
        assert window is not None
        window.confidences.extend(rows.column("confidence").to_pylist())
        window.predicted.extend(rows.column("predicted_label").to_pylist())
        if "embedding" in rows.column_names and len(window.embeddings) < MAX_WINDOW_EMBEDDINGS:
            for path, vector in zip(rows.column("path").to_pylist(), rows.column("embedding").to_pylist(), strict=True):
                if vector:
                    window.embeddings.append(vector)
                    window.paths.append(path)

    def _due(self, now: float) -> bool:
        window = self.window
        assert window is not None
        if len(window.confidences) < self.settings.drift_min_images:
            return False
        elapsed = now - window.started_at
        return window.batches >= self.settings.drift_window_batches or elapsed >= self.settings.drift_window_s

    def _close(self, app_id: str, last_batch_id: int) -> dict[str, Any] | None:
        window, self.window = self.window, None
        if window is None or len(window.confidences) < self.settings.drift_min_images:
            return None  # too few images to say anything: dropped, not reported
        baseline = self._baseline(window.version)
        if baseline is None:
            return None
        embeddings = np.asarray(window.embeddings, dtype=np.float32) if window.embeddings else None
        assessed = assess(
            Window(np.asarray(window.confidences), window.predicted, embeddings, window.paths),
            baseline,
            self.thresholds,
            seed=window.first_batch_id,
        )
        report = self._report(window, assessed, app_id=app_id, last_batch_id=last_batch_id)
        if assessed.drifted and self.settings.drift_events:
            report["event_error"] = self._publish(report, assessed)
        self.lake.merge(DRIFT_REPORTS, pa.Table.from_pylist([report], schema=DRIFT_REPORTS.schema))
        level = logging.WARNING if assessed.drifted else logging.INFO
        log.log(level, "drift window of %d images: %s", assessed.images, ", ".join(assessed.reasons) or "no drift")
        self.last = {k: (v.isoformat() if isinstance(v, dt.datetime | dt.date) else v) for k, v in report.items()}
        return report

    def _baseline(self, version: str) -> Baseline | None:
        if version not in self._baselines:
            try:
                self._baselines[version] = registry.model_baseline(self.settings, version)
            except registry.RegistryError as exc:
                log.warning("drift monitor: %s; its windows are not assessed", exc)
                self._baselines[version] = None
            if self._baselines[version] is None:
                log.warning("drift monitor: model version %s has no reference; its windows are not assessed", version)
        return self._baselines[version]

    def _report(self, window: _Open, assessed: Assessment, *, app_id: str, last_batch_id: int) -> dict[str, Any]:
        ended = dt.datetime.now(dt.UTC)
        report_id = f"{app_id}:{window.first_batch_id}"
        return {
            "report_id": report_id,
            "report_date": ended.date(),
            "window_start": window.started,
            "window_end": ended,
            "first_batch_id": window.first_batch_id,
            "last_batch_id": last_batch_id,
            "images": assessed.images,
            "model_version": window.version,
            "psi_confidence": assessed.psi_confidence,
            "psi_classes": assessed.psi_classes,
            "psi_threshold": self.thresholds.psi,
            "mmd": assessed.mmd,
            "mmd_threshold": assessed.mmd_threshold,
            "mmd_p_value": assessed.mmd_p_value,
            "alpha": self.thresholds.alpha,
            "drifted": assessed.drifted,
            "reasons": ",".join(assessed.reasons),
            "atypical_paths": assessed.atypical,
            "event_id": report_id if assessed.drifted and self.settings.drift_events else None,
            "event_error": None,
        }

    def _publish(self, report: dict[str, Any], assessed: Assessment) -> str | None:
        """Send the event; the error (logged, kept in the report) when the handler cannot be reached."""
        data = {
            "reportId": report["report_id"],
            "modelVersion": report["model_version"],
            "images": report["images"],
            "reasons": assessed.reasons,
            "psiConfidence": assessed.psi_confidence,
            "psiClasses": assessed.psi_classes,
            "psiThreshold": self.thresholds.psi,
            "mmd": assessed.mmd,
            "mmdThreshold": assessed.mmd_threshold,
            "mmdPValue": assessed.mmd_p_value,
            "alpha": self.thresholds.alpha,
            "driftScore": assessed.score(self.thresholds),
            "atypicalImages": assessed.atypical,
            "windowStart": report["window_start"].isoformat(),
            "windowEnd": report["window_end"].isoformat(),
        }
        try:
            self.publish(data, report["report_id"])
        except Exception as exc:  # noqa: BLE001 - the report is kept; the stream must go on
            log.warning("could not publish %s: %s", DRIFT_EVENT_TYPE, exc)
            return str(exc)[:500]
        return None


def _scored(table: pa.Table) -> pa.Table:
    """The batch's rows the model scored (an error row has no prediction to compare)."""
    needed = {"confidence", "predicted_label", "model_version", "path"}
    if not needed <= set(table.column_names) or table.num_rows == 0:
        return table.slice(0, 0)
    scored = pc.and_(pc.is_valid(table.column("confidence")), pc.is_valid(table.column("model_version")))
    return table.filter(scored)


def event_publisher(settings: Settings) -> Publisher:
    """Publishes to the handler's webhook (or ``drift_event_url``) with the webhook's shared key."""

    def publish(data: dict[str, Any], event_id: str) -> None:
        from azure.core.credentials import AzureKeyCredential
        from azure.core.messaging import CloudEvent
        from azure.eventgrid import EventGridPublisherClient

        url = settings.drift_event_url or settings.events_url()
        event = CloudEvent(source="/lakesight/scoring-stream", type=DRIFT_EVENT_TYPE, data=data, id=event_id)
        with EventGridPublisherClient(url, AzureKeyCredential(settings.event_secret())) as client:
            client.send([event])

    return publish
