"""The handler service behind the webhook: claim events once, queue them, route them off the request path.

Two worker threads: a fast lane for image BlobCreated events (batched into one arrival-record file per
drain, so thousands per second cost little) and a slow lane for labeling exports, drift and run events
(Delta MERGEs, policy, launcher), so a slow export never delays image arrivals. Events claimed but not
finished when a process stops are re-queued from the event log at the next start.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from handlers.api.payloads import BLOB_CREATED, DATASET_DRIFT, IMAGE_DRIFT, RUN_COMPLETED, Event
from handlers.intake import blob_created
from handlers.intake import label_exports as labels
from handlers.intake.blob_created import BlobTarget, Refused, TargetKind
from handlers.intake.eventlog import Claim, EventLog, EventStatus
from handlers.retraining import policy, runs
from handlers.retraining.launcher import Backend, Launcher, LaunchStatus, make_backend
from handlers.retraining.score_pass import ScorePass
from infra.arrivals import write_arrival_records
from infra.core import promotion as promotion_evidence
from infra.deadletters import DeadLetter, DeadLetterTable
from infra.lake import Lake
from infra.settings import Settings

log = logging.getLogger(__name__)

KNOWN_TYPES = frozenset({BLOB_CREATED, DATASET_DRIFT, IMAGE_DRIFT, RUN_COMPLETED})
FAST_BATCH = 1000
# Events acknowledged to Event Grid but not acted on for a reason someone should see (docs/DEPLOY.md);
# ignored and duplicate events are expected and are not dead letters.
DEAD_LETTER_STATUSES = frozenset({EventStatus.REFUSED, EventStatus.FAILED})
SLOW_ATTEMPTS = 3
_STOP = object()


class HandlerService:
    """Owns the event log, the worker threads and the launcher for one settings object."""

    def __init__(self, settings: Settings, *, backend: Backend | None = None, store: labels.ExportStore | None = None):
        """``backend`` runs retraining (default: the configured one); ``store`` reads labeling
        exports (default: the configured blob account, opened on first use)."""
        self.settings = settings
        self.events = EventLog(settings.state_dir / "handlers" / "events.db")
        self.dead_letters = DeadLetterTable(settings)
        self.base_url = blob_created.account_url(settings)
        self.launcher = Launcher(settings, backend or make_backend(settings))
        self.scorer = ScorePass(settings) if settings.score_when_idle else None
        self._duplicates = 0
        self._fast: queue.Queue = queue.Queue()
        self._slow: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._lake: Lake | None = None
        self._store = store

    # Lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers (idempotent) and re-queue events a previous process left unfinished."""
        with self._lock:
            if self._threads:
                return
            for name, target in (("fast", self._fast_loop), ("slow", self._slow_loop)):
                thread = threading.Thread(target=target, name=f"lakesight-handlers-{name}", daemon=True)
                thread.start()
                self._threads.append(thread)
            self.launcher.start()
            if self.scorer is not None:
                self.scorer.start()
        pruned = self.events.prune()
        if pruned:
            log.info("pruned %d finished event(s) past the replay window", pruned)
        leftover = self.events.pending()
        if leftover:
            log.warning("re-queuing %d event(s) claimed before the last stop but never finished", len(leftover))
            self._route(leftover)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            threads, self._threads = self._threads, []
        self._fast.put(_STOP)
        self._slow.put(_STOP)
        for thread in threads:
            thread.join(timeout)
        self.launcher.stop()
        if self.scorer is not None:
            self.scorer.stop()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every queued event has been processed (tests and the bench use this)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._fast.unfinished_tasks == 0 and self._slow.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    @property
    def duplicates_suppressed(self) -> int:
        """Deliveries suppressed so far: repeated event ids and repeated (url, eTag) uploads."""
        return self._duplicates

    def _count_duplicates(self, count: int) -> None:
        with self._lock:  # incremented from the request loop and the fast lane
            self._duplicates += count

    @property
    def lake(self) -> Lake:
        if self._lake is None:
            self._lake = Lake(self.settings)
        return self._lake

    @property
    def store(self) -> labels.ExportStore:
        if self._store is None:  # the blob SDK loads only when an export is first read
            from infra.blob import BlobStore

            self._store = labels.BlobExports(BlobStore(self.settings))
        return self._store

    # Intake ------------------------------------------------------------------------------------
    def submit(self, events: list[Event]) -> dict[str, int]:
        """Claim ``events`` and queue the new ones; unknown types are acknowledged and logged."""
        claim: Claim = self.events.claim(events)
        self._count_duplicates(claim.duplicates)
        if claim.duplicates:
            log.info("suppressed %d duplicate delivery(ies)", claim.duplicates)
        known = [e for e in claim.new if e.type in KNOWN_TYPES]
        unknown = [e for e in claim.new if e.type not in KNOWN_TYPES]
        if unknown:
            for event in unknown:
                log.warning("acknowledged event %s of unknown type %r; nothing to do", event.id, event.type)
            self.events.finish((e.id, EventStatus.IGNORED, f"unknown event type {e.type}") for e in unknown)
        self._route(known)
        return {"accepted": len(known), "duplicates": claim.duplicates, "ignored": len(unknown)}

    def _route(self, events: list[Event]) -> None:
        for event in events:
            (self._fast if event.type == BLOB_CREATED else self._slow).put(event)

    # Fast lane: image arrivals ------------------------------------------------------------------
    def _fast_loop(self) -> None:
        while True:
            first = self._fast.get()
            batch = [first]
            while len(batch) < FAST_BATCH:
                try:
                    batch.append(self._fast.get_nowait())
                except queue.Empty:
                    break
            try:
                self._blob_batch([e for e in batch if e is not _STOP])
            except Exception:  # keep the lane alive; the events stay pending and are retried at restart
                log.exception("image arrival batch of %d failed", len(batch))
            finally:
                for _ in batch:
                    self._fast.task_done()
            if any(e is _STOP for e in batch):
                return

    def _blob_batch(self, batch: list[Event]) -> None:
        outcomes: list[tuple[Event, EventStatus, str]] = []
        records = []
        for event in batch:
            try:
                target = blob_created.blob_target(self.settings, self.base_url, event)
                first = self.events.claim_blob(target.url, target.etag, event.id)
                if first is not None:
                    self._count_duplicates(1)
                    outcomes.append((event, EventStatus.DUPLICATE, f"same upload as event {first}"))
                elif target.kind == TargetKind.EXPORT:
                    self._slow.put((event, target))
                else:
                    records.append(blob_created.arrival_record(target, event))
            except Refused as exc:
                log.warning("event %s %s: %s", event.id, exc.status, exc)
                outcomes.append((event, exc.status, str(exc)))
            except ValueError as exc:  # a field the arrival record rejects
                log.warning("event %s refused: %s", event.id, exc)
                outcomes.append((event, EventStatus.REFUSED, str(exc)))
        written = write_arrival_records(self.settings, records)
        if written and self.scorer is not None:
            self.scorer.notify()
        by_id = {event.id: event for event in batch}
        outcomes.extend(
            (by_id[r.event_id], EventStatus.DONE, f"arrival {r.url} in {file.name}")
            for file in written
            for r in file.records
        )
        self._finish(outcomes)

    def _finish(self, outcomes: list[tuple[Event, EventStatus, str]]) -> None:
        """Store the outcomes; refused and failed events are kept in the dead-letter table first.

        Dead letters before the status: a crash in between leaves the event pending, so it is
        re-queued at the next start and recorded again (once: the table is keyed by event id).
        """
        self.dead_letters.record(
            DeadLetter(event.id, event.type, status, outcome, event.to_json())
            for event, status, outcome in outcomes
            if status in DEAD_LETTER_STATUSES
        )
        self.events.finish((event.id, status, outcome) for event, status, outcome in outcomes)

    # Slow lane: exports, drift, runs -------------------------------------------------------------
    def _slow_loop(self) -> None:
        while True:
            item = self._slow.get()
            try:
                if item is _STOP:
                    return
                event, target = item if isinstance(item, tuple) else (item, None)
                self._with_retries(event, target)
            finally:
                self._slow.task_done()

    def _with_retries(self, event: Event, target: BlobTarget | None) -> None:
        for attempt in range(1, SLOW_ATTEMPTS + 1):
            try:
                status, outcome = self._handle(event, target)
            except (Refused, labels.ExportError) as exc:
                status = exc.status if isinstance(exc, Refused) else EventStatus.REFUSED
                outcome = str(exc)
                log.warning("event %s %s: %s", event.id, status, outcome)
            except Exception as exc:  # transient (storage, commit conflicts): retry, then record the failure
                log.exception("event %s (%s) failed on attempt %d", event.id, event.type, attempt)
                if attempt < SLOW_ATTEMPTS:
                    time.sleep(0.5 * attempt)
                    continue
                status, outcome = EventStatus.FAILED, f"{type(exc).__name__}: {exc}"
            self._finish([(event, status, outcome)])
            return

    def _handle(self, event: Event, target: BlobTarget | None) -> tuple[EventStatus, str]:
        """Run the event's handler: ``(status, outcome JSON)``; a handler names a status other than done
        with a ``"status"`` key, which must be an :class:`EventStatus` value."""
        handler: Callable[..., dict[str, Any]]
        if event.type == BLOB_CREATED and target is not None:
            handler = self._export
        elif event.type == DATASET_DRIFT:
            handler = self._drift
        elif event.type == IMAGE_DRIFT:
            handler = self._image_drift
        elif event.type == RUN_COMPLETED:
            handler = self._run_completed
        else:
            raise Refused(EventStatus.IGNORED, f"no slow-lane handler for {event.type}")
        result = handler(event, target)
        status = EventStatus(result.pop("status", EventStatus.DONE))
        return status, json.dumps(result, default=str)

    def _policy(self, event: Event, trigger: str, **options: Any) -> dict[str, Any]:
        decision = policy.evaluate(
            self.settings,
            self.lake,
            decision_id=event.id,
            trigger=trigger,
            request_launch=self.launcher.request,
            **options,
        )
        return {
            "retrain": decision.retrain,
            "reasons": decision.reasons,
            "launch": decision.launch,
            "new_labels": decision.metrics.new_labels,
            "psi": decision.metrics.psi,
            "champion_accuracy": decision.metrics.champion_accuracy,
        }

    def _export(self, event: Event, target: BlobTarget | None) -> dict[str, Any]:
        if target is None:  # the dispatcher sends only BlobCreated events with a target here
            raise Refused(EventStatus.IGNORED, "an export event names no blob")
        cap = self.settings.max_export_bytes
        labels.check_declared_size(event.data.get("contentLength"), cap)
        entries = labels.parse_export(self.store.chunks(target.container, target.name), max_bytes=cap)
        report = labels.apply_export(
            self.settings,
            self.lake,
            entries,
            event_id=event.id,
            export_url=target.url,
            classes=self.settings.label_classes,
            labeled_at=labels.export_time(event.time),
        )
        log.info("export %s: %s", target.url, report.as_dict())
        # The new labels may settle a waiting challenger: decided first, so the retraining policy
        # then measures the champion of now.
        live = promotion_evidence.decide(self.settings, self.lake)
        return {
            "labels": report.as_dict(),
            "promotion": None if live is None else live.as_dict(),
            "decision": self._policy(event, "labeling-export"),
        }

    def _drift(self, event: Event, _target: object) -> dict[str, Any]:
        coefficient = event.data.get("driftCoefficient", event.data.get("DriftCoefficient"))
        drift = float(coefficient) if isinstance(coefficient, int | float) else None
        return {"decision": self._policy(event, "dataset-drift", dataset_drift=drift)}

    def _image_drift(self, event: Event, _target: object) -> dict[str, Any]:
        """The stream's own drift event: treated like DatasetDriftDetected, its score already past 1."""
        score = event.data.get("driftScore")
        if not isinstance(score, int | float) or isinstance(score, bool):
            raise Refused(EventStatus.REFUSED, f"{IMAGE_DRIFT} without a numeric driftScore")
        decision = self._policy(event, "image-drift", dataset_drift=float(score), image_drift=True)
        return {"report": event.data.get("reportId"), "reasons": event.data.get("reasons"), "decision": decision}

    def _run_completed(self, event: Event, _target: object) -> dict[str, Any]:
        if not runs.is_retraining_run(event.data):
            return {"status": EventStatus.IGNORED, "reason": "not a lakesight retraining run"}
        run_id = str(event.data.get("runId") or "")
        if not run_id:
            raise Refused(EventStatus.REFUSED, "RunCompleted without runId")
        launch_id = self.launcher.complete_external(run_id, LaunchStatus.SUCCEEDED, {"run": run_id})
        return {"launch_id": launch_id, "promotion": runs.promotion_check(self.settings, run_id)}
