"""Payload models: Event Grid schema and CloudEvents 1.0 bodies parsed into one :class:`Event` shape.

Event Grid batches are all-or-none, so one malformed event makes the whole body a 400. Bodies are
untrusted: they are parsed by :func:`handlers.api.safe_json.loads` (depth, number range, duplicate
keys, UTF-8), so nothing a sender writes can make the request path fail with anything but a
:class:`PayloadError`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from handlers.api import safe_json
from infra.core.drift import DRIFT_EVENT_TYPE
from infra.errors import LakesightError

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
DATASET_DRIFT = "Microsoft.MachineLearningServices.DatasetDriftDetected"
RUN_COMPLETED = "Microsoft.MachineLearningServices.RunCompleted"
RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"
IMAGE_DRIFT = DRIFT_EVENT_TYPE  # published by the scoring stream's drift monitor (infra.core.drift)

CLOUDEVENTS_SINGLE = "application/cloudevents+json"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
# What Event Grid and CloudEvents senders declare; a body without a content type is read as JSON too.
JSON_MEDIA_TYPES = frozenset({"", "application/json", CLOUDEVENTS_SINGLE, CLOUDEVENTS_BATCH})

# An event's id and type end up in log lines and database keys: no control characters there.
# (Other fields are checked where they are used: a subject against its blob URL, a time by parsing.)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_IDENTIFYING = frozenset({"id", "eventType", "type"})

# The upload APIs whose BlobCreated marks a complete blob (docs/PLATFORM.md: chunked uploads and
# async copies emit extra events for partial or empty blobs).
COMPLETE_BLOB_APIS = frozenset({"PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose"})


class PayloadError(LakesightError, ValueError):
    """The request body is not a valid Event Grid or CloudEvents payload (answered with 400)."""


@dataclass(frozen=True)
class Event:
    """One delivered event, whatever the schema it came in."""

    id: str
    type: str
    subject: str
    time: str
    data: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    schema: str = "eventgrid"

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "type": self.type,
                "subject": self.subject,
                "time": self.time,
                "data": self.data,
                "source": self.source,
                "schema": self.schema,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Event:
        return cls(**json.loads(text))


def _text(obj: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise PayloadError(f"event is missing {key!r}")
        return ""
    if not isinstance(value, str) or (required and not value):
        raise PayloadError(f"event field {key!r} must be a non-empty string")
    if key in _IDENTIFYING and _CONTROL.search(value):
        raise PayloadError(f"event field {key!r} contains control characters")
    return value


def _data(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PayloadError("event data must be a JSON object")
    return value


def _eventgrid(obj: Any) -> Event:
    if not isinstance(obj, dict):
        raise PayloadError("each Event Grid event must be a JSON object")
    return Event(
        id=_text(obj, "id"),
        type=_text(obj, "eventType"),
        subject=_text(obj, "subject", required=False),
        time=_text(obj, "eventTime", required=False),
        data=_data(obj.get("data")),
        source=_text(obj, "topic", required=False),
        schema="eventgrid",
    )


def _cloudevent(obj: Any) -> Event:
    if not isinstance(obj, dict):
        raise PayloadError("each CloudEvent must be a JSON object")
    if obj.get("specversion") != "1.0":
        raise PayloadError("only CloudEvents specversion 1.0 is accepted")
    return Event(
        id=_text(obj, "id"),
        type=_text(obj, "type"),
        subject=_text(obj, "subject", required=False),
        time=_text(obj, "time", required=False),
        data=_data(obj.get("data")),
        source=_text(obj, "source"),
        schema="cloudevents",
    )


def media_type(content_type: str) -> str:
    """The media type of a ``Content-Type`` header, or :class:`PayloadError` unless it is JSON in UTF-8."""
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media not in JSON_MEDIA_TYPES:
        raise PayloadError(f"content type {media[:60]!r} is not JSON (application/json or CloudEvents)")
    charset = next((p.split("=", 1)[1] for p in params.split(";") if p.strip().lower().startswith("charset=")), "")
    if charset and charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
        raise PayloadError(f"charset {charset.strip()[:30]!r} is not UTF-8")
    return media


def parse_events(body: bytes, content_type: str) -> list[Event]:
    """Events in ``body``: an Event Grid array, a CloudEvent, or a CloudEvents batch.

    Raises :class:`PayloadError` for anything else (truncated JSON, wrong shapes, missing ids).
    """
    media = media_type(content_type)
    try:
        payload = safe_json.loads(body)
    except safe_json.UntrustedJSONError as exc:
        raise PayloadError(f"body refused: {exc}") from exc
    if media == CLOUDEVENTS_SINGLE or (isinstance(payload, dict) and "specversion" in payload):
        return [_cloudevent(payload)]
    if not isinstance(payload, list):
        raise PayloadError("expected a JSON array of events")
    if not payload:
        raise PayloadError("the event array is empty")
    if media == CLOUDEVENTS_BATCH or (isinstance(payload[0], dict) and "specversion" in payload[0]):
        return [_cloudevent(item) for item in payload]
    return [_eventgrid(item) for item in payload]
