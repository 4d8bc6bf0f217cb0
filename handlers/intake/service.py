"""The handler service behind the webhook: claim events durably, queue them, route them off the request path.

Two supervised lanes (:mod:`handlers.intake.lanes`): a fast lane for image BlobCreated events (batched into
one arrival-record file per drain, so thousands per second cost little) and a slow lane for labeling
exports, drift and run events (Delta MERGEs, policy, launcher), so a slow export never delays image
arrivals. The event log is the durable queue: an event is acknowledged once it is claimed there
under this process's lease; work that fails goes back to the log with a back-off and a supervisor
thread takes it again (as it takes the work of a handler process whose lease ran out), renews the
leases of the work this process holds, prunes the log and the dead letters, and keeps the health
``/healthz`` and ``lakesight status`` show. Work that fails ``handler_max_attempts`` times is given
up: ``failed`` in the log and kept as a dead letter, replayable with ``lakesight events retry``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from handlers.api.payloads import BLOB_CREATED, DATASET_DRIFT, IMAGE_DRIFT, RUN_COMPLETED, RUN_STATUS_CHANGED, Event
from handlers.intake import blob_created
from handlers.intake import label_exports as labels
from handlers.intake.blob_created import BlobTarget, Refused, TargetKind
from handlers.intake.eventlog import Claim, EventLog, EventStatus
from handlers.intake.label_studio_sync import LabelStudioSync
from handlers.intake.lanes import Lane, describe
from handlers.retraining import policy, runs
from handlers.retraining.launcher import Backend, Launcher, LaunchStatus, make_backend
from handlers.retraining.score_pass import ScorePass
from infra.arrivals import write_arrival_records
from infra.core import promotion
from infra.core.labeling.label_studio import LABEL_STUDIO, labeling_service
from infra.deadletters import DeadLetter, DeadLetterTable
from infra.lake import Lake
from infra.settings import Settings
from infra.status_files import handler_status_path, write_status_file
from infra.web import RequestRefused

log = logging.getLogger(__name__)

KNOWN_TYPES = frozenset({BLOB_CREATED, DATASET_DRIFT, IMAGE_DRIFT, RUN_COMPLETED, RUN_STATUS_CHANGED})
FAST_BATCH = 1000
# Events acknowledged to Event Grid but not acted on for a reason someone should see (docs/DEPLOY.md);
# ignored and duplicate events are expected and are not dead letters.
DEAD_LETTER_STATUSES = frozenset({EventStatus.REFUSED, EventStatus.FAILED})
SUPERVISE_EVERY_S = 0.25  # how often due retries and taken-over work are looked for
STATUS_EVERY_S = 2.0  # how often the status file is rewritten
PRUNE_EVERY_S = 600.0  # how often the event log and the dead letters are pruned while running
TAKE_AT_ONCE = 1000  # events taken from the log per supervisor tick at most


class LanesFull(RequestRefused):
    """The lanes hold ``handler_max_queued`` events: 503 with Retry-After, so Event Grid retries later."""

    def __init__(self, queued: int):
        super().__init__(503, f"{queued} events queued; retry later", headers={"Retry-After": "10"})


class HandlerService:
    """Owns the event log, the lanes, the supervisor and the launcher for one settings object."""

    def __init__(self, settings: Settings, *, backend: Backend | None = None, store: labels.ExportStore | None = None):
        """``backend`` runs retraining (default: the configured one); ``store`` reads labeling
        exports (default: the configured blob account, opened on first use)."""
        self.settings = settings
        self.events = EventLog(
            settings.state_dir / "handlers" / "events.db",
            lease_s=settings.handler_lease_s,
            wait_s=settings.handler_log_wait_s,
        )
        self.dead_letters = DeadLetterTable(settings)
        self.base_url = blob_created.account_url(settings)
        self.launcher = Launcher(settings, backend or make_backend(settings))
        self.scorer = ScorePass(settings) if settings.score_when_idle else None
        self.label_studio = (
            LabelStudioSync(settings, on_labels=self._label_studio_labels)
            if labeling_service(settings) == LABEL_STUDIO
            else None
        )
        self._duplicates = 0
        stuck = settings.handler_stuck_s
        self._fast = Lane("fast", self._blob_batch, self._retry_later, batch=FAST_BATCH, stuck_s=stuck)
        self._slow = Lane("slow", self._slow_work, self._retry_later, batch=1, stuck_s=stuck)
        self._lanes = (self._fast, self._slow)
        self._held: set[str] = set()  # ids of the events this process has queued or is working on
        self._supervisor: threading.Thread | None = None
        self._pruner: threading.Thread | None = None
        self._stopping = threading.Event()
        self._supervisor_error: str | None = None
        self.sweeps = 0  # supervisor ticks done (tests wait on it)
        self._lock = threading.Lock()
        self._lake: Lake | None = None
        self._store = store

    # Lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the lanes and the supervisor (idempotent); the supervisor takes the pending events
        a previous process left (at once when that process is gone, else when its lease runs out)."""
        with self._lock:
            if self._supervisor is not None:
                return
            self._stopping.clear()
            released = self.events.release_dead_owners()
            if released:
                log.warning("taking over %d event(s) of a handler process that stopped", released)
            for lane in self._lanes:
                lane.start()
            self._supervisor = threading.Thread(
                target=self._supervise, name="lakesight-handlers-supervisor", daemon=True
            )
            self._supervisor.start()
            self._pruner = threading.Thread(target=self._prune_loop, name="lakesight-handlers-pruner", daemon=True)
            self._pruner.start()
            self.launcher.start()
            if self.scorer is not None:
                self.scorer.start()
            if self.label_studio is not None:
                self.label_studio.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the supervisor and the lanes; events still queued are handed back to the log."""
        with self._lock:
            supervisor, self._supervisor = self._supervisor, None
        self._stopping.set()
        for thread in (supervisor, self._pruner):
            if thread is not None:
                thread.join(timeout)
        for lane in self._lanes:
            lane.stop(timeout)
        self.launcher.stop()
        if self.scorer is not None:
            self.scorer.stop()
        if self.label_studio is not None:
            self.label_studio.stop()
        try:
            self.events.release()
            with self._lock:
                self._held.clear()
            handler_status_path(self.settings).unlink(missing_ok=True)
        except Exception as exc:  # noqa: BLE001 - a stop must finish; the leases run out by themselves
            log.warning("handing back the leases at stop failed: %s", describe(exc))

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every queued and pending event has been processed (tests and the bench use this)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(lane.idle() for lane in self._lanes) and self.events.backlog()["pending"] == 0:
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
        """Claim ``events`` durably and queue the ones to process; unknown types are acknowledged and logged.

        Raises :class:`LanesFull` (503) before claiming anything when the lanes are full, and a
        503 :class:`RequestRefused` when the event log cannot record the claim: either way
        nothing was acknowledged and Event Grid delivers again.
        """
        queued = sum(lane.queue.qsize() for lane in self._lanes)
        if queued >= self.settings.handler_max_queued:
            raise LanesFull(queued)
        try:
            claim: Claim = self.events.claim(events)
        except Exception as exc:  # a full disk, a locked or unopenable log: not acknowledged
            log.warning("cannot record %d delivered event(s): %s", len(events), describe(exc))
            raise RequestRefused(503, f"event log unavailable: {describe(exc)}", headers={"Retry-After": "10"}) from exc
        self._count_duplicates(claim.duplicates)
        if claim.duplicates:
            log.info("suppressed %d duplicate delivery(ies)", claim.duplicates)
        if claim.retriggered:
            log.info("redelivery took %d unfinished event(s) again", claim.retriggered)
        known = [e for e in claim.new if e.type in KNOWN_TYPES]
        unknown = [e for e in claim.new if e.type not in KNOWN_TYPES]
        if unknown:
            for event in unknown:
                log.warning("acknowledged event %s of unknown type %r; nothing to do", event.id, event.type)
            self.events.finish((e.id, EventStatus.IGNORED, f"unknown event type {e.type}") for e in unknown)
        self._route(known)
        return {"accepted": len(known), "duplicates": claim.duplicates, "ignored": len(unknown)}

    def _route(self, events: list[Event]) -> None:
        with self._lock:
            self._held.update(e.id for e in events)
        for event in events:
            (self._fast if event.type == BLOB_CREATED else self._slow).put(event)

    def _let_go(self, event_ids: Iterable[str]) -> None:
        """This process no longer holds these events (finished or put back): their leases stop renewing."""
        with self._lock:
            self._held.difference_update(event_ids)

    # Supervisor: retries, take-over, leases, pruning, health --------------------------------------
    def _supervise(self) -> None:
        due = {"renew": 0.0, "status": 0.0}
        while not self._stopping.is_set():
            try:
                self._supervise_once(due)
                self._supervisor_error = None
            except Exception as exc:  # noqa: BLE001 - the supervisor outlives a broken log; health says so
                if self._supervisor_error is None:
                    log.error("handler supervisor: %s", describe(exc))
                self._supervisor_error = describe(exc)
            self.sweeps += 1
            self._stopping.wait(SUPERVISE_EVERY_S)

    def _supervise_once(self, due: dict[str, float]) -> None:
        now = time.monotonic()
        try:
            self._tend(due, now)
        finally:  # written whatever failed: the status file is how lakesight status learns of it
            if now >= due["status"]:
                write_status_file(handler_status_path(self.settings), self.health())
                due["status"] = now + STATUS_EVERY_S

    def _tend(self, due: dict[str, float], now: float) -> None:
        """Revive dead lanes, renew this process's leases, take due retries and orphaned work."""
        for lane in self._lanes:
            lane.revive()
        if not self.events.probe():  # the log still refuses writes (health says why): try next tick
            return
        if now >= due["renew"]:
            with self._lock:
                held = list(self._held)
            self.events.renew(held)
            due["renew"] = now + self.settings.handler_lease_s / 3
        room = self.settings.handler_max_queued - sum(lane.queue.qsize() for lane in self._lanes)
        if room > 0:
            taken = self.events.take_due(min(room, TAKE_AT_ONCE))
            if taken:
                log.info("retrying %d pending event(s) from the event log", len(taken))
                self._route(taken)

    def _prune_loop(self) -> None:
        """Prune now and every PRUNE_EVERY_S, on a thread of its own: a locked dead-letter database
        must not hold up the retries and the lease renewals."""
        while not self._stopping.is_set():
            try:
                self.prune()
            except Exception as exc:  # noqa: BLE001 - tried again at the next round
                log.warning("pruning failed: %s", describe(exc))
            self._stopping.wait(PRUNE_EVERY_S)

    def prune(self) -> dict[str, int]:
        """Forget finished events and dead letters past their age and count limits (settings)."""
        settings = self.settings
        pruned = {
            "events": self.events.prune(
                dt.timedelta(days=settings.event_log_retention_days), keep=settings.event_log_max_rows
            ),
            "dead_letters": self.dead_letters.prune(
                dt.timedelta(days=settings.dead_letter_retention_days), keep=settings.dead_letter_max_rows
            ),
        }
        if any(pruned.values()):
            log.info("pruned %d finished event(s) and %d dead letter(s)", pruned["events"], pruned["dead_letters"])
        return pruned

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` answers: ``problems`` names every dead, stuck or failing lane and an
        unreadable event log; empty when all is well."""
        lanes = {lane.name: lane.health() for lane in self._lanes}
        problems = [h.problem for h in lanes.values() if h.problem]
        if self._supervisor_error:
            problems.append(f"supervisor failing: {self._supervisor_error}")
        if self.events.write_error:
            problems.append(f"event log refuses writes: {self.events.write_error}")
        try:
            backlog: dict[str, Any] | None = self.events.backlog()
        except Exception as exc:  # noqa: BLE001 - reported, not raised: a probe must get an answer
            backlog = None
            problems.append(f"event log unreadable: {describe(exc)}")
        if backlog and backlog["retrying"]:
            problems.append(f"{backlog['retrying']} event(s) failed and wait for a retry")
        return {
            "status": "unhealthy" if problems else "ok",
            "problems": problems,
            "pid": os.getpid(),
            "owner": self.events.owner,
            "heartbeat_at": time.time(),
            "lanes": {name: h.as_dict() for name, h in lanes.items()},
            "backlog": backlog,
            "sweeps": self.sweeps,
            "duplicates_suppressed": self.duplicates_suppressed,
            "label_studio": dict(self.label_studio.stats) if self.label_studio is not None else None,
        }

    # Failures ------------------------------------------------------------------------------------
    def _retry_later(self, items: list[Any], exc: BaseException) -> None:
        """Put the events of failed work back in the log with a back-off; give up the ones past
        ``handler_max_attempts`` (failed, dead-lettered)."""
        events = [item[0] if isinstance(item, tuple) else item for item in items]
        self._let_go(e.id for e in events)
        attempts = self.events.defer([e.id for e in events], describe(exc), self._backoff)
        spent = [e for e in events if attempts.get(e.id, 0) >= self.settings.handler_max_attempts]
        if spent:
            reason = f"given up after {self.settings.handler_max_attempts} attempts: {describe(exc)}"
            log.error("%d event(s) %s", len(spent), reason)
            self._finish([(e, EventStatus.FAILED, reason) for e in spent])

    def _backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts`` + 1: doubling from ``handler_retry_base_s`` up to the max."""
        settings = self.settings
        return min(settings.handler_retry_max_s, settings.handler_retry_base_s * 2 ** min(attempts - 1, 30))

    # Fast lane: image arrivals ------------------------------------------------------------------
    def _still_held(self, events: list[Event]) -> list[Event]:
        """The events of ``events`` this process still holds, their leases renewed; the others are let
        go unworked (another process took them over while this one could not renew, or they are done).
        Each event once: a redelivery that lands between a lock's release and the lease's renewal
        queues the same event again, and both copies can reach one fast-lane batch."""
        events = list({e.id: e for e in events}.values())
        mine = self.events.confirm([e.id for e in events])
        lost = [e for e in events if e.id not in mine]
        if lost:
            log.warning("%d event(s) were taken over or finished meanwhile; not worked again here", len(lost))
            self._let_go(e.id for e in lost)
        return [e for e in events if e.id in mine]

    def _blob_batch(self, batch: list[Event]) -> None:
        batch = self._still_held(batch)
        outcomes: list[tuple[Event, EventStatus, str]] = []
        records = []
        exports: list[tuple[Event, BlobTarget]] = []
        for event in batch:
            try:
                target = blob_created.blob_target(self.settings, self.base_url, event)
                first = self.events.claim_blob(target.url, target.etag, event.id)
                if first is not None:
                    self._count_duplicates(1)
                    outcomes.append((event, EventStatus.DUPLICATE, f"same upload as event {first}"))
                elif target.kind == TargetKind.EXPORT:
                    exports.append((event, target))
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
        for export in exports:  # handed on only now: a failed batch puts them back with the rest
            self._slow.put(export)

    def _finish(self, outcomes: list[tuple[Event, EventStatus, str]]) -> None:
        """Store the outcomes; refused and failed events are kept in the dead-letter table first.

        Outcomes that need no dead letter are stored first, so a dead-letter table that cannot be
        written holds back only the events it should keep (they stay pending and are retried).
        Dead letters before their status: a crash in between leaves the event pending, so it is
        taken again and recorded again (once: the table is keyed by event id).
        """
        plain = [o for o in outcomes if o[1] not in DEAD_LETTER_STATUSES]
        letters = [o for o in outcomes if o[1] in DEAD_LETTER_STATUSES]
        for part in (plain, letters):
            if not part:
                continue
            self.dead_letters.record(
                DeadLetter(event.id, event.type, status, outcome, event.to_json())
                for event, status, outcome in part
                if status in DEAD_LETTER_STATUSES
            )
            self.events.finish((event.id, status, outcome) for event, status, outcome in part)
            self._let_go(event.id for event, _, _ in part)

    # Slow lane: exports, drift, runs -------------------------------------------------------------
    def _slow_work(self, items: list[Any]) -> None:
        """One slow-lane item; an error other than a refusal propagates, and the lane retries the event."""
        for item in items:
            event, target = item if isinstance(item, tuple) else (item, None)
            if not self._still_held([event]):
                continue
            try:
                status, outcome = self._handle(event, target)
            except (Refused, labels.ExportError) as exc:
                status = exc.status if isinstance(exc, Refused) else EventStatus.REFUSED
                outcome = str(exc)
                log.warning("event %s %s: %s", event.id, status, outcome)
            self._finish([(event, status, outcome)])

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
        elif event.type == RUN_STATUS_CHANGED:
            handler = self._run_status_changed
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

    def _label_studio_labels(self) -> None:
        """Labels came from Label Studio (webhooks, a pull): what an export's labels start, once they
        settled (:meth:`LabelStudioSync.settle_s`): a waiting challenger is decided, then the policy."""
        promotion.decide(self.settings, self.lake)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        policy.evaluate(
            self.settings,
            self.lake,
            decision_id=f"label-studio-{stamp}",
            trigger="label-studio",
            request_launch=self.launcher.request,
        )

    def labels_arrived(self) -> None:
        """Label Studio's webhook applied labels: the worker asks the policy once they settle."""
        if self.label_studio is not None:
            self.label_studio.labels_arrived()

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
        live = promotion.decide(self.settings, self.lake)
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

    def _run_status_changed(self, event: Event, _target: object) -> dict[str, Any]:
        """A retraining run that failed or was cancelled frees the launcher (its launch is failed)."""
        if not runs.is_retraining_run(event.data):
            return {"status": EventStatus.IGNORED, "reason": "not a lakesight retraining run"}
        failed = runs.failed_status(event.data)
        if failed is None:
            return {"status": EventStatus.IGNORED, "reason": f"run status {event.data.get('runStatus')!r} ends nothing"}
        run_id = str(event.data.get("runId") or "")
        if not run_id:
            raise Refused(EventStatus.REFUSED, "RunStatusChanged without runId")
        outcome = {"run": run_id, "error": f"the retraining run ended {failed}"}
        launch_id = self.launcher.complete_external(run_id, LaunchStatus.FAILED, outcome)
        return {"launch_id": launch_id, "run_status": failed}
