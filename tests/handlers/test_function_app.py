"""The Azure Functions entry point serves the same webhook app."""

from __future__ import annotations

import asyncio
import importlib
import json


def test_function_app_serves_the_same_app(env_settings) -> None:
    import azure.functions as func

    from infra.settings import get_settings

    # A Functions app is reachable by anyone: it starts only with a real key (test_exposed_keys.py).
    env_settings.setenv("LAKESIGHT_EVENT_KEY", "f" * 40)
    get_settings.cache_clear()
    module = importlib.import_module("handlers.function_app")
    module = importlib.reload(module)  # build it with this test's settings
    assert isinstance(module.app, func.AsgiFunctionApp)
    (function,) = module.app.get_functions()
    trigger = function.get_bindings_dict()["bindings"][0]
    assert trigger["type"] == "httpTrigger" and trigger["route"] == "/{*route}"

    async def call(method: str, path: str, body: bytes = b"") -> func.HttpResponse:
        request = func.HttpRequest(method=method, url=f"http://localhost{path}", headers={}, body=body)
        return await function.get_user_function()(request, None)

    assert json.loads(asyncio.run(call("GET", "/healthz")).get_body())["status"] == "ok"
    assert asyncio.run(call("POST", "/api/events", b"[]")).status_code == 401
