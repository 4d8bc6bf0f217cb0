"""Starting the model server: no open bind without a key, azure mode refuses weak keys, the CLI explains."""

from __future__ import annotations

import os
import subprocess

import pytest

from infra.errors import SettingsError
from infra.processes import lakesight_argv
from infra.settings import Settings
from serving.api.app import create_app
from serving.server import check_bind


def test_an_empty_or_default_key_is_allowed_on_loopback_only(caplog: pytest.LogCaptureFixture) -> None:
    keyless = Settings(model_api_key="")
    check_bind(keyless, "127.0.0.1")
    check_bind(keyless, "::1")
    with pytest.raises(SettingsError, match="allowed only on a loopback bind"):
        check_bind(keyless, "0.0.0.0")
    with pytest.raises(SettingsError, match="refuses the default model API key"):
        check_bind(Settings(), "0.0.0.0")  # the published default opens nothing beyond loopback
    check_bind(Settings(model_api_key="m" * 32), "0.0.0.0")  # a real key: fine
    create_app(keyless, inference_table=False)
    assert "runs without an API key" in caplog.text


def test_azure_mode_refuses_the_default_key_before_serving() -> None:
    with pytest.raises(SettingsError, match="LAKESIGHT_MODEL_API_KEY"):
        create_app(Settings(mode="azure"), inference_table=False)


def test_serve_model_help_names_the_routes() -> None:
    shown = subprocess.run(lakesight_argv("serve-model", "--help"), capture_output=True, text=True, check=True).stdout
    assert "/v1/classify" in shown and "X-API-Key" in shown and "--port" in shown


def test_a_weak_key_in_azure_mode_is_a_one_line_error(tmp_path) -> None:
    env = {"LAKESIGHT_MODE": "azure", "LAKESIGHT_STATE_DIR": str(tmp_path), "LAKESIGHT_MODEL_API_KEY": "short"}
    done = subprocess.run(lakesight_argv("serve-model"), capture_output=True, text=True, env={**os.environ, **env})
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error:") and "at least 32 characters" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
