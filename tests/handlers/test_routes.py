"""The routes as mounted by create_app, over real HTTP: refusal bodies, the status routes, the app's wiring."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import httpx
import pytest

from handlers.api.app import create_app
from handlers.api.deps import STATUS_COOKIE
from handlers.server import running
from infra.errors import SettingsError
from infra.settings import DEFAULT_EVENT_KEY, Settings
from tests.helpers.handlers import AZURE_EVENT_KEY, azure_settings, blob_event, blob_event_dict
from tests.helpers.hostile import hostile_bodies

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


def test_hostile_bodies_get_a_4xx_with_a_one_line_reason(settings: Settings, server) -> None:
    url, service = server
    corpus = hostile_bodies(blob_event_dict(settings, "images", "a.png"), settings.max_event_body_bytes)
    expected, answers = {}, {}
    for hostile in corpus:
        headers = {**KEY, **({"content-type": hostile.content_type} if hostile.content_type else {})}
        response = httpx.post(url, content=hostile.body, headers=headers, timeout=30)
        expected[hostile.name] = hostile.status
        is_json = response.headers.get("content-type", "").startswith("application/json")
        answers[hostile.name] = (response.status_code, response.json().get("error", "") if is_json else response.text)
    assert {name: status for name, (status, _) in answers.items()} == expected, answers
    for name, (_, reason) in answers.items():
        assert reason and "\n" not in reason and len(reason) <= 300, (name, reason)
    assert service.events.counts() == {}  # nothing hostile reached the event log
    # The server is still fine: a valid delivery goes through.
    assert httpx.post(url, json=[blob_event_dict(settings, "images", "ok.png")], headers=KEY).status_code == 200


def _heartbeats(root: Path) -> set[str]:
    """The handler's own status file and its temporary twin: rewritten every few seconds, whoever reads."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.name.lstrip(".").startswith("status-")}


def test_status_api_on_a_fresh_state_dir_creates_nothing(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "fresh")
    app = create_app(settings)  # opens the handlers' own databases, nothing else
    with running(app) as url:
        before = sorted(set(_files(tmp_path)) - _heartbeats(tmp_path))
        response = httpx.get(url.replace("/api/events", "/api/status"), timeout=30)
        after = sorted(set(_files(tmp_path)) - _heartbeats(tmp_path))
    assert response.status_code == 200
    body = response.json()
    assert body["images"] is None and body["models"] is None and body["decisions"] == []
    assert body["dead_letters"] is None
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
    assert (health["status"], health["problems"], health["duplicates_suppressed"]) == ("ok", [], 0)
    assert health["pending_triggers"] == 0 and health["backlog"]["pending"] == 0
    assert {name: lane["alive"] for name, lane in health["lanes"].items()} == {"fast": True, "slow": True}
    event = blob_event(settings, "images", "h.png")
    publisher(url).send([event])
    publisher(url).send([event])  # a redelivery, suppressed
    assert service.wait_idle()
    assert httpx.get(url.replace("/api/events", "/healthz")).json()["duplicates_suppressed"] == 1


@pytest.mark.parametrize("key", [DEFAULT_EVENT_KEY, "", "short-key", "k" * 31])
def test_create_app_checks_the_event_key_before_opening_anything(tmp_path: Path, key: str) -> None:
    settings = azure_settings(tmp_path, event_key=key)
    with pytest.raises(SettingsError, match=r"event key|LAKESIGHT_EVENT_KEY"):
        create_app(settings)
    assert not settings.state_dir.exists()


def test_azure_mode_status_needs_the_key(tmp_path: Path) -> None:
    with running(create_app(azure_settings(tmp_path))) as url:
        base = url.removesuffix("/api/events")
        for path in ("/", "/api/status"):
            assert httpx.get(base + path).status_code == 401
            assert httpx.get(base + path, headers={"aeg-sas-key": AZURE_EVENT_KEY[:-1]}).status_code == 401
            assert httpx.get(base + path, params={"code": AZURE_EVENT_KEY + "x"}).status_code == 401
            assert httpx.get(base + path, headers={"aeg-sas-key": AZURE_EVENT_KEY}).status_code == 200
        # A person opens the page with ?code=; the page's own fetches of api/status carry its cookie.
        page = httpx.get(f"{base}/", params={"code": AZURE_EVENT_KEY})
        assert page.status_code == 200
        token = page.cookies[STATUS_COOKIE]
        assert AZURE_EVENT_KEY not in token and AZURE_EVENT_KEY not in page.text
        fetched = httpx.get(f"{base}/api/status", headers={"cookie": f"{STATUS_COOKIE}={token}"})
        assert fetched.status_code == 200 and AZURE_EVENT_KEY not in fetched.text
        forged = httpx.get(f"{base}/api/status", headers={"cookie": f"{STATUS_COOKIE}={'0' * len(token)}"})
        assert forged.status_code == 401
        # The cookie is for reading status only: it does not deliver events.
        event = [blob_event_dict(azure_settings(tmp_path), "images", "a.png")]
        assert httpx.post(url, json=event, headers={"aeg-sas-key": token}).status_code == 401
        assert httpx.get(f"{base}/healthz").status_code == 200  # health probes stay open


def test_azure_mode_status_public_opens_only_the_status_routes(tmp_path: Path) -> None:
    settings = azure_settings(tmp_path, status_public=True)
    with running(create_app(settings)) as url:
        base = url.removesuffix("/api/events")
        assert httpx.get(f"{base}/").status_code == 200
        assert httpx.get(f"{base}/api/status").status_code == 200
        assert httpx.post(url, json=[blob_event_dict(settings, "images", "a.png")]).status_code == 401


@pytest.mark.parametrize("enabled", [False, True])
def test_openapi_schema_and_docs_only_when_enabled(tmp_path: Path, enabled: bool) -> None:
    settings = Settings(state_dir=tmp_path / "state", openapi=enabled)
    with running(create_app(settings)) as url:
        base = url.removesuffix("/api/events")
        codes = {path: httpx.get(base + path).status_code for path in ("/openapi.json", "/docs", "/redoc")}
    assert codes == ({"/openapi.json": 200, "/docs": 200, "/redoc": 404} if enabled else dict.fromkeys(codes, 404))


def test_status_data_is_taken_once_per_cache_period_whatever_the_number_of_pages(settings: Settings) -> None:
    from concurrent.futures import ThreadPoolExecutor

    app = create_app(settings.model_copy(update={"status_cache_s": 60.0}))
    with running(app) as url, ThreadPoolExecutor(8) as pool:
        status_url = url.replace("/api/events", "/api/status")
        answers = list(pool.map(lambda _: httpx.get(status_url, timeout=60).json(), range(16)))
    assert {answer["at"] for answer in answers} == {answers[0]["at"]}
    assert app.state.status.computed == 1
