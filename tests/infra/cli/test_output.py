"""The CLI's one logging set-up (``infra.cli._output.configure_logging``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from infra.blob import AZURE_LOGGERS
from infra.cli._output import configure_logging


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
