"""Supervised worker lanes: a thread over an in-memory queue that survives its work's errors and says
how it is doing.

A :class:`Lane` takes up to ``batch`` items at a time and hands them to its ``work`` function. An
exception there is logged on one line, counted, and handed to ``on_error`` with the items (the
service puts their events back in the durable log for a retry); the thread goes on with the next
items. :meth:`Lane.health` names what someone should see: a lane whose thread ended (``dead``, the
supervisor starts it again), one busy on the same items past ``stuck_s`` (``stuck``), or one whose
last work failed (``failing``) until a later piece of work succeeds.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infra.web import one_line

log = logging.getLogger(__name__)

STOP = object()  # put on a lane's queue to end its thread after the items before it


def describe(exc: BaseException) -> str:
    """An exception as one short line: its type and its message (Azure errors span many lines)."""
    return one_line(f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class LaneHealth:
    """A lane's state as ``/healthz`` and the status file show it; ``problem`` is None when all is well."""

    name: str
    alive: bool
    queued: int
    busy_s: float | None
    errors: int
    restarts: int
    last_error: str | None
    problem: str | None
    worked: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "alive": self.alive,
            "queued": self.queued,
            "busy_s": self.busy_s,
            "worked": self.worked,
            "errors": self.errors,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "problem": self.problem,
        }


class Lane:
    """One named worker thread over a queue, batching up to ``batch`` items per call of ``work``."""

    def __init__(
        self,
        name: str,
        work: Callable[[list[Any]], None],
        on_error: Callable[[list[Any], BaseException], None],
        *,
        batch: int = 1,
        stuck_s: float = 600.0,
    ):
        self.name = name
        self.queue: queue.Queue[Any] = queue.Queue()
        self._work = work
        self._on_error = on_error
        self._batch = batch
        self._stuck_s = stuck_s
        self._thread: threading.Thread | None = None
        self._busy_since: float | None = None
        self._failing: str | None = None  # the last work's error, until a later one succeeds
        self._last_error: str | None = None
        self.errors = 0
        self.restarts = 0
        self.worked = 0  # items handed to ``work`` so far, whatever came of them

    @property
    def thread_name(self) -> str:
        return f"lakesight-handlers-{self.name}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """End the thread after the items queued before now; items queued later are dropped (their
        events stay pending in the log, which the owner hands back at stop)."""
        self.queue.put(STOP)
        if self._thread is not None:
            self._thread.join(timeout)
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return
            self.queue.task_done()

    def revive(self) -> bool:
        """Start the thread again if it ended without being stopped; True when it did."""
        if self._thread is None or self._thread.is_alive():
            return False
        self.restarts += 1
        log.error("lane %s had stopped; started again (%d restart(s))", self.name, self.restarts)
        self.start()
        return True

    def put(self, item: Any) -> None:
        self.queue.put(item)

    def idle(self) -> bool:
        return self.queue.unfinished_tasks == 0

    def _take(self) -> list[Any]:
        items = [self.queue.get()]
        while len(items) < self._batch and items[-1] is not STOP:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _loop(self) -> None:
        while True:
            items = self._take()
            work = [item for item in items if item is not STOP]
            try:
                if work:
                    self._run(work)
            finally:
                for _ in items:
                    self.queue.task_done()
            if len(work) < len(items):
                return

    def _run(self, work: list[Any]) -> None:
        self._busy_since = time.monotonic()
        try:
            self._work(work)
            self._failing = None
        except Exception as exc:  # noqa: BLE001 - the lane outlives its work's errors; the events are retried
            self.errors += 1
            self._failing = self._last_error = describe(exc)
            log.error("lane %s: %d item(s) failed, retried later: %s", self.name, len(work), self._failing)
            try:
                self._on_error(work, exc)
            except Exception as again:  # noqa: BLE001 - the lease runs out and the events are taken again
                log.error("lane %s: cannot schedule the retry: %s", self.name, describe(again))
        finally:
            self.worked += len(work)
            self._busy_since = None

    def health(self) -> LaneHealth:
        alive = self._thread is not None and self._thread.is_alive()
        since = self._busy_since
        busy = None if since is None else round(time.monotonic() - since, 1)
        problem = None
        if not alive:
            problem = f"{self.name} lane is not running"
        elif busy is not None and busy > self._stuck_s:
            problem = f"{self.name} lane stuck for {busy:.0f} s on one piece of work"
        elif self._failing is not None:
            problem = f"{self.name} lane failing: {self._failing}"
        return LaneHealth(
            self.name,
            alive,
            self.queue.qsize(),
            busy,
            self.errors,
            self.restarts,
            self._last_error,
            problem,
            self.worked,
        )
