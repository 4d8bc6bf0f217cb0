"""A real Label Studio (from .venv-labelstudio) over its HTTP API: tasks from the hand-off's manifest
with the champion's pre-annotation, a labeler's annotations, and their labels merged by task id."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from handlers.api.routes.events import EVENTS_PATH
from handlers.api.routes.label_studio import LABEL_STUDIO_PATH
from handlers.intake.label_exports import REPLACED
from handlers.intake.label_studio import pull_labels
from infra.core.labeling.label_studio import LabelStudioClient, choice_result
from infra.lake import Lake
from infra.local.label_studio import LabelStudio
from infra.settings import Settings
from infra.tables import IMAGES, LABEL_HISTORY
from tests.handlers.conftest import CLASSES
from tests.handlers.test_label_matching import labels_of, send, sources
from tests.helpers.handlers import serving

pytestmark = [pytest.mark.azurite, pytest.mark.slow]


def test_a_labeler_labels_in_label_studio_and_the_labels_merge(label_studio: LabelStudio, labeling: Settings) -> None:
    manifest = send(labeling, sources(labeling, 2))
    settings = label_studio.settings
    client = LabelStudioClient(label_studio.url, settings.label_studio_email, settings.label_studio_secret())
    title = f"classifier-{uuid.uuid4().hex[:8]}"  # the session's Label Studio serves other tests too
    project = client.project(title, CLASSES)
    assert client.project(title, CLASSES) == project  # one project per model
    assert client.import_tasks(project, manifest) == len(manifest)

    tasks = client.tasks(project)
    by_copy = {task["data"]["image"]: task for task in tasks}
    assert set(by_copy) == {line["image_url"] for line in manifest}
    for task in tasks:  # the champion's answer is there for the labeler to confirm or correct
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "1" and prediction["result"] == choice_result("0")

    for task in tasks:  # the labeler corrects every one, as the labeling page submits it
        client.annotate(task["id"], "1")
    lake = Lake(labeling)
    report = pull_labels(labeling, lake, client, project, classes=CLASSES)
    assert report.merged == len(manifest) and report.rejected == {}, report.as_dict()
    assert labels_of(lake) == {line["source_url"]: "1" for line in manifest}

    version = lake.version(IMAGES)
    assert pull_labels(
        labeling, lake, client, project, classes=CLASSES
    ).skipped_replay  # nothing new: nothing committed
    assert lake.version(IMAGES) == version

    # The labeler changes their mind on one image: the edited annotation is newer and wins.
    first = tasks[0]
    current = next(t for t in client.tasks(project) if t["id"] == first["id"])
    annotation = current["annotations"][0]
    client.api("PATCH", f"/api/annotations/{annotation['id']}", json={"result": choice_result("0")})
    pull_labels(labeling, lake, client, project, classes=CLASSES)
    assert labels_of(lake)[first["data"]["source_url"]] == "0"
    history = lake.read(LABEL_HISTORY).to_pylist()
    assert [(h["label"], h["kept_label"], h["reason"]) for h in history] == [("1", "0", REPLACED)]
    client.close()


def test_annotations_come_back_by_webhook_once_each_and_only_with_the_key(
    label_studio: LabelStudio, labeling: Settings
) -> None:
    manifest = send(labeling, sources(labeling, 1))
    settings = label_studio.settings
    client = LabelStudioClient(label_studio.url, settings.label_studio_email, settings.label_studio_secret())
    project = client.project(f"webhook-{uuid.uuid4().hex[:8]}", CLASSES)
    client.import_tasks(project, manifest)
    lake = Lake(labeling)
    with serving(labeling) as (events_url, _service):
        hook = events_url.removesuffix(EVENTS_PATH) + LABEL_STUDIO_PATH
        assert httpx.post(hook, json={"action": "ANNOTATION_CREATED"}).status_code == 401
        assert httpx.post(hook, json={}, headers={"aeg-sas-key": "wrong"}).status_code == 401
        client.api(
            "POST",
            "/api/webhooks",
            json={
                "project": project,
                "url": hook,
                "send_payload": True,
                "send_for_all_actions": False,
                "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"],
                "headers": {"aeg-sas-key": labeling.event_secret()},
                "is_active": True,
            },
        )
        for task in client.tasks(project):
            client.annotate(task["id"], "1")
        wanted = {line["source_url"]: "1" for line in manifest}
        deadline = time.monotonic() + 60
        while {p: labels_of(lake).get(p) for p in wanted} != wanted:
            assert time.monotonic() < deadline, "the webhook's labels never reached images"
            time.sleep(0.5)

        # A replayed delivery (Label Studio retries, a proxy repeats) has one effect.
        task = client.tasks(project)[0]
        payload = {"action": "ANNOTATION_CREATED", "annotation": task["annotations"][0], "task": task}
        version = lake.version(IMAGES)
        answer = httpx.post(hook, json=payload, headers={"aeg-sas-key": labeling.event_secret()})
        assert answer.status_code == 200 and answer.json()["labels"]["skipped_replay"]
        assert lake.version(IMAGES) == version
    client.close()
