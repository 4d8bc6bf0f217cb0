"""Hostile webhook bodies: every one must be answered with a 4xx and a one-line reason, never a 5xx.

One place so the corpus can grow: add a :class:`Hostile` to :func:`hostile_bodies` and every test
that walks the corpus (tests/handlers/test_routes.py) checks it over real HTTP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

JSON = "application/json; charset=utf-8"
DEPTH = 10_000


@dataclass(frozen=True)
class Hostile:
    name: str
    body: bytes
    content_type: str | None = JSON  # None: no Content-Type header at all
    status: int = 400


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _with_raw(event: dict[str, Any], field: str, raw: str) -> bytes:
    """``[event]`` with ``event["data"][field]`` written as the raw JSON text ``raw`` (what json.dumps cannot write)."""
    marker = "__RAW__"
    data = {**event["data"], field: marker}
    return _dumps([{**event, "data": data}]).replace(f'"{marker}"'.encode(), raw.encode())


def _cloudevent(event: dict[str, Any]) -> dict[str, Any]:
    return {"specversion": "1.0", "id": event["id"], "type": event["eventType"], "source": "/s", "data": event["data"]}


def hostile_bodies(event: dict[str, Any], max_body_bytes: int) -> list[Hostile]:
    """The corpus, built around ``event`` (a valid Event Grid BlobCreated as a dict) and the body limit."""
    valid = _dumps([event])
    nested_data = _with_raw(event, "deep", "[" * DEPTH + "]" * DEPTH)
    return [
        # Depth: the C scanner's RecursionError, and a depth it parses but code walking it must not.
        Hostile("nested arrays 10k", b"[" * DEPTH + b"]" * DEPTH),
        Hostile("nested objects 10k", b'{"a":' * DEPTH + b"1" + b"}" * DEPTH),
        Hostile("nested 10k inside data", nested_data),
        Hostile("nested 100 inside data", _with_raw(event, "deep", "[" * 100 + "]" * 100)),
        # Numbers: beyond the int-conversion limit, beyond 64 bits, beyond float, not numbers.
        Hostile("integer of 5000 digits", _with_raw(event, "contentLength", "9" * 5000)),
        Hostile("integer 10^30", _with_raw(event, "contentLength", "1" + "0" * 30)),
        Hostile("float 1e400", _with_raw(event, "contentLength", "1e400")),
        Hostile("NaN", _with_raw(event, "contentLength", "NaN")),
        Hostile("Infinity", _with_raw(event, "contentLength", "Infinity")),
        Hostile("-Infinity", _with_raw(event, "contentLength", "-Infinity")),
        # Text: not UTF-8, another encoding, a BOM, lone surrogates, control characters in keys.
        Hostile("invalid UTF-8", valid.replace(b'"id": "', b'"id": "\xff\xfe', 1)),
        Hostile("UTF-16 body", json.dumps([event]).encode("utf-16")),
        Hostile("UTF-8 BOM", b"\xef\xbb\xbf" + valid),
        Hostile("lone surrogate in id", _dumps([{**event, "id": "\ud800"}])),
        Hostile("lone surrogate in data", _with_raw(event, "contentType", '"\\udfff"')),
        Hostile("newline in id", _dumps([{**event, "id": "a\nb"}])),
        Hostile("NUL in eventType", _dumps([{**event, "eventType": "Microsoft.Storage.BlobCreated\u0000"}])),
        # Ambiguity: the same key twice.
        Hostile("duplicate key in event", valid.replace(b'{"id": ', b'{"id": "first", "id": ', 1)),
        Hostile("duplicate key in data", _with_raw(event, "api", '"PutBlob", "api": "PutBlock"')),
        # Shapes: wrong top-level types, arrays of non-objects, empty.
        Hostile("0-byte body", b""),
        Hostile("whitespace only", b" \n\t "),
        Hostile("top-level string", b'"events"'),
        Hostile("top-level number", b"42"),
        Hostile("top-level null", b"null"),
        Hostile("top-level true", b"true"),
        Hostile("object, not an event array", b'{"hello": 1}'),
        Hostile("empty array", b"[]"),
        Hostile("array of numbers", b"[1, 2, 3]"),
        Hostile("array of strings", b'["a"]'),
        Hostile("array of arrays", b"[[]]"),
        Hostile("array of nulls", b"[null]"),
        Hostile("truncated", valid[: len(valid) // 2]),
        Hostile("trailing garbage", valid + b" x"),
        # Fields: missing, wrong types.
        Hostile("id missing", _dumps([{k: v for k, v in event.items() if k != "id"}])),
        Hostile("id a number", _dumps([{**event, "id": 7}])),
        Hostile("id empty", _dumps([{**event, "id": ""}])),
        Hostile("eventType missing", _dumps([{k: v for k, v in event.items() if k != "eventType"}])),
        Hostile("data a string", _dumps([{**event, "data": "text"}])),
        Hostile("data a list", _dumps([{**event, "data": [1]}])),
        Hostile("subject an object", _dumps([{**event, "subject": {}}])),
        Hostile(
            "validation code a number",
            _dumps(
                [
                    {
                        "id": "v",
                        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                        "data": {"validationCode": 5},
                    }
                ]
            ),
        ),
        # Schemas: Event Grid and CloudEvents mixed, or declared as the other.
        Hostile("Event Grid then CloudEvent", _dumps([event, _cloudevent(event)])),
        Hostile("CloudEvent then Event Grid", _dumps([_cloudevent(event), event])),
        Hostile("Event Grid array as a CloudEvents batch", valid, "application/cloudevents-batch+json"),
        Hostile("array as a single CloudEvent", valid, "application/cloudevents+json"),
        Hostile("Event Grid object as a single CloudEvent", _dumps(event), "application/cloudevents+json"),
        Hostile("CloudEvent specversion 0.3", _dumps({**_cloudevent(event), "specversion": "0.3"})),
        Hostile("CloudEvent without source", _dumps({k: v for k, v in _cloudevent(event).items() if k != "source"})),
        # Content types that are not JSON in UTF-8.
        Hostile("text/plain", valid, "text/plain"),
        Hostile("XML", b"<events><event id='1'/></events>", "application/xml"),
        Hostile("form", b"id=1&eventType=x", "application/x-www-form-urlencoded"),
        Hostile("charset utf-16", valid, "application/json; charset=utf-16"),
        # Size: over the limit (declared by Content-Length).
        Hostile("over-size body", b"[" + b" " * max_body_bytes + b"]", status=413),
    ]
