"""The handler's Label Studio worker against a real Label Studio: the hand-off's picks become tasks
exactly once (also after Label Studio was unreachable), the pull applies what no webhook delivered
once per version, and a deleted annotation (webhook or pull) gives the image its previous label back."""

from __future__ import annotations

import uuid

import httpx
import pytest

from handlers.api.app import create_app
from handlers.intake.label_studio import DELETED
from handlers.intake.label_studio_sync import LabelStudioSync
from handlers.intake.service import HandlerService
from handlers.server import running
from infra.core.labeling.label_studio import LabelStudioClient, LabelStudioError, choice_result
from infra.core.status import labeling_service_state
from infra.lake import Lake
from infra.local.label_studio import LabelStudio
from infra.processes import free_port
from infra.settings import Settings
from infra.tables import IMAGES, LABEL_HISTORY, LABEL_STUDIO_ANNOTATIONS, RETRAINING_DECISIONS
from tests.handlers.test_label_matching import labels_of, send, sources
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.azurite, pytest.mark.slow]


def with_label_studio(labeling: Settings, label_studio: LabelStudio, **overrides: object) -> Settings:
    """The test's lake wired to the session's Label Studio, in a project of its own (the model name)."""
    values = {
        "labeling_service": "label-studio",
        "label_studio_port": label_studio.settings.label_studio_port,
        "model_name": f"sync-{uuid.uuid4().hex[:8]}",
        "handler_port": free_port(),  # the webhook goes to this test's handler, or to nothing
        "label_studio_sync_s": 0.5,
        **overrides,
    }
    return labeling.model_copy(update=values)


def signed_in(settings: Settings) -> LabelStudioClient:
    return LabelStudioClient(
        f"http://127.0.0.1:{settings.label_studio_port}", settings.label_studio_email, settings.label_studio_secret()
    )


def project_tasks(client: LabelStudioClient, settings: Settings) -> list[dict]:
    return client.tasks(client.project(settings.model_name, ["0", "1"]))


def test_picks_wait_while_label_studio_is_unreachable_and_become_tasks_exactly_once(
    label_studio: LabelStudio, labeling: Settings
) -> None:
    settings = with_label_studio(labeling, label_studio)
    first = send(settings, sources(settings, 2))
    unreachable = LabelStudioSync(settings.model_copy(update={"label_studio_port": free_port()}))
    with pytest.raises(LabelStudioError, match="unreachable"):
        unreachable.sync_once()
    assert unreachable.cursor() is None  # nothing moved on: the picks are still to send

    sync = LabelStudioSync(settings)
    assert sync.sync_once()["tasks_created"] == len(first)
    assert sync.sync_once()["tasks_created"] == 0  # a second round makes nothing twice
    second = send(settings, sources(settings, 4)[2:4], batch_id=1)
    fresh = {line["task_id"] for line in second} - {line["task_id"] for line in first}
    assert sync.sync_once()["tasks_created"] == len(fresh)

    client = signed_in(settings)
    tasks = project_tasks(client, settings)
    wanted = {line["task_id"]: line for line in first + second}
    assert sorted(t["data"]["task_id"] for t in tasks) == sorted(wanted)  # each exactly once
    for task in tasks:  # the champion's answer, version and score, as the pre-annotation
        line = wanted[task["data"]["task_id"]]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == str(line["model_version"])
        assert prediction["score"] == pytest.approx(line["confidence"])
        assert prediction["result"] == choice_result(str(line["predicted_label"]))
    client.close()


def test_the_pull_applies_each_annotation_version_once_and_a_deletion_restores_the_previous_label(
    label_studio: LabelStudio, labeling: Settings
) -> None:
    settings = with_label_studio(labeling, label_studio)
    manifest = send(settings, sources(settings, 1))
    sync = LabelStudioSync(settings)
    sync.sync_once()
    client = signed_in(settings)
    task = next(t for t in project_tasks(client, settings) if t["data"]["task_id"] == manifest[0]["task_id"])
    path = manifest[0]["source_url"]
    lake = Lake(settings)

    first = client.annotate(task["id"], "1")  # no handler listens: the webhook is missed
    assert sync.sync_once()["annotations_pulled"] == 1
    assert labels_of(lake)[path] == "1"
    service = labeling_service_state(settings, lake)  # what the status shows
    assert (service["name"], service["tasks_open"], service["annotations_received"]) == (
        "label-studio",
        len(manifest) - 1,
        1,
    )
    assert (service["by_webhook"], service["by_pull"]) == (0, 1)
    version = lake.version(IMAGES)
    assert sync.sync_once()["annotations_pulled"] == 0  # the same version is never applied twice
    assert lake.version(IMAGES) == version

    second = client.annotate(task["id"], "0")  # a second labeler disagrees, later
    sync.sync_once()
    assert labels_of(lake)[path] == "0"

    client.api("DELETE", f"/api/annotations/{second['id']}")
    sync.sync_once()
    assert labels_of(lake)[path] == "1"  # the label the deleted one replaced is back
    history = {(h["label"], h["reason"]) for h in lake.read(LABEL_HISTORY).to_pylist()}
    assert ("0", DELETED) in history

    client.api("DELETE", f"/api/annotations/{first['id']}")
    sync.sync_once()
    assert labels_of(lake)[path] is None  # no human label left
    deleted = {r["annotation_id"] for r in lake.read(LABEL_STUDIO_ANNOTATIONS).to_pylist() if r["deleted_at"]}
    assert deleted == {first["id"], second["id"]}
    client.close()


def test_the_handler_creates_tasks_and_takes_created_and_deleted_annotations_by_webhook(
    label_studio: LabelStudio, labeling: Settings
) -> None:
    settings = with_label_studio(labeling, label_studio)
    manifest = send(settings, sources(settings, 1))
    path = manifest[0]["source_url"]
    service = HandlerService(settings)
    assert service.label_studio is not None
    lake = Lake(settings)
    with running(create_app(settings, service=service), port=settings.handler_port):
        assert service.label_studio.wait_synced(timeout=120), service.label_studio.stats
        client = signed_in(settings)
        task = next(t for t in project_tasks(client, settings) if t["data"]["task_id"] == manifest[0]["task_id"])
        first = client.annotate(task["id"], "1")
        wait_until(lambda: labels_of(lake).get(path) == "1", "the created annotation's webhook")
        # The labels start what an export's start: the retraining policy decides (once per round).
        wait_until(lambda: "label-studio" in triggers(lake), "a retraining decision on Label Studio's labels")
        second = client.annotate(task["id"], "0")
        wait_until(lambda: labels_of(lake).get(path) == "0", "the second annotation's webhook")
        client.api("DELETE", f"/api/annotations/{second['id']}")
        wait_until(lambda: labels_of(lake).get(path) == "1", "the deletion's webhook")
        hook = f"http://127.0.0.1:{settings.handler_port}/api/label-studio"
        deletion = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": first["id"]}], "project": {"id": 1}}
        assert httpx.post(hook, json=deletion).status_code == 401
        assert httpx.post(hook, json={"action": "ANNOTATIONS_DELETED"}, headers=key(settings)).status_code == 400
        client.close()
    received = {r["annotation_id"]: r["via"] for r in lake.read(LABEL_STUDIO_ANNOTATIONS).to_pylist()}
    assert received == {first["id"]: "webhook", second["id"]: "webhook"}


def triggers(lake: Lake) -> list[str]:
    if not lake.exists(RETRAINING_DECISIONS):
        return []
    return lake.read(RETRAINING_DECISIONS, columns=["trigger"]).column("trigger").to_pylist()


def key(settings: Settings) -> dict[str, str]:
    return {"aeg-sas-key": settings.event_secret()}
