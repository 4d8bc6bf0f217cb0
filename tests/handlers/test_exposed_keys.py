"""Published default keys open nothing beyond loopback; two event keys during a rotation; the status
cookie expires and cannot be made from the key alone; it is Secure behind a trusted TLS proxy."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from handlers.api.app import create_app
from handlers.api.deps import STATUS_COOKIE, STATUS_COOKIE_TTL_S, status_secret, status_token
from handlers.server import running
from infra.processes import free_port, lakesight_argv
from infra.settings import DEFAULT_EVENT_KEY, DEFAULT_MODEL_API_KEY, Settings
from tests.helpers.handlers import AZURE_EVENT_KEY, azure_settings, blob_event_dict

NEXT_KEY = "n" * 40


def _refused_to_start(argv: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "LAKESIGHT_STATE_DIR": str(tmp_path / "state"), **env}
    # A timeout: a server that starts anyway would otherwise serve forever.
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("command", "variable", "default"),
    [
        ("serve", "LAKESIGHT_EVENT_KEY", DEFAULT_EVENT_KEY),
        ("serve-model", "LAKESIGHT_MODEL_API_KEY", DEFAULT_MODEL_API_KEY),
    ],
)
def test_a_default_key_on_an_open_bind_refuses_to_start_with_one_line(
    tmp_path: Path, command: str, variable: str, default: str
) -> None:
    argv = lakesight_argv(command, "--host", "0.0.0.0", "--port", str(free_port()))
    done = _refused_to_start(argv, {variable: default}, tmp_path)
    assert done.returncode == 1, done.stderr
    reason = done.stderr.strip()
    assert len(reason.splitlines()) == 1 and "Traceback" not in reason
    assert "default" in reason and "loopback" in reason and variable in reason


def test_the_functions_app_refuses_an_empty_or_default_event_key_even_in_local_mode(tmp_path: Path) -> None:
    for key in ("", DEFAULT_EVENT_KEY):
        done = _refused_to_start(
            [sys.executable, "-c", "import handlers.function_app"], {"LAKESIGHT_EVENT_KEY": key}, tmp_path
        )
        assert done.returncode != 0 and "SettingsError" in done.stderr and "LAKESIGHT_EVENT_KEY" in done.stderr
    started = _refused_to_start(
        [sys.executable, "-c", "import handlers.function_app"], {"LAKESIGHT_EVENT_KEY": AZURE_EVENT_KEY}, tmp_path
    )
    assert started.returncode == 0, started.stderr


def test_local_mode_on_an_open_bind_serves_status_only_with_the_key(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", event_key=AZURE_EVENT_KEY)
    with running(create_app(settings, host="0.0.0.0")) as url:
        base = url.removesuffix("/api/events")
        assert httpx.get(f"{base}/api/status").status_code == 401
        assert httpx.get(f"{base}/").status_code == 401
        assert httpx.get(f"{base}/api/status", headers={"aeg-sas-key": AZURE_EVENT_KEY}).status_code == 200
    with running(create_app(settings, host="127.0.0.1")) as url:  # loopback: open, as before
        assert httpx.get(url.replace("/api/events", "/api/status")).status_code == 200


def test_during_a_rotation_the_current_and_the_next_key_deliver(tmp_path: Path) -> None:
    settings = azure_settings(tmp_path, event_key_next=NEXT_KEY, retrain_min_new_labels=10_000)
    with running(create_app(settings)) as url:
        answers = {
            name: httpx.post(
                url, json=[blob_event_dict(settings, "images", f"{name}.png")], headers={"aeg-sas-key": key}
            ).status_code
            for name, key in (("current", AZURE_EVENT_KEY), ("next", NEXT_KEY), ("other", "o" * 40))
        }
    assert answers == {"current": 200, "next": 200, "other": 401}
    with pytest.raises(Exception, match="LAKESIGHT_EVENT_KEY_NEXT"):
        create_app(azure_settings(tmp_path, event_key_next="short"))


def test_the_status_cookie_expires_and_cannot_be_made_from_the_key_alone(tmp_path: Path) -> None:
    cookie_secret = "c" * 40
    settings = azure_settings(tmp_path, status_cookie_secret=cookie_secret)
    secret = status_secret(cookie_secret.encode(), AZURE_EVENT_KEY.encode())
    offline = hmac.new(AZURE_EVENT_KEY.encode(), b"lakesight status page", hashlib.sha256).hexdigest()
    now = int(time.time())
    with running(create_app(settings)) as url:
        status = url.replace("/api/events", "/api/status")

        def with_cookie(value: str) -> int:
            return httpx.get(status, headers={"cookie": f"{STATUS_COOKIE}={value}"}).status_code

        page = httpx.get(status, params={"code": AZURE_EVENT_KEY})
        token = page.cookies[STATUS_COOKIE]
        expires = int(token.split(".")[0])
        assert now + STATUS_COOKIE_TTL_S - 5 <= expires <= int(time.time()) + STATUS_COOKIE_TTL_S
        assert f"Max-Age={STATUS_COOKIE_TTL_S}" in page.headers["set-cookie"]
        assert with_cookie(token) == 200
        assert with_cookie(offline) == 401  # the old cookie: a digest of the key anyone with it could make
        assert with_cookie(status_token(secret, now - 1)) == 401  # expired
        assert with_cookie(status_token(secret, now + 60)) == 200
        assert with_cookie(status_token(b"another secret", now + 60)) == 401


def test_the_status_cookie_is_secure_when_a_trusted_proxy_says_https(tmp_path: Path) -> None:
    with running(create_app(azure_settings(tmp_path))) as url:
        status = url.replace("/api/events", "/api/status")
        plain = httpx.get(status, params={"code": AZURE_EVENT_KEY})
        # The test client is on 127.0.0.1, the default trusted proxy: as a TLS proxy on this machine.
        proxied = httpx.get(status, params={"code": AZURE_EVENT_KEY}, headers={"x-forwarded-proto": "https"})
    assert "secure" not in plain.headers["set-cookie"].lower()
    assert "secure" in proxied.headers["set-cookie"].lower()
