"""HandlerService without HTTP: intake, the fast lane (image arrivals) and the slow lane (exports, runs)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator

import pyarrow as pa
import pytest

from handlers.api.payloads import RUN_COMPLETED, RUN_STATUS_CHANGED, Event
from handlers.intake.eventlog import EventStatus
from handlers.intake.service import HandlerService
from handlers.retraining.launcher import LaunchResult, LaunchStatus
from infra.deadletters import read_dead_letters
from infra.iac import RETRAINING_TAG
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES, LABEL_REJECTS, PROMOTION_DECISIONS, RETRAINING_DECISIONS
from tests.helpers.handlers import arrival_lines, blob_created_event
from tests.helpers.status import promote_versions
from tests.helpers.waiting import wait_until

EXPORT = b'{"image_url": "azureml://datastores/lakesight_labeling/paths/images/never-seen.png", "label": "circle"}\n'


class FakeStore:
    """Stands in for the blob store the slow lane reads exports from; fails the first ``failures`` reads."""

    def __init__(self, blobs: dict[tuple[str, str], bytes], failures: int = 0):
        self.blobs = blobs
        self.failures = failures
        self.reads: list[tuple[str, str, str]] = []  # (container, name, reading thread)

    def chunks(self, container: str, name: str) -> Iterator[bytes]:
        self.reads.append((container, name, threading.current_thread().name))
        if len(self.reads) <= self.failures:
            raise ConnectionError("storage briefly unreachable")
        data = self.blobs[(container, name)]
        return iter([data[:7], data[7:]])  # two chunks, split inside a line, as a download may


class RemoteBackend:
    """Hands every launch to a pretend remote service, as the azureml backend does."""

    name = "remote"

    def run(self, delta_version: int, launch_id: int) -> LaunchResult:
        return LaunchResult(LaunchStatus.SUBMITTED, {"job": f"job-{launch_id}"}, external_id=f"run-{launch_id}")


@pytest.fixture
def store(settings: Settings) -> FakeStore:
    return FakeStore({(settings.exports_container, "e/labels.jsonl"): EXPORT})


@pytest.fixture
def service(settings: Settings, store: FakeStore) -> Iterator[HandlerService]:
    configured = settings.model_copy(update={"retrain_cooldown_s": 0.0})
    value = HandlerService(configured, backend=RemoteBackend(), store=store)
    value.start()
    yield value
    value.stop()


def _run_completed(run_id: str | None, *, retraining: bool) -> Event:
    data: dict = {"runTags": {RETRAINING_TAG: "true"} if retraining else {}}
    if run_id is not None:
        data["runId"] = run_id
    return Event(id=f"run-event-{run_id}-{retraining}", type=RUN_COMPLETED, subject="/runs/x", time="", data=data)


def _processed(service: HandlerService, event: Event) -> dict[str, str]:
    assert service.wait_idle(30)
    logged = service.events.get(event.id)
    assert logged is not None
    return logged


def test_an_image_blob_writes_one_arrival_record(settings: Settings, service: HandlerService) -> None:
    event = blob_created_event(settings, settings.images_container, "cam/1.png", etag="0x8D1")
    assert service.submit([event]) == {"accepted": 1, "duplicates": 0, "ignored": 0}
    logged = _processed(service, event)
    assert logged["status"] == EventStatus.DONE and logged["outcome"].startswith("arrival ")
    (record,) = arrival_lines(settings)
    assert record["event_id"] == event.id and record["name"] == "cam/1.png" and record["etag"] == "0x8D1"


def test_a_replayed_event_id_is_a_duplicate(settings: Settings, service: HandlerService) -> None:
    event = blob_created_event(settings, settings.images_container, "cam/2.png")
    service.submit([event])
    assert service.submit([event]) == {"accepted": 0, "duplicates": 1, "ignored": 0}
    _processed(service, event)
    assert service.duplicates_suppressed == 1
    assert [r["event_id"] for r in arrival_lines(settings)] == [event.id]


def test_an_event_queued_twice_in_one_batch_is_worked_once(settings: Settings, store: FakeStore) -> None:
    # A redelivery between a locked log's release and the lease's renewal queues the event again;
    # both copies in one fast-lane batch used to write two arrival records.
    service = HandlerService(settings, store=store)  # not started: the batch is worked here, once
    event = blob_created_event(settings, settings.images_container, "cam/twice.png")
    assert [e.id for e in service.events.claim([event]).new] == [event.id]
    service._blob_batch([event, event])
    assert [r["event_id"] for r in arrival_lines(settings)] == [event.id]
    assert service.events.get(event.id)["status"] == EventStatus.DONE


def test_the_same_upload_under_a_new_id_is_a_duplicate(settings: Settings, service: HandlerService) -> None:
    first = blob_created_event(settings, settings.images_container, "cam/3.png", etag="0x8D3")
    again = blob_created_event(settings, settings.images_container, "cam/3.png", etag="0x8D3")
    service.submit([first])
    _processed(service, first)
    assert service.submit([again])["accepted"] == 1  # a new id: claimed, then found to be the same upload
    logged = _processed(service, again)
    assert logged["status"] == EventStatus.DUPLICATE and logged["outcome"] == f"same upload as event {first.id}"
    assert len(arrival_lines(settings)) == 1


def test_an_export_goes_to_the_labels_lane(settings: Settings, service: HandlerService, store: FakeStore) -> None:
    event = blob_created_event(settings, settings.exports_container, "e/labels.jsonl")
    service.submit([event])
    logged = _processed(service, event)
    assert logged["status"] == EventStatus.DONE
    # Read on the slow lane, never the fast one: an export must not hold up image arrivals.
    assert store.reads == [(settings.exports_container, "e/labels.jsonl", "lakesight-handlers-slow")]
    outcome = json.loads(logged["outcome"])
    assert outcome["labels"]["entries"] == 1 and outcome["labels"]["unknown_images"] == 1
    assert outcome["decision"]["retrain"] is False
    lake = Lake(settings)
    assert [r["reason"] for r in lake.read(LABEL_REJECTS).to_pylist()] == ["unknown image"]
    assert [r["decision_id"] for r in lake.read(RETRAINING_DECISIONS).to_pylist()] == [event.id]
    assert arrival_lines(settings) == []


def test_an_export_s_human_labels_settle_the_waiting_challenger(settings: Settings) -> None:
    from infra import registry

    settings = settings.model_copy(update={"retrain_cooldown_s": 0.0, "promotion_min_pairs": 5})
    assert promote_versions(settings, [0.9, 0.95], min_pairs=5) == "1"  # version 2 waits as challenger
    paths = [f"file:/cam/{i}.png" for i in range(5)]
    scored = {"predicted_label": ["circle"] * 5, "shadow_label": ["square"] * 5, "shadow_model_version": ["2"] * 5}
    Lake(settings).merge(IMAGES, pa.table({"path": paths, "load_date": [dt.date(2026, 11, 22)] * 5, **scored}))
    export = "".join(json.dumps({"image_url": path, "label": "circle"}) + "\n" for path in paths).encode()
    store = FakeStore({(settings.exports_container, "e/live.jsonl"): export})
    service = HandlerService(settings, backend=RemoteBackend(), store=store)
    service.start()
    try:
        event = blob_created_event(settings, settings.exports_container, "e/live.jsonl")
        service.submit([event])
        outcome = json.loads(_processed(service, event)["outcome"])
    finally:
        service.stop()

    assert outcome["labels"]["merged"] == 5
    live = outcome["promotion"]
    assert (live["outcome"], live["b"], live["c"], live["p_value"]) == ("refused", 5, 0, 1 / 32)
    assert str(registry.champion_version(settings).version) == "1"
    assert registry.version_by_alias(settings, registry.CHALLENGER) is None
    assert [r["outcome"] for r in Lake(settings).read(PROMOTION_DECISIONS).to_pylist()] == ["refused"]


def test_the_slow_lane_retries_a_transient_failure(settings: Settings, store: FakeStore) -> None:
    store.failures = 1
    service = HandlerService(settings, store=store)
    service.start()
    try:
        event = blob_created_event(settings, settings.exports_container, "e/labels.jsonl")
        service.submit([event])
        assert _processed(service, event)["status"] == EventStatus.DONE
    finally:
        service.stop()
    assert len(store.reads) == 2


def test_a_run_completed_without_the_retraining_tag_is_ignored(service: HandlerService) -> None:
    event = _run_completed("someone-elses", retraining=False)
    service.submit([event])
    logged = _processed(service, event)
    assert logged["status"] == EventStatus.IGNORED
    assert json.loads(logged["outcome"]) == {"reason": "not a lakesight retraining run"}


def test_a_retraining_run_completed_without_run_id_is_refused(service: HandlerService) -> None:
    event = _run_completed(None, retraining=True)
    service.submit([event])
    logged = _processed(service, event)
    assert logged["status"] == EventStatus.REFUSED and logged["outcome"] == "RunCompleted without runId"
    letters = read_dead_letters(service.settings)
    assert letters["count"] == 1 and letters["recent"][0]["reason"] == "RunCompleted without runId"


@pytest.mark.parametrize("declared", [10_000, 10])
def test_an_export_over_the_size_cap_is_refused_and_dead_lettered(
    settings: Settings, store: FakeStore, declared: int
) -> None:
    """Refused from the event's declared size before any read, or while streaming when the declared size lies."""
    capped = settings.model_copy(update={"max_export_bytes": 50})  # EXPORT is 88 bytes
    service = HandlerService(capped, store=store)
    service.start()
    try:
        event = blob_created_event(settings, settings.exports_container, "e/labels.jsonl", length=declared)
        service.submit([event])
        logged = _processed(service, event)
    finally:
        service.stop()
    assert logged["status"] == EventStatus.REFUSED
    assert logged["outcome"] == "export larger than 50 bytes (LAKESIGHT_MAX_EXPORT_BYTES)"
    assert len(store.reads) == (0 if declared > 50 else 1)
    assert read_dead_letters(settings)["recent"][0]["reason"] == logged["outcome"]
    assert not Lake(settings).exists(LABEL_REJECTS)  # nothing of it was applied


def test_a_retraining_run_completed_finishes_its_submitted_launch(service: HandlerService) -> None:
    launcher = service.launcher
    launcher.request("trigger-1", "new_labels", 4)
    _submitted(launcher, 1)
    event = _run_completed("run-1", retraining=True)
    service.submit([event])
    logged = _processed(service, event)
    assert logged["status"] == EventStatus.DONE
    outcome = json.loads(logged["outcome"])
    assert outcome == {"launch_id": 1, "promotion": {"promoted": False, "reason": "no model registry yet"}}
    assert [x["status"] for x in launcher.launches()] == [LaunchStatus.SUCCEEDED]


def test_an_unknown_type_is_acknowledged_and_ignored(service: HandlerService) -> None:
    event = Event(id="contoso-1", type="Contoso.Items.ItemReceived", subject="", time="", data={})
    assert service.submit([event]) == {"accepted": 0, "duplicates": 0, "ignored": 1}
    logged = service.events.get(event.id)  # finished at intake, before any lane
    assert logged["status"] == EventStatus.IGNORED and logged["outcome"] == f"unknown event type {event.type}"


def _submitted(launcher, count: int) -> None:
    wait_until(
        lambda: [x["status"] for x in launcher.launches()][count - 1 : count] == [LaunchStatus.SUBMITTED],
        "a submitted launch",
    )


def test_a_failed_retraining_run_frees_the_launcher(service: HandlerService) -> None:
    launcher = service.launcher
    launcher.request("trigger-1", "new_labels", 4)
    _submitted(launcher, 1)
    failed = Event(
        id="status-1",
        type=RUN_STATUS_CHANGED,
        subject="/runs/run-1",
        time="",
        data={"runId": "run-1", "runStatus": "Failed", "runTags": {RETRAINING_TAG: "true"}},
    )
    service.submit([failed])
    logged = _processed(service, failed)
    assert logged["status"] == EventStatus.DONE and json.loads(logged["outcome"]) == {
        "launch_id": 1,
        "run_status": "Failed",
    }
    (launch,) = launcher.launches()
    assert launch["status"] == LaunchStatus.FAILED and "ended Failed" in launch["outcome"]
    launcher.request("trigger-2", "new_labels", 5)  # the single flight is free again
    _submitted(launcher, 2)


def test_a_run_that_never_reports_back_is_failed_at_its_deadline(settings: Settings, store: FakeStore) -> None:
    configured = settings.model_copy(update={"retrain_cooldown_s": 0.0, "retrain_run_deadline_s": 1.0})
    service = HandlerService(configured, backend=RemoteBackend(), store=store)
    service.start()
    try:
        launcher = service.launcher
        launcher.request("trigger-1", "new_labels", 4)
        _submitted(launcher, 1)
        wait_until(lambda: launcher.launches()[0]["status"] == LaunchStatus.FAILED, "the deadline to fail the launch")
        assert "retrain_run_deadline_s=1" in launcher.launches()[0]["outcome"]
        launcher.request("trigger-2", "new_labels", 5)
        _submitted(launcher, 2)
    finally:
        service.stop()
