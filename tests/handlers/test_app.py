"""The webhook over real HTTP (uvicorn on a free port), with events sent by the azure-eventgrid SDK."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid

import httpx
import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.messaging import CloudEvent

from handlers.api.payloads import BLOB_CREATED, Event
from handlers.intake.eventlog import EventLog, EventStatus
from infra.core.status import snapshot
from infra.deadletters import dead_letter_path, read_dead_letters
from infra.settings import Settings
from tests.helpers.handlers import arrival_lines, blob_data, blob_event, blob_event_dict, serving

KEY = {"aeg-sas-key": "local-dev-key"}


def test_subscription_validation_and_cloudevents_handshake(server) -> None:
    url, _ = server
    validation = [
        {
            "id": "v1",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "subject": "",
            "data": {
                "validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
                "validationUrl": "https://rp-eastus2.eventgrid.azure.net/...",
            },
            "dataVersion": "2",
            "eventTime": "2026-01-01T00:00:00Z",
        }
    ]
    response = httpx.post(
        url, json=validation, params={"code": "local-dev-key"}, headers={"aeg-event-type": "SubscriptionValidation"}
    )
    assert response.status_code == 200
    assert response.json() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}

    options = httpx.request("OPTIONS", url, headers={**KEY, "WebHook-Request-Origin": "eventemitter.example.com"})
    assert options.status_code == 200
    assert options.headers["WebHook-Allowed-Origin"] == "eventemitter.example.com"
    assert "POST" in options.headers["Allow"]
    assert httpx.request("OPTIONS", url, headers={"WebHook-Request-Origin": "x"}).status_code == 401
    assert httpx.get(url.replace("/api/events", "/healthz")).json()["status"] == "ok"


def test_auth_size_and_malformed(settings: Settings, server, publisher) -> None:
    url, service = server
    event = blob_event(settings, "images", "a.png")
    with pytest.raises(HttpResponseError) as wrong:
        publisher(url, "not-the-key").send([event])
    assert wrong.value.status_code == 401
    body = [blob_event_dict(settings, "images", "b.png")]
    assert httpx.post(url, json=body).status_code == 401  # no key at all
    assert httpx.post(url, json=body, params={"code": "local-dev-key"}).status_code == 200  # key in the query

    assert httpx.post(url, content=b'[{"id": "x", "eventType": ', headers=KEY).status_code == 400
    assert httpx.post(url, content=b'{"hello": 1}', headers=KEY).status_code == 400

    limit = settings.max_event_body_bytes
    big = b"[" + b" " * limit + b"]"
    assert httpx.post(url, content=big, headers=KEY).status_code == 413  # declared Content-Length

    def chunks():  # no Content-Length: the limit must hold on the streamed body
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    assert httpx.post(url, content=chunks(), headers=KEY).status_code == 413
    assert service.wait_idle()
    # Nothing that was refused left a trace in the event log; the one accepted event did.
    assert service.events.counts() == {EventStatus.DONE: 1}


def test_both_schemas_write_arrival_records(settings: Settings, server, publisher) -> None:
    url, service = server
    publisher(url).send(
        [
            blob_event(settings, "images", "2026/01/a.png", etag="0x8DA"),
            blob_event(settings, "images", "2026/01/b.png", etag="0x8DB"),
        ]
    )
    base = blob_event(settings, "images", "x").data["url"].removesuffix("x")
    cloud = CloudEvent(
        source="/subscriptions/s/storageAccounts/devstoreaccount1",
        type=BLOB_CREATED,
        subject="/blobServices/default/containers/images/blobs/c.png",
        data=blob_data(f"{base}c.png", etag="0x8DC"),
    )
    publisher(url).send([cloud])  # the SDK sends application/cloudevents-batch+json
    single = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "type": BLOB_CREATED,
        "source": "/s",
        "subject": "/blobServices/default/containers/images/blobs/d.png",
        "data": blob_data(f"{base}d.png", etag="0x8DD"),
    }
    response = httpx.post(
        url, content=json.dumps(single), headers={**KEY, "content-type": "application/cloudevents+json; charset=utf-8"}
    )
    assert response.status_code == 200 and response.json()["accepted"] == 1
    assert service.wait_idle()
    records = {r["name"]: r for r in arrival_lines(settings)}
    assert sorted(records) == ["2026/01/a.png", "2026/01/b.png", "c.png", "d.png"]
    first = records["2026/01/a.png"]
    assert first["url"].endswith("/images/2026/01/a.png") and first["etag"] == "0x8DA"
    assert first["content_type"] == "image/png" and first["content_length"] == 1234
    assert first["container"] == "images" and first["event_id"]


def test_replay_and_concurrent_duplicates_have_one_effect(settings: Settings, server, publisher) -> None:
    url, service = server
    events = [blob_event(settings, "images", f"dup/{i}.png") for i in range(20)]
    publisher(url).send(events)
    publisher(url).send(events)  # a replay of the whole batch

    again = [blob_event(settings, "images", f"race/{i}.png") for i in range(20)]
    barrier = threading.Barrier(4)
    errors = []

    def deliver() -> None:
        client = publisher(url)
        barrier.wait()
        try:
            client.send(again)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    # Same upload (url, eTag) under a new event id: suppressed too.
    clone = blob_event(settings, "images", "dup/0.png", etag=events[0].data["eTag"])
    publisher(url).send([clone])
    assert service.wait_idle()
    names = [r["name"] for r in arrival_lines(settings)]
    assert len(names) == 40 and len(set(names)) == 40
    assert service.duplicates_suppressed == 20 + 3 * 20 + 1
    assert service.events.get(clone.id)["status"] == EventStatus.DUPLICATE


def test_guards_and_refusals_are_logged(settings: Settings, server, publisher) -> None:
    url, service = server
    cases = {
        "put-block": blob_event(settings, "images", "p.png", api="PutBlock"),
        "empty": blob_event(settings, "images", "e.png", length=0),
        "other-container": blob_event(settings, "secrets", "s.png"),
        "unsafe-name": blob_event(settings, "images", "a/../../etc/passwd"),
        "not-export": blob_event(settings, "labeling-exports", "notes.txt"),
    }
    foreign = blob_event(settings, "images", "f.png")
    foreign.data["url"] = "https://evil.blob.core.windows.net/images/f.png"
    cases["other-account"] = foreign
    unknown = CloudEvent(source="/x", type="Contoso.Items.ItemReceived", data={"k": 1})
    publisher(url).send(list(cases.values()))
    publisher(url).send([unknown])
    assert service.wait_idle()
    status = {name: service.events.get(e.id)["status"] for name, e in cases.items()}
    assert status == {
        "put-block": "ignored",
        "empty": "ignored",
        "other-container": "refused",
        "unsafe-name": "refused",
        "not-export": "ignored",
        "other-account": "refused",
    }
    assert "outside the configured storage account" in service.events.get(foreign.id)["outcome"]
    logged = service.events.get(unknown.id)
    assert logged["status"] == EventStatus.IGNORED and "unknown event type" in logged["outcome"]
    assert arrival_lines(settings) == []


def test_event_log_survives_restart(settings: Settings, publisher) -> None:
    event = blob_event(settings, "images", "keep.png")
    with serving(settings) as (url, service):
        publisher(url).send([event])
        assert service.wait_idle()
    # A crash after the claim but before processing: the event is pending in the log.
    orphan = Event(
        id="orphan-1",
        type=BLOB_CREATED,
        subject="",
        time="2026-01-01T00:00:00Z",
        data=blob_event(settings, "images", "orphan.png").data,
    )
    log = EventLog(settings.state_dir / "handlers" / "events.db")
    assert log.claim([orphan]).new == [orphan]
    log.close()
    with serving(settings) as (url, service):
        publisher(url).send([event])  # redelivered after the restart
        assert service.wait_idle()
        assert service.duplicates_suppressed == 1
        assert service.events.get("orphan-1")["status"] == EventStatus.DONE  # re-queued at start
    assert sorted(r["name"] for r in arrival_lines(settings)) == ["keep.png", "orphan.png"]


def test_a_refused_event_inside_a_valid_batch_is_dead_lettered(settings: Settings, server, publisher) -> None:
    """Event Grid batches are all-or-none: the batch is acknowledged, the refused events are kept locally."""
    url, service = server
    good = blob_event(settings, "images", "good.png")
    boolean_length = blob_event(settings, "images", "bool.png", length=True)
    unsafe = blob_event(settings, "images", "a/../../etc/passwd")
    publisher(url).send([good, boolean_length, unsafe])  # 200: raises otherwise
    assert service.wait_idle()
    assert [r["name"] for r in arrival_lines(settings)] == ["good.png"]
    letters = read_dead_letters(settings)
    assert letters["count"] == 2
    reasons = {r["event_id"]: (r["status"], r["reason"]) for r in letters["recent"]}
    assert reasons[boolean_length.id] == ("refused", "contentLength True is not a byte count")
    assert reasons[unsafe.id][0] == "refused" and "unsafe blob url" in reasons[unsafe.id][1]
    with sqlite3.connect(dead_letter_path(settings)) as conn:
        kept = dict(conn.execute("SELECT event_id, event FROM dead_letters").fetchall())
    assert json.loads(kept[unsafe.id])["data"]["url"] == unsafe.data["url"]  # the raw event, for a replay
    assert snapshot(settings)["dead_letters"] == letters
