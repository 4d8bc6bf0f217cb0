"""``lakesight serve`` under misbehaving clients: hang-ups mid-body log one line, and connections past
``web_limit_concurrency`` are answered 503 while the service stays up."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from infra.processes import free_port
from tests.helpers.handlers import serve_process
from tests.helpers.waiting import wait_until


@contextmanager
def half_sent_post(port: int, declared: int = 1000) -> Iterator[socket.socket]:
    """A POST to /api/events that declares ``declared`` body bytes and sends two; closed on exit (a hang-up)."""
    head = (
        f"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\naeg-sas-key: local-dev-key\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n[{{"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        yield sock


def test_a_client_hanging_up_mid_body_is_one_warning_line(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    with serve_process(tmp_path / "state", port, log=log):
        with half_sent_post(port):
            pass
        wait_until(lambda: "hung up" in log.read_text(), "the hang-up to be logged")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    text = log.read_text()
    (line,) = [x for x in text.splitlines() if "hung up" in x]
    assert "after 2 of 1000 body bytes; nothing accepted" in line
    assert "Traceback" not in text and "Exception in ASGI application" not in text


def test_connections_past_the_limit_get_503_and_the_service_recovers(tmp_path: Path) -> None:
    port = free_port()
    with serve_process(tmp_path / "state", port, LAKESIGHT_WEB_LIMIT_CONCURRENCY="2"):
        health = f"http://127.0.0.1:{port}/healthz"
        with ExitStack() as held:

            def one_more_held_then_refused() -> bool:
                # A held request stays admitted while it waits for its body; one refused because
                # a probe's connection still counted is closed by the server and counts no more.
                held.enter_context(half_sent_post(port))
                return httpx.get(health, timeout=10).status_code == 503

            wait_until(one_more_held_then_refused, "the limit to answer 503", poll=0.2)
        assert wait_until(lambda: httpx.get(health, timeout=10).status_code == 200, "the service to recover")
