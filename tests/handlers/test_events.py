"""Payload parsing: both schemas in, one Event shape out; anything else is a PayloadError."""

from __future__ import annotations

import json

import pytest

from handlers.api.payloads import CLOUDEVENTS_BATCH, CLOUDEVENTS_SINGLE, PayloadError, parse_events


def _eg(event_id: str = "e1") -> dict:
    return {
        "id": event_id,
        "eventType": "Microsoft.Storage.BlobCreated",
        "subject": "/s",
        "data": {"a": 1},
        "dataVersion": "",
        "eventTime": "2026-01-02T03:04:05.1234567Z",
        "topic": "/t",
    }


def _ce(event_id: str = "c1") -> dict:
    return {
        "specversion": "1.0",
        "id": event_id,
        "type": "Microsoft.Storage.BlobCreated",
        "source": "/t",
        "subject": "/s",
        "time": "2026-01-02T03:04:05Z",
        "data": {"a": 1},
    }


def test_eventgrid_array() -> None:
    events = parse_events(json.dumps([_eg("a"), _eg("b")]).encode(), "application/json")
    assert [e.id for e in events] == ["a", "b"]
    assert events[0].schema == "eventgrid" and events[0].data == {"a": 1} and events[0].source == "/t"


def test_cloudevents_single_and_batch() -> None:
    single = parse_events(json.dumps(_ce()).encode(), CLOUDEVENTS_SINGLE)
    batch = parse_events(json.dumps([_ce("x"), _ce("y")]).encode(), f"{CLOUDEVENTS_BATCH}; charset=utf-8")
    assert single[0].schema == "cloudevents" and single[0].type == "Microsoft.Storage.BlobCreated"
    assert [e.id for e in batch] == ["x", "y"]


@pytest.mark.parametrize(
    "body",
    [
        b'[{"id": "a", "eventType": "x"',  # truncated
        b"{}",  # an object that is neither a CloudEvent nor an array
        b"[]",
        json.dumps([{"eventType": "x"}]).encode(),  # no id
        json.dumps([_eg(), {"id": "b"}]).encode(),  # one bad event spoils the batch (all-or-none)
        json.dumps([{**_eg(), "data": "text"}]).encode(),
        json.dumps({**_ce(), "specversion": "0.3"}).encode(),
        b"\xff\xfe",
        b"[" * 10_000 + b"]" * 10_000,  # used to raise RecursionError (a 500)
        json.dumps([{**_eg(), "id": "a\nb"}]).encode(),  # control characters in an identifying field
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_events(body, "application/json")


@pytest.mark.parametrize(
    "content_type", ["", "application/json", "Application/JSON; charset=UTF-8", 'application/json;charset="utf-8"']
)
def test_json_content_types_are_read(content_type: str) -> None:
    assert parse_events(json.dumps([_eg()]).encode(), content_type)[0].id == "e1"


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/json; charset=utf-16"])
def test_other_content_types_are_refused(content_type: str) -> None:
    with pytest.raises(PayloadError, match=r"not JSON|not UTF-8"):
        parse_events(json.dumps([_eg()]).encode(), content_type)
