"""``lakesight bench events``: the handlers' own bench, run through the CLI."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from infra.cli import app as cli


def test_cli_bench_events_prints_figures(env_settings) -> None:
    result = CliRunner().invoke(cli, ["bench", "events", "--events", "300", "--batch", "30", "--concurrency", "2"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["events"] == 300 and figures["duplicates_suppressed"] == 30
    assert figures["processed"] == {"done": 300} and figures["events_per_s"] > 0
    assert {"seconds", "p50_ms", "p99_ms"} <= set(figures)
