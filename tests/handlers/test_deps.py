"""The routes' dependencies on a bare app: the event key check, and the service and settings from app.state."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI

from handlers.api import deps
from handlers.api.deps import EventKeyDep, RequestRefused, ServiceDep, SettingsDep, refused_response
from handlers.server import running

REFUSED = (401, {"error": "missing or wrong event key"})


def _app(key: bytes) -> FastAPI:
    app = FastAPI()
    app.state.event_keys = (key,)
    app.state.service = object()  # the dependencies hand over whatever create_app put there
    app.state.settings = object()
    app.add_exception_handler(RequestRefused, refused_response)

    @app.get("/guarded")
    async def guarded(_key: EventKeyDep) -> dict[str, bool]:
        return {"admitted": True}

    @app.get("/state")
    async def state(service: ServiceDep, settings: SettingsDep) -> dict[str, bool]:
        return {"service": service is app.state.service, "settings": settings is app.state.settings}

    return app


def _answer(response: httpx.Response) -> tuple[int, dict]:
    return response.status_code, response.json()


def test_the_event_key_is_required_by_header_or_query(caplog: pytest.LogCaptureFixture) -> None:
    with running(_app(b"s3cret")) as url, caplog.at_level(logging.WARNING, logger="handlers.api.deps"):
        base = url.removesuffix("/api/events")
        assert _answer(httpx.get(f"{base}/guarded")) == REFUSED
        assert _answer(httpx.get(f"{base}/guarded", headers={"aeg-sas-key": "s3cre"})) == REFUSED  # a prefix
        assert _answer(httpx.get(f"{base}/guarded", params={"code": "s3cret-and-more"})) == REFUSED
        assert _answer(httpx.get(f"{base}/guarded", headers={"aeg-sas-key": "s3cret"})) == (200, {"admitted": True})
        assert _answer(httpx.get(f"{base}/guarded", params={"code": "s3cret"})) == (200, {"admitted": True})
        assert _answer(httpx.get(f"{base}/state")) == (200, {"service": True, "settings": True})
    assert sum("refused unauthenticated delivery" in r.getMessage() for r in caplog.records) == 3


def test_an_empty_key_switches_the_check_off() -> None:
    with running(_app(b"")) as url:
        assert _answer(httpx.get(url.replace("/api/events", "/guarded"))) == (200, {"admitted": True})


def test_the_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared = []

    def spy(supplied: bytes, key: bytes) -> bool:
        compared.append((supplied, key))
        return supplied == key

    monkeypatch.setattr(deps.hmac, "compare_digest", spy)
    with running(_app(b"s3cret")) as url:
        httpx.get(url.replace("/api/events", "/guarded"), headers={"aeg-sas-key": "guess"})
    assert compared == [(b"guess", b"s3cret")]
