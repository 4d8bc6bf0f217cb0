"""``lakesight serve-events``, ``lakesight relay`` and ``lakesight events``: the Event Grid webhook, the local
blob-event relay, and the replay of dead-lettered events.

``lakesight serve`` stays as a hidden alias of ``serve-events``: scripts and deployments written
before the rename keep working (the model server is ``serve-model``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from infra.cli._output import configure_logging, console, print_json, sub_app
from infra.settings import get_settings


def register(app: typer.Typer) -> None:
    app.command("serve-events")(serve_events)
    app.command("serve", hidden=True)(serve_events)  # the name before serve-model existed
    app.command()(relay)
    events = sub_app("events", "The handlers' events: 'retry' replays dead letters after their fault is fixed.")
    events.command("retry")(retry)


def serve_events(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings.handler_host)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: settings.handler_port)")] = None,
    log_level: Annotated[str, typer.Option(help="Log level of the handlers and uvicorn")] = "info",
) -> None:
    """Serve the Event Grid webhook (POST /api/events, the status page, GET /healthz) with uvicorn."""
    from handlers.server import serve as run_server

    configure_logging(log_level)
    run_server(get_settings(), host=host, port=port, log_level=log_level)


def relay(
    url: Annotated[str | None, typer.Option(help="Handler events URL (default: from settings)")] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between container polls")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Poll once, print the count and exit")] = False,
) -> None:
    """Announce new Azurite blobs to the handler as Event Grid BlobCreated events (each once)."""
    from handlers.relay import Relay

    configure_logging()
    watcher = Relay(get_settings(), endpoint=url)
    try:
        if once:
            print_json({"announced": watcher.poll()})
        else:
            console.print(f"relaying {watcher.containers} to {watcher.endpoint} (Ctrl-C stops)")
            watcher.run(interval=interval)
    except KeyboardInterrupt:
        pass
    finally:
        watcher.close()


def retry(
    event_id: Annotated[
        list[str] | None, typer.Option("--event", help="Only this event id (repeat for several)")
    ] = None,
    refused: Annotated[
        bool, typer.Option("--refused", help="Also refused events (after a fix such as a larger size cap)")
    ] = False,
) -> None:
    """Hand dead-lettered (given-up) events back to the handlers' event log; the running handler
    processes them within a second, or ``lakesight serve`` at its start. Prints {replayed, skipped}."""
    from handlers.intake.replay import retry_dead_letters

    print_json(retry_dead_letters(get_settings(), refused=refused, event_ids=event_id or ()))
