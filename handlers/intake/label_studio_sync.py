"""The handler's Label Studio worker (``LAKESIGHT_LABELING_SERVICE=label-studio``, docs/LABELING.md).

The scoring stream's hand-off only writes the copies, the manifest and the ledger, so a slow or
stopped Label Studio never slows a micro-batch. Every ``label_studio_sync_s`` (and when woken) this
worker, in the handler process:

1. signs in, finds or creates the model's project and (re)registers its webhook to the handler's
   authenticated route, with the event key as a header;
2. creates a task for every ledger row sent since its cursor that the project lacks (by the
   hand-off's task id, so a retry never makes one twice), and only then moves the cursor: Label
   Studio down means the picks wait in the ledger and go at the next sync that reaches it;
3. pulls the annotations, applying the versions no webhook delivered and forgetting the
   annotations deleted there (:func:`handlers.intake.label_studio.pull_labels`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pyarrow.compute as pc

from handlers.background import WakeableWorker
from handlers.intake.label_studio import image_signer, ledger_since, pull_labels, push_tasks
from infra.blob import BlobStore
from infra.core.labeling.label_studio import (
    WEBHOOK_KEY_HEADER,
    LabelStudioClient,
    label_studio_url,
    webhook_url,
)
from infra.errors import LakesightError
from infra.lake import Lake
from infra.settings import Settings
from infra.status_files import write_status_file
from infra.tables import IMAGES

log = logging.getLogger(__name__)

# Ledger rows this much older than the cursor are looked at again: a batch replayed after a crash
# commits its rows with its first ``sent_at``, which may be before a later batch's.
CURSOR_OVERLAP = dt.timedelta(hours=1)
# The retraining policy looks at Label Studio's labels once none came for this many rounds (and at
# least MIN_SETTLE_S): a labeler's session is weighed at once.
SETTLE_ROUNDS = 3
MIN_SETTLE_S = 10.0


def project_classes(settings: Settings, lake: Lake, lines: list[dict[str, Any]]) -> list[str]:
    """The choices of a new project: ``LAKESIGHT_LABEL_CLASSES``, else every class the lake has seen
    (human labels and the champion's predictions in the ledger)."""
    if settings.label_classes:
        return list(settings.label_classes)
    seen = {str(line["predicted_label"]) for line in lines if line.get("predicted_label") is not None}
    if lake.exists(IMAGES):
        labels = lake.read(IMAGES, columns=["label"]).column("label")
        seen |= {v for v in pc.unique(labels).to_pylist() if v is not None}
    return sorted(seen)


class LabelStudioSync(WakeableWorker):
    """Pushes new picks into Label Studio and pulls its annotations, every ``label_studio_sync_s``."""

    thread_name = "lakesight-label-studio"

    def __init__(self, settings: Settings, *, on_labels: Callable[[], None] | None = None):
        """``on_labels`` runs on this worker's thread once after labels arrived (by webhook or pull),
        however many: the retraining policy looks at them as it looks at an export's."""
        super().__init__()
        self.settings = settings
        self.on_labels = on_labels
        self._labels_arrived = threading.Event()
        self._last_label = 0.0  # time.monotonic() of the newest labels
        self.cursor_file = settings.state_dir / "handlers" / "label-studio-cursor.json"
        self.stats: dict[str, Any] = {
            "tasks_created": 0,
            "annotations_pulled": 0,
            "last_sync": None,
            "error": None,
            "failed_rounds": 0,  # in a row
        }
        self._busy = threading.Event()
        self._said: str | None = None
        self._cors_done = False

    # The cursor: the newest ledger ``sent_at`` in Label Studio, and the task ids it has from the
    # overlap before it (a ledger row with an older or equal ``sent_at`` may still come).
    def cursor(self) -> dt.datetime | None:
        return self._cursor()[0]

    def _cursor(self) -> tuple[dt.datetime | None, set[str]]:
        try:
            state = json.loads(self.cursor_file.read_text())
            return dt.datetime.fromisoformat(state["sent_at"]), set(state["pushed"])
        except (OSError, ValueError, KeyError, TypeError):
            return None, set()

    def _save_cursor(self, lines: list[dict[str, Any]]) -> None:
        newest = max(line["sent_at"] for line in lines)
        recent = sorted(line["task_id"] for line in lines if line["sent_at"] >= newest - CURSOR_OVERLAP)
        write_status_file(self.cursor_file, {"sent_at": newest.isoformat(), "pushed": recent})

    def sync_once(self) -> dict[str, Any]:
        """One round (push, then pull); raises :class:`LakesightError` or ``httpx.HTTPError`` when
        Label Studio cannot be reached or refuses, with nothing lost: the next round does it all again."""
        settings = self.settings
        lake = Lake(settings)
        cursor, pushed = self._cursor()
        lines = [line for line in ledger_since(lake, cursor - CURSOR_OVERLAP if cursor else None) if line["sent_at"]]
        client = LabelStudioClient(
            label_studio_url(settings), settings.label_studio_email, settings.label_studio_secret()
        )
        try:
            project = client.project(settings.model_name, project_classes(settings, lake, lines))
            client.ensure_webhook(project, webhook_url(settings), {WEBHOOK_KEY_HEADER: settings.event_secret()})
            if not self._cors_done:  # its page loads a task's image with a CORS request
                BlobStore(settings).allow_browser_reads(label_studio_url(settings))
                self._cors_done = True
            created = 0
            if any(line["task_id"] not in pushed for line in lines):
                created = push_tasks(client, project, lines, show=image_signer(settings))
                self._save_cursor(lines)
            report = pull_labels(settings, lake, client, project, classes=settings.label_classes)
        finally:
            client.close()
        pulled = 0 if report.skipped_replay else report.entries
        if pulled:
            self.labels_arrived()
        self.stats.update(
            tasks_created=self.stats["tasks_created"] + created,
            annotations_pulled=self.stats["annotations_pulled"] + pulled,
            last_sync=dt.datetime.now(dt.UTC).isoformat(),
            project=project,
            error=None,
            failed_rounds=0,
        )
        return {"project": project, "tasks_created": created, "annotations_pulled": pulled}

    def idle(self) -> bool:
        return not self._busy.is_set() and not self._wake.is_set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self._busy.set()
            try:
                self.sync_once()
                if self._said:
                    log.info("Label Studio reachable again at %s", label_studio_url(self.settings))
                self._said = None
            except (LakesightError, httpx.HTTPError, OSError) as exc:
                self._report(exc)
            try:
                self._after_labels()
            except Exception as exc:  # noqa: BLE001 - the policy is asked again after the next labels
                log.warning("retraining policy after Label Studio's labels failed: %s", exc)
            finally:
                self._busy.clear()
            self._wake.wait(self.settings.label_studio_sync_s)

    def _report(self, exc: BaseException) -> None:
        """One line per new kind of failure: Label Studio down for an hour is not 120 warnings."""
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self.stats["error"] = message
        self.stats["failed_rounds"] += 1
        if message != self._said:
            log.warning(
                "Label Studio sync failed (picks stay queued, retried every %.0fs): %s",
                self.settings.label_studio_sync_s,
                message,
            )
            self._said = message

    def labels_arrived(self) -> None:
        """Labels came in (the webhook route calls this): the policy runs once they settle."""
        self._last_label = time.monotonic()
        self._labels_arrived.set()

    def settle_s(self) -> float:
        """How long no labels must come before the policy looks at them: a labeling session's labels
        are weighed together, not 25 at a time while the labeler is still at work (with a short
        cooldown that retrained once per handful of labels)."""
        return max(SETTLE_ROUNDS * self.settings.label_studio_sync_s, MIN_SETTLE_S)

    def _after_labels(self) -> None:
        settled = time.monotonic() - self._last_label >= self.settle_s()
        if self._labels_arrived.is_set() and settled and self.on_labels is not None:
            self._labels_arrived.clear()
            self.on_labels()

    def wake(self) -> None:
        self._wake.set()

    def wait_synced(self, timeout: float = 60.0) -> bool:
        """Wake the worker and block until one whole round after this call finished (tests)."""
        started = time.time()
        self.wake()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.stats["last_sync"]
            if last is not None and dt.datetime.fromisoformat(last).timestamp() >= started and self.idle():
                return True
            time.sleep(0.1)
        return False
