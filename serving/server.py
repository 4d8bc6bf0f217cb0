"""``lakesight serve-model``: the model server under uvicorn, refusing an open bind without a key."""

from __future__ import annotations

from infra.settings import Settings
from infra.web import serve_forever
from serving.api.app import create_app


def check_bind(settings: Settings, host: str) -> None:
    """An empty or default key is allowed only where nobody else can connect (a loopback bind, local mode)."""
    settings.model_secret(bind_host=host)


def serve_model(
    settings: Settings, *, host: str | None = None, port: int | None = None, log_level: str = "info"
) -> None:
    host = host or settings.model_host
    check_bind(settings, host)
    serve_forever(create_app(settings), host, port or settings.model_port, log_level, settings=settings)
