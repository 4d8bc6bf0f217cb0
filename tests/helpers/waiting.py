"""One way for tests to wait: poll a condition until it holds, under one timeout rule.

Every test that waits for a process, a thread or a file uses :func:`wait_until` with the default
``timeout`` (:data:`WAIT_S`, raised for a slow machine with ``LAKESIGHT_TEST_WAIT_S``), never a sleep:
a condition that holds returns at once, and one that never holds fails with what was awaited.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

WAIT_S = float(os.environ.get("LAKESIGHT_TEST_WAIT_S", "150"))
POLL_S = 0.05


def wait_until(
    condition: Callable[[], T],
    what: str,
    *,
    timeout: float = WAIT_S,
    poll: float = POLL_S,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
) -> T:
    """Call ``condition`` until it returns something truthy and return that; AssertionError naming
    ``what`` (and the last value seen) after ``timeout`` seconds, or as soon as ``process`` (the one
    the condition waits on) exits, with the tail of its ``log``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before {what}{_tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {value!r}){_tail(log)}")
        time.sleep(poll)


def _tail(log: Path | None, chars: int = 3000) -> str:
    if log is None or not log.exists():
        return ""
    return "\n" + log.read_text(errors="replace")[-chars:]
