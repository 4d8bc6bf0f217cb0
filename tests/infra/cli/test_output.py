"""The CLI's one logging set-up (``infra.cli._output.configure_logging``)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.blob import AZURE_LOGGERS
from infra.cli._output import configure_logging

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Put the root and Azure loggers back as they were (pytest's own handlers included)."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), {name: logging.getLogger(name).level for name in AZURE_LOGGERS})
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("restored_logging")
@pytest.mark.parametrize("level", ["info", "INFO", "warning"])
def test_the_azure_sdk_logs_warnings_only_unless_debug(level: str) -> None:
    configure_logging(level, force=True)
    policy = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    assert logging.getLogger("azure").level == logging.WARNING
    assert not policy.isEnabledFor(logging.INFO)  # request and response headers are INFO records


@pytest.mark.usefixtures("restored_logging")
def test_debug_shows_the_azure_sdks_requests() -> None:
    configure_logging("debug", force=True)
    assert logging.getLogger("azure").level == logging.DEBUG
    assert logging.getLogger("azure.core.pipeline.policies.http_logging_policy").isEnabledFor(logging.DEBUG)


@pytest.fixture
def restored_project_loggers() -> Iterator[None]:
    from infra.cli._output import PROJECT_LOGGERS

    saved = {name: logging.getLogger(name).level for name in PROJECT_LOGGERS}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("restored_logging", "restored_project_loggers")
def test_info_is_for_lakesights_own_loggers_only() -> None:
    import mlflow  # noqa: F401 - sets INFO on its own logger when imported, which the root's level does not reach

    configure_logging("info", force=True)
    for ours in (
        "infra.core.model_cache",
        "streams.scoring.query",
        "training.run.worker",
        "handlers.api.app",
        "serving.api.app",
    ):
        assert logging.getLogger(ours).isEnabledFor(logging.INFO), ours
    for theirs in ("mlflow.tracking", "py4j.clientserver", "urllib3.connectionpool", "azure.storage.blob"):
        assert not logging.getLogger(theirs).isEnabledFor(logging.INFO), theirs
        assert logging.getLogger(theirs).isEnabledFor(logging.WARNING), theirs


# The error boundary ---------------------------------------------------------------------------
def _boundary_app(command: Any) -> Any:
    import typer

    from infra.cli._output import _Boundary

    app = typer.Typer(cls=_Boundary)
    app.command()(command)
    app.command("other")(lambda: None)  # two commands: the group (the boundary) dispatches
    return app


def _refuse_storage(_: Any) -> Any:  # runs on an executor
    from infra.blob import StorageUnavailable

    raise StorageUnavailable("blob storage did not answer for 10 s\nsecond line of detail")


def _bug(_: Any) -> Any:  # runs on an executor
    raise KeyError("a bug")


def test_a_project_error_raised_in_a_spark_task_is_one_line(spark: Any) -> None:
    from typer.testing import CliRunner

    def command() -> None:
        spark.sparkContext.parallelize([1], 1).map(_refuse_storage).collect()

    result = CliRunner().invoke(_boundary_app(command), ["command"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert lines == ["error: blob storage did not answer for 10 s (StorageUnavailable on a Spark executor)"]


def test_other_failures_in_a_spark_task_keep_their_traceback(spark: Any) -> None:
    from typer.testing import CliRunner

    def command() -> None:
        spark.sparkContext.parallelize([1], 1).map(_bug).collect()

    result = CliRunner().invoke(_boundary_app(command), ["command"])
    assert result.exit_code == 1
    assert "KeyError" in str(result.exception)
    assert "error:" not in result.output


def test_the_whole_message_of_an_executor_error_is_kept() -> None:
    from infra.errors import project_error_in

    text = (
        "An exception was thrown from the Python worker:\nTraceback (most recent call last):\n"
        '  File "x.py", line 1, in f\ninfra.blob.StorageUnavailable: first\nsecond\n'
        " SQLSTATE: 38000\n\tat org.x(Y.java)"
    )
    found = project_error_in(text)
    assert found is not None and found.name == "infra.blob.StorageUnavailable"
    assert found.detail == "first\nsecond"


def test_native_start_up_chatter_is_dropped_and_everything_else_reaches_the_terminal() -> None:
    # Native code and child processes write to file descriptor 2 directly; a child is one here.
    script = """
import os, subprocess, sys
from infra.cli._output import native_noise_filtered
with native_noise_filtered():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
    os.write(2, b"I0000 00:00:1796608465.605330    8247 port.cc:153] oneDNN custom operations are on.\\n")
    os.write(2, b"E0000 00:00:1796608467.551857    8247 cuda_platform.cc:52] failed call to cuInit: INTERNAL\\n")
    os.write(2, b"E0000 00:00:1796608467.551857    8247 other.cc:9] a real native error\\n")
    subprocess.run([sys.executable, "-c", "import os; os.write(2, b'child problem\\\\n')"], check=True)
    print("python line", file=sys.stderr)
print("after the block", file=sys.stderr)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert sorted(lines) == sorted(
        [
            "E0000 00:00:1796608467.551857    8247 other.cc:9] a real native error",
            "child problem",
            "python line",
            "after the block",
        ]
    )
