"""Label Studio's HTTP API as the hand-off and the label path use it: one project per model, tasks
from the hand-off's manifest lines with the champion's prediction as a pre-annotation, and the
annotations humans made, each with its time.

The client signs in as the admin user of the settings, the way the web page does (a Django session
and its CSRF token): Label Studio 1.23 refuses legacy API tokens by default, and a personal access
token can only be made by a signed-in user anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import httpx

from infra.errors import LakesightError
from infra.processes import PROJECT_ROOT
from infra.settings import Settings

# The names the label config gives its tags: predictions and annotations refer to them.
IMAGE_TAG = "image"
CHOICES_TAG = "label"
TASK_PAGE = 100  # tasks per page of /api/tasks


class LabelStudioError(LakesightError, RuntimeError):
    """Label Studio refused a request or could not be reached (the message says which)."""


LABEL_STUDIO, AZUREML, CONTAINER = "label-studio", "azureml", "container"
WEBHOOK_PATH = "/api/label-studio"  # the handler's route for Label Studio's webhooks
WEBHOOK_KEY_HEADER = "aeg-sas-key"  # the event key's header: the route admits Label Studio like Event Grid


def label_studio_venv(settings: Settings) -> Path:
    """Label Studio's own virtualenv (``make labelstudio``)."""
    return Path(settings.label_studio_venv) if settings.label_studio_venv else PROJECT_ROOT / ".venv-labelstudio"


def labeling_service(settings: Settings) -> str:
    """Where the hand-off's picks go (``LAKESIGHT_LABELING_SERVICE``, docs/LABELING.md): the setting,
    else Label Studio in local mode when its virtualenv is installed, else the container alone."""
    if settings.labeling_service:
        return settings.labeling_service
    installed = (label_studio_venv(settings) / "bin" / "label-studio").exists()
    return LABEL_STUDIO if settings.mode == "local" and installed else CONTAINER


def label_studio_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.label_studio_port}"


def webhook_url(settings: Settings) -> str:
    """The handler's webhook route as Label Studio on this machine reaches it (loopback)."""
    host = settings.handler_host if settings.handler_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{settings.handler_port}{WEBHOOK_PATH}"


def label_config(classes: list[str]) -> str:
    """A single-choice image classification config over ``classes`` (XML-escaped)."""
    if not classes:
        raise LabelStudioError("a Label Studio project needs the model's class names")
    choices = "".join(f"<Choice value={quoteattr(name)}/>" for name in classes)
    return (
        f'<View><Image name="{IMAGE_TAG}" value="$image"/>'
        f'<Choices name="{CHOICES_TAG}" toName="{IMAGE_TAG}" choice="single" showInLine="true">'
        f"{choices}</Choices></View>"
    )


def choice_result(label: str) -> list[dict[str, Any]]:
    """The ``result`` of a prediction or annotation that picks ``label``."""
    return [{"from_name": CHOICES_TAG, "to_name": IMAGE_TAG, "type": "choices", "value": {"choices": [label]}}]


def manifest_line_of(ledger_row: dict[str, Any]) -> dict[str, Any]:
    """The manifest line of a ``labeling_requests`` row (the ledger keeps what the line said)."""
    return {**ledger_row, "source_url": ledger_row["path"]}


def task_from_manifest(line: dict[str, Any]) -> dict[str, Any]:
    """A Label Studio task for one manifest line: the copy to show, the hand-off's task id, and the
    champion's answer as a pre-annotation (its version and confidence) for the labeler to confirm."""
    return {
        "data": {"image": line["image_url"], "task_id": line["task_id"], "source_url": line["source_url"]},
        "predictions": [
            {
                "model_version": str(line.get("model_version") or ""),
                "score": line.get("confidence"),
                "result": choice_result(str(line["predicted_label"])),
            }
        ],
    }


@dataclass(frozen=True)
class Annotation:
    """One human annotation as Label Studio keeps it: its id, version time, task and chosen class."""

    annotation_id: int
    updated_at: str
    task_id: str | None  # the hand-off's task id (the task's data), None for a task lakesight did not make
    image: str | None
    label: str | None  # None: no single choice (an empty or malformed result)
    project: int | None = None


class LabelStudioClient:
    """A signed-in session with one Label Studio."""

    def __init__(self, url: str, email: str, password: str, *, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)
        self._sign_in(email, password)

    def close(self) -> None:
        self.http.close()

    def _sign_in(self, email: str, password: str) -> None:
        try:
            self.http.get("/user/login/")
            self.http.post(
                "/user/login/",
                data={"email": email, "password": password, "csrfmiddlewaretoken": self._csrf()},
                headers={"Referer": f"{self.url}/user/login/"},
            )
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"Label Studio at {self.url} unreachable: {exc}") from exc
        if "sessionid" not in self.http.cookies:
            raise LabelStudioError(f"Label Studio at {self.url} refused the sign-in of {email}")

    def _csrf(self) -> str:
        return self.http.cookies.get("csrftoken") or ""

    def api(self, method: str, path: str, **options: Any) -> Any:
        headers = {"X-CSRFToken": self._csrf(), "Referer": f"{self.url}/", **options.pop("headers", {})}
        try:
            answer = self.http.request(method, path, headers=headers, **options)
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"Label Studio {method} {path}: {exc}") from exc
        if answer.status_code >= 400:
            raise LabelStudioError(f"Label Studio {method} {path}: {answer.status_code} {answer.text[:300]}")
        return answer.json() if answer.content else None

    # Projects and tasks ---------------------------------------------------------------------------
    def find_project(self, title: str) -> int | None:
        """The id of the project titled ``title``, None when there is none."""
        found = self.api("GET", "/api/projects", params={"title": title})
        projects = found.get("results", []) if isinstance(found, dict) else found
        return next((int(p["id"]) for p in projects if p.get("title") == title), None)

    def project(self, title: str, classes: list[str]) -> int:
        """The id of the project titled ``title``, created with ``classes`` when there is none."""
        found = self.find_project(title)
        if found is not None:
            return found
        created = self.api("POST", "/api/projects", json={"title": title, "label_config": label_config(classes)})
        return int(created["id"])

    def import_tasks(self, project: int, lines: list[dict[str, Any]]) -> int:
        """Create a task per manifest line; the number created."""
        answer = self.api("POST", f"/api/projects/{project}/import", json=[task_from_manifest(line) for line in lines])
        return int(answer.get("task_count", 0))

    def tasks(self, project: int) -> list[dict[str, Any]]:
        """The project's tasks with their annotations and predictions, page by page."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            params = {"project": project, "fields": "all", "page": page, "page_size": TASK_PAGE}
            answer = self.api("GET", "/api/tasks", params=params)
            batch = answer.get("tasks", []) if isinstance(answer, dict) else list(answer or [])
            found.extend(batch)
            total = answer.get("total", len(found)) if isinstance(answer, dict) else len(found)
            if not batch or len(found) >= total:
                return found
            page += 1

    def task_ids(self, project: int) -> set[str]:
        """The hand-off task ids the project's tasks carry (tasks lakesight did not make have none)."""
        return {str(t["data"]["task_id"]) for t in self.tasks(project) if (t.get("data") or {}).get("task_id")}

    def ensure_webhook(self, project: int, url: str, headers: dict[str, str]) -> int:
        """The project's webhook to ``url`` for annotations created, updated and deleted (made once;
        its headers set again, so a rotated event key reaches it)."""
        body = {
            "project": project,
            "url": url,
            "send_payload": True,
            "send_for_all_actions": False,
            "actions": [*ANNOTATION_ACTIONS, DELETED_ACTION],
            "headers": headers,
            "is_active": True,
        }
        found = self.api("GET", "/api/webhooks", params={"project": project}) or []
        for hook in found:
            if hook.get("url") == url and hook.get("project") == project:
                self.api("PATCH", f"/api/webhooks/{hook['id']}", json=body)
                return int(hook["id"])
        return int(self.api("POST", "/api/webhooks", json=body)["id"])

    def annotate(self, task: int, label: str) -> dict[str, Any]:
        """Submit ``label`` for Label Studio task ``task``, as the labeling page does."""
        return dict(self.api("POST", f"/api/tasks/{task}/annotations", json={"result": choice_result(label)}))

    def annotations(self, project: int) -> list[Annotation]:
        """Every human annotation of the project that was submitted (not skipped)."""
        found = []
        for task in self.tasks(project):
            data = task.get("data") or {}
            for item in task.get("annotations") or []:
                if item.get("was_cancelled"):
                    continue
                found.append(
                    Annotation(
                        annotation_id=int(item["id"]),
                        updated_at=str(item.get("updated_at") or item.get("created_at") or ""),
                        task_id=data.get("task_id"),
                        image=data.get("image"),
                        label=_single_choice(item.get("result") or []),
                        project=project,
                    )
                )
        return found


# The webhook actions that carry one annotation's new version (docs/LABELING.md).
ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETED_ACTION = "ANNOTATIONS_DELETED"


def _project_id(payload: dict[str, Any]) -> int | None:
    project = payload.get("project")
    return int(project["id"]) if isinstance(project, dict) and "id" in project else None


def deleted_from_webhook(payload: object) -> list[int] | None:
    """The ids of the annotations an ``ANNOTATIONS_DELETED`` payload names, else None.

    Label Studio sends only their ids (``{"annotations": [{"id": 7}], "project": {...}}``).
    """
    if not isinstance(payload, dict) or payload.get("action") != DELETED_ACTION:
        return None
    items = payload.get("annotations")
    if not isinstance(items, list) or not all(isinstance(i, dict) and "id" in i for i in items):
        raise LabelStudioError(f"{DELETED_ACTION} payload without its annotation ids")
    return [int(item["id"]) for item in items]


def annotation_from_webhook(payload: object) -> Annotation | None:
    """The annotation a Label Studio webhook payload carries (created or updated), else None.

    :class:`LabelStudioError` for a payload of such an action that lacks its annotation or task.
    """
    if not isinstance(payload, dict) or payload.get("action") not in ANNOTATION_ACTIONS:
        return None
    annotation, task = payload.get("annotation"), payload.get("task")
    if not isinstance(annotation, dict) or not isinstance(task, dict) or "id" not in annotation:
        raise LabelStudioError(f"{payload.get('action')} payload without its annotation and task")
    raw_data, raw_result = task.get("data"), annotation.get("result")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    result: list[dict[str, Any]] = raw_result if isinstance(raw_result, list) else []
    return Annotation(
        annotation_id=int(annotation["id"]),
        updated_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
        task_id=data.get("task_id"),
        image=data.get("image"),
        label=_single_choice(result),
        project=_project_id(payload),
    )


def _single_choice(result: list[dict[str, Any]]) -> str | None:
    choices = [
        c for r in result if r.get("from_name") == CHOICES_TAG for c in (r.get("value") or {}).get("choices", [])
    ]
    return str(choices[0]) if len(choices) == 1 else None
