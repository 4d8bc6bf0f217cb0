"""The Label Studio webhook route without a Label Studio: bad input, other actions, unknown tasks."""

from __future__ import annotations

import httpx
import pytest

from handlers.api.routes.events import EVENTS_PATH
from handlers.api.routes.label_studio import LABEL_STUDIO_PATH
from infra.core.labeling.label_studio import choice_result
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import LABEL_REJECTS
from tests.handlers.test_label_matching import labels_of, send, sources
from tests.helpers.handlers import serving

pytestmark = pytest.mark.azurite


def payload(task_id: str, label: str, *, annotation: int = 7, at: str = "2026-12-03T12:00:00.000000Z") -> dict:
    """What Label Studio posts for a created annotation (the fields lakesight reads, and a few more)."""
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": annotation, "result": choice_result(label), "updated_at": at, "was_cancelled": False},
        "task": {"id": 3, "data": {"image": "https://elsewhere.blob.core.windows.net/c/x.png", "task_id": task_id}},
        "project": {"id": 1},
    }


def test_the_webhook_applies_known_tasks_and_rejects_the_rest(labeling: Settings) -> None:
    manifest = send(labeling, sources(labeling, 1))
    key = {"aeg-sas-key": labeling.event_secret()}
    with serving(labeling) as (events_url, _service):
        hook = events_url.removesuffix(EVENTS_PATH) + LABEL_STUDIO_PATH
        assert httpx.post(hook, content=b"{not json", headers=key).status_code == 400
        assert httpx.post(hook, json={"action": "ANNOTATION_CREATED"}, headers=key).status_code == 400
        ignored = httpx.post(hook, json={"action": "PROJECT_UPDATED", "project": {"id": 1}}, headers=key)
        assert ignored.status_code == 200 and ignored.json()["applied"] is False

        known = httpx.post(hook, json=payload(manifest[0]["task_id"], "1"), headers=key)
        assert known.status_code == 200 and known.json()["labels"]["merged"] == 1
        unknown = httpx.post(hook, json=payload("no-such-task", "1", annotation=8), headers=key)
        assert unknown.status_code == 200 and unknown.json()["labels"]["rejected"] == {"unknown image": 1}
        bad_class = httpx.post(hook, json=payload(manifest[1]["task_id"], "7", annotation=9), headers=key)
        assert bad_class.json()["labels"]["rejected"] == {"unknown class": 1}

    lake = Lake(labeling)
    assert labels_of(lake)[manifest[0]["source_url"]] == "1"
    assert sorted(r["reason"] for r in lake.read(LABEL_REJECTS).to_pylist()) == ["unknown class", "unknown image"]
