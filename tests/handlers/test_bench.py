"""``lakesight bench events``: the handlers' own bench, run through the CLI."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from handlers.bench import image_events, request_batches, wire_bytes
from infra.cli import app as cli


def test_cli_bench_events_prints_figures(env_settings) -> None:
    result = CliRunner().invoke(cli, ["bench", "events", "--events", "300", "--batch", "30", "--concurrency", "2"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["events"] == 300 and figures["duplicates_suppressed"] == 30
    assert figures["processed"] == {"done": 300} and figures["events_per_s"] > 0
    assert {"seconds", "p50_ms", "p99_ms"} <= set(figures)


def test_a_batch_over_the_body_limit_is_split_into_requests_under_it(env_settings) -> None:
    """--batch 2000 used to end in a traceback: one request passed Event Grid's (and the handler's) 1 MB."""
    args = ["bench", "events", "--events", "2000", "--batch", "2000", "--concurrency", "1", "--duplicates", "0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["processed"] == {"done": 2000} and figures["requests"] > 1


def test_request_batches_stay_under_the_limit_and_keep_every_event() -> None:
    events = image_events("http://127.0.0.1:10000/devstoreaccount1/", "images", 3000)
    requests = request_batches(events, batch=5000, max_body_bytes=1024 * 1024)
    assert [e.id for chunk in requests for e in chunk] == [e.id for e in events]
    assert all(sum(wire_bytes(e) for e in chunk) + 2 < 1024 * 1024 for chunk in requests)
    assert [len(c) for c in request_batches(events[:10], batch=4, max_body_bytes=1024 * 1024)] == [4, 4, 2]
