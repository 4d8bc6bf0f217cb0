"""``lakesight serve-model``: the model server under uvicorn, refusing an open bind without a key."""

from __future__ import annotations

from infra.errors import SettingsError
from infra.settings import Settings
from infra.web import is_loopback, serve_forever
from serving.app import create_app


def check_bind(settings: Settings, host: str) -> None:
    """An empty key is allowed only where nobody else can connect (a loopback bind, local mode)."""
    if not settings.model_secret() and not is_loopback(host):
        raise SettingsError(f"refusing to serve on {host} without an API key: set LAKESIGHT_MODEL_API_KEY")


def serve_model(
    settings: Settings, *, host: str | None = None, port: int | None = None, log_level: str = "info"
) -> None:
    host = host or settings.model_host
    check_bind(settings, host)
    serve_forever(create_app(settings), host, port or settings.model_port, log_level)
