"""The event path under its own faults, injected through real files on a real uvicorn server: the lanes
keep running, /healthz says what is wrong, and acknowledged work is finished once the fault is gone."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from contextlib import closing
from typing import Any

import httpx
import pyarrow as pa
import pytest

from handlers.api.payloads import RUN_COMPLETED
from handlers.intake.eventlog import EventStatus
from infra.arrivals import arrivals_dir
from infra.cli.local import _handler_rows
from infra.core.status import snapshot
from infra.deadletters import dead_letter_path, read_dead_letters
from infra.iac import RETRAINING_TAG
from infra.settings import Settings
from tests.helpers.handlers import arrival_lines, blob_event, event_grid_dict, serving
from tests.helpers.waiting import wait_until


@pytest.fixture
def quick(settings: Settings) -> Settings:
    """Settings whose failed work is retried within a second."""
    return settings.model_copy(update={"handler_retry_base_s": 0.2, "handler_retry_max_s": 0.5})


def _run_completed(event_id: str, *, retraining: bool, run_id: str | None = None) -> Any:
    from azure.eventgrid import EventGridEvent

    data: dict[str, Any] = {"runTags": {RETRAINING_TAG: "true"} if retraining else {}}
    if run_id:
        data["runId"] = run_id
    return EventGridEvent(id=event_id, subject="/runs/x", event_type=RUN_COMPLETED, data=data, data_version="")


def _deliver(url: str, event: Any) -> httpx.Response:
    """A delivery whose answer the test reads (the SDK's send returns none)."""
    return _deliver_all(url, [event])


def _deliver_all(url: str, events: list[Any]) -> httpx.Response:
    body = [event_grid_dict(e) for e in events]
    return httpx.post(url, json=body, headers={"aeg-sas-key": "local-dev-key"}, timeout=10)


def _health(url: str) -> httpx.Response:
    return httpx.get(url.replace("/api/events", "/healthz"), timeout=10)


def _status_of(service: Any, event_id: str) -> str | None:
    logged = service.events.get(event_id)
    return None if logged is None else logged["status"]


def test_the_slow_lane_outlives_an_unopenable_dead_letter_table(quick: Settings, publisher) -> None:
    """A folder where the dead-letter database belongs: the refusal cannot be recorded, the lane goes on."""
    letters = dead_letter_path(quick)
    letters.mkdir(parents=True)
    with serving(quick) as (url, service):
        refused = _run_completed("no-run-id", retraining=True)  # refused: dead-lettered
        publisher(url).send([refused])
        unhealthy = wait_until(lambda: (r := _health(url)).status_code == 503 and r.json(), "/healthz to answer 503")
        assert any(p.startswith("slow lane failing: OperationalError") for p in unhealthy["problems"])
        assert unhealthy["lanes"]["slow"]["alive"] and unhealthy["lanes"]["slow"]["errors"] >= 1
        # lakesight status shows it too, from the handler's status file.
        rows = wait_until(lambda: _handler_rows(snapshot(quick)["handlers"]), "the handler in lakesight status")
        wait_until(
            lambda: "slow lane failing" in _handler_rows(snapshot(quick)["handlers"])[0]["value"],
            "the failing lane in lakesight status",
        )
        assert rows[0]["what"] == f"event handler (pid {os.getpid()})"

        later = _run_completed("someone-elses", retraining=False)  # ignored: needs no dead letter
        publisher(url).send([later])
        wait_until(lambda: _status_of(service, later.id) == EventStatus.IGNORED, "a later event to be processed")
        assert _status_of(service, refused.id) == EventStatus.PENDING
        assert _health(url).status_code == 503  # the refused event still waits for its retry

        letters.rmdir()  # the fault is gone: the running process finishes the event
        wait_until(lambda: _status_of(service, refused.id) == EventStatus.REFUSED, "the retried event to finish")
        healthy = wait_until(lambda: (r := _health(url)).status_code == 200 and r.json(), "/healthz to recover")
        assert healthy["problems"] == [] and healthy["lanes"]["slow"]["errors"] >= 1
    recorded = read_dead_letters(quick)
    assert recorded is not None and recorded["count"] == 1
    assert recorded["recent"][0]["reason"] == "RunCompleted without runId"


def test_an_unwritable_arrivals_root_leaves_the_event_pending_and_retried(settings: Settings, publisher) -> None:
    """A regular file where the arrivals folder belongs; a redelivery during the back-off is taken
    again, not suppressed; once the folder can be written the running process retries the event by
    itself, and it has exactly one arrival record."""
    # A back-off long enough that the redelivery lands while the event waits, not while it runs.
    quick = settings.model_copy(update={"handler_retry_base_s": 8.0, "handler_retry_max_s": 8.0})
    blocker = arrivals_dir(quick)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    event = blob_event(quick, "images", "cam/1.png")
    with serving(quick) as (url, service):
        publisher(url).send([event])
        unhealthy = wait_until(lambda: (r := _health(url)).status_code == 503 and r.json(), "/healthz to answer 503")
        assert any(p.startswith("fast lane failing:") for p in unhealthy["problems"])
        wait_until(lambda: service.events.backlog()["retrying"] == 1, "the event to wait for a retry")
        assert _status_of(service, event.id) == EventStatus.PENDING

        answer = _deliver(url, event)  # Event Grid's redelivery
        assert answer.status_code == 200 and answer.json() == {"accepted": 1, "duplicates": 0, "ignored": 0}

        blocker.unlink()
        wait_until(lambda: _status_of(service, event.id) == EventStatus.DONE, "the event to be retried and done")
        wait_until(lambda: _health(url).status_code == 200, "/healthz to recover")
        again = _deliver(url, event)
        assert again.json() == {"accepted": 0, "duplicates": 1, "ignored": 0}  # done now: a true duplicate
    assert [r["event_id"] for r in arrival_lines(quick)] == [event.id]


def test_work_failing_past_the_attempts_is_given_up_visibly_and_replayed(quick: Settings, publisher) -> None:
    """Given up: failed in the log, a dead letter with the raw event; ``events retry`` replays it."""
    from handlers.intake.replay import retry_dead_letters

    settings = quick.model_copy(update={"handler_max_attempts": 2})
    blocker = arrivals_dir(settings)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    event = blob_event(settings, "images", "cam/2.png")
    with serving(settings) as (url, service):
        publisher(url).send([event])
        wait_until(lambda: _status_of(service, event.id) == EventStatus.FAILED, "the event to be given up")
        letters = read_dead_letters(settings)
        assert letters is not None and letters["recent"][0]["status"] == EventStatus.FAILED
        assert letters["recent"][0]["reason"].startswith("given up after 2 attempts: ")
        assert "\n" not in letters["recent"][0]["reason"]

        blocker.unlink()
        assert retry_dead_letters(settings) == {"replayed": 1, "skipped": 0}
        wait_until(lambda: _status_of(service, event.id) == EventStatus.DONE, "the replayed event to be done")
    assert read_dead_letters(settings)["count"] == 0
    assert [r["event_id"] for r in arrival_lines(settings)] == [event.id]


def test_full_lanes_answer_503_with_retry_after_and_accept_again_later(settings: Settings) -> None:
    """The fast lane held up by a locked dead-letter database (another process's write lock): past
    ``handler_max_queued`` queued events a delivery is refused whole with 503, so Event Grid retries it."""
    bounded = settings.model_copy(update={"handler_max_queued": 5})
    letters = dead_letter_path(bounded)
    letters.parent.mkdir(parents=True)
    with serving(bounded) as (url, service), closing(sqlite3.connect(letters, timeout=1)) as lock:
        lock.execute("BEGIN EXCLUSIVE")
        assert _deliver(url, blob_event(bounded, "images", "a/../../x")).status_code == 200  # refused: blocks
        wait_until(lambda: service.health()["lanes"]["fast"]["busy_s"] is not None, "the fast lane to be held up")
        queued = [blob_event(bounded, "images", f"q/{i}.png") for i in range(5)]
        assert _deliver_all(url, queued).json()["accepted"] == 5
        extra = blob_event(bounded, "images", "q/extra.png")
        full = _deliver(url, extra)
        assert full.status_code == 503 and full.headers["retry-after"] == "10"
        assert full.json() == {"error": "5 events queued; retry later"}
        assert service.events.get(extra.id) is None  # nothing of the refused delivery was claimed
        lock.rollback()
        # Event Grid retries until the lane has drained and the delivery is accepted.
        answer = wait_until(lambda: (r := _deliver(url, extra)).status_code == 200 and r, "a retry to be accepted")
        assert answer.json()["accepted"] == 1
        assert service.wait_idle()
    assert sorted(r["event_id"] for r in arrival_lines(bounded)) == sorted(e.id for e in [*queued, extra])


@pytest.mark.azurite
@pytest.mark.slow
def test_an_export_while_blob_storage_is_down_stays_pending_and_is_applied_once_it_is_back(tmp_path) -> None:
    """Its own Azurite, stopped after the export was written: the delivery is acknowledged (the event
    is in the log), the export cannot be read, the event waits for a retry (said by /healthz), and the
    labels merge once when the same Azurite, with the same data, answers again."""
    from infra.blob import BlobStore
    from infra.lake import Lake
    from infra.local.stack import Azurite
    from infra.processes import free_port
    from infra.tables import IMAGES

    settings = Settings(
        state_dir=tmp_path / "state",
        blob_port=free_port(),
        blob_retry_s=0.5,
        handler_retry_base_s=0.2,
        handler_retry_max_s=0.5,
    )
    azurite = Azurite(settings)
    azurite.start()
    try:
        named = [f"file:/data/exported-{i}.png" for i in range(3)]
        day = pa.array([dt.date(2026, 12, 3)] * len(named), pa.date32())
        seeded = Lake(settings).merge(IMAGES, pa.table({"path": named, "load_date": day, "content_hash": ["h"] * 3}))
        export = "\n".join(json.dumps({"image_url": path, "label": "1"}) for path in named).encode()
        BlobStore(settings).upload(settings.exports_container, "e/labels.jsonl", export)
        azurite.stop()

        with serving(settings) as (url, service):
            event = blob_event(
                settings,
                settings.exports_container,
                "e/labels.jsonl",
                length=len(export),
                content_type="application/json",
            )
            assert _deliver(url, event).status_code == 200  # durably queued: Event Grid's job is done
            waiting = wait_until(
                lambda: (r := _health(url)).status_code == 503 and r.json(), "/healthz to name the waiting retry"
            )
            assert any("wait for a retry" in problem for problem in waiting["problems"]), waiting
            assert _status_of(service, event.id) != EventStatus.DONE

            azurite.start()
            wait_until(lambda: _status_of(service, event.id) == EventStatus.DONE, "the export once storage is back")
            rows = Lake(settings).read(IMAGES, columns=["path", "label", "label_source"]).to_pylist()
            assert {r["path"]: (r["label"], r["label_source"]) for r in rows} == dict.fromkeys(named, ("1", "human"))
            history = Lake(settings).table(IMAGES).history()
            label_merges = [c for c in history if c["version"] > seeded.version and c.get("operation") == "MERGE"]
            assert len(label_merges) == 1, label_merges  # applied once, however many tries
            wait_until(lambda: _health(url).status_code == 200, "/healthz healthy again")
    finally:
        azurite.stop()
