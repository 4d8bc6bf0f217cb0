"""The routes as mounted by create_app, over real HTTP: refusal bodies, the status routes, the app's wiring."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import httpx
import pytest

from handlers.app import create_app
from handlers.server import running
from infra.errors import SettingsError
from infra.settings import Settings
from tests.helpers.handlers import blob_event, blob_event_dict

KEY = {"aeg-sas-key": "local-dev-key"}


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_every_refusal_answers_with_its_error_body(settings: Settings, server) -> None:
    url, service = server
    no_key = httpx.post(url, json=[blob_event_dict(settings, "images", "a.png")])
    assert (no_key.status_code, no_key.json()) == (401, {"error": "missing or wrong event key"})
    wrong = httpx.request("OPTIONS", url, headers={"aeg-sas-key": "x", "WebHook-Request-Origin": "o"})
    assert (wrong.status_code, wrong.json()) == (401, {"error": "missing or wrong event key"})
    no_origin = httpx.request("OPTIONS", url, headers=KEY)
    assert (no_origin.status_code, no_origin.json()) == (400, {"error": "OPTIONS without WebHook-Request-Origin"})
    limit = settings.max_event_body_bytes
    too_big = httpx.post(url, content=b" " * (limit + 1), headers=KEY)
    assert (too_big.status_code, too_big.json()) == (413, {"error": f"body larger than {limit} bytes"})
    malformed = httpx.post(url, content=b"[]", headers=KEY)
    assert (malformed.status_code, malformed.json()) == (400, {"error": "the event array is empty"})
    validation = [{"id": "v", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {}}]
    no_code = httpx.post(url, json=validation, headers=KEY)
    assert (no_code.status_code, no_code.json()) == (
        400,
        {"error": "SubscriptionValidationEvent without validationCode"},
    )
    assert service.events.counts() == {}  # none of them reached the event log


def test_status_api_on_a_fresh_state_dir_creates_nothing(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "fresh")
    app = create_app(settings)  # opens the handlers' own databases, nothing else
    with running(app) as url:
        before = _files(tmp_path)
        response = httpx.get(url.replace("/api/events", "/api/status"), timeout=30)
        after = _files(tmp_path)
    assert response.status_code == 200
    body = response.json()
    assert body["images"] is None and body["models"] is None and body["decisions"] == []
    assert after == before
    assert not (settings.state_dir / "mlflow.db").exists()
    assert not Path(settings.lake_root).exists()
    assert all(name.startswith("fresh/handlers") or name == "fresh" for name in after), after


def test_status_page_is_the_packaged_html_file(server) -> None:
    url, _ = server
    page = httpx.get(url.replace("/api/events", "/"))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == resources.files("handlers").joinpath("static", "status.html").read_text(encoding="utf-8")
    assert 'fetch("api/status")' in page.text


def test_healthz_reports_the_service(settings: Settings, server, publisher) -> None:
    url, service = server
    health = httpx.get(url.replace("/api/events", "/healthz")).json()
    assert health == {"status": "ok", "duplicates_suppressed": 0, "pending_triggers": 0}
    event = blob_event(settings, "images", "h.png")
    publisher(url).send([event])
    publisher(url).send([event])  # a redelivery, suppressed
    assert service.wait_idle()
    assert httpx.get(url.replace("/api/events", "/healthz")).json()["duplicates_suppressed"] == 1


def test_create_app_checks_the_event_key_before_opening_anything(tmp_path: Path) -> None:
    settings = Settings(mode="azure", state_dir=tmp_path / "state")
    with pytest.raises(SettingsError, match="event key"):
        create_app(settings)
    assert not settings.state_dir.exists()
