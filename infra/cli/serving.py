"""``lakesight serve-model``: the champion over REST (its own process and port, apart from the webhook)."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.cli._output import configure_logging
from infra.settings import get_settings


def register(app: typer.Typer) -> None:
    app.command("serve-model")(serve_model)


def serve_model(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings.model_host)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: settings.model_port)")] = None,
    log_level: Annotated[str, typer.Option(help="Log level of the server and uvicorn")] = "info",
) -> None:
    """Serve the champion: POST /v1/classify (image/* body or multipart batch), GET /v1/model, /v1/stats, /healthz.

    Callers send the API key as the X-API-Key header (LAKESIGHT_MODEL_API_KEY). Concurrent
    requests are micro-batched; a promotion or rollback is picked up without a restart; every
    answered image is appended to the online_predictions table.
    """
    from serving.server import serve_model as run_server

    configure_logging(log_level)
    run_server(get_settings(), host=host, port=port, log_level=log_level)
