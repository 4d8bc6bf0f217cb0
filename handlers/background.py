"""A background worker thread that can be woken and stopped: the shape every queue runner here shares."""

from __future__ import annotations

import threading
import time


class WakeableWorker:
    """Runs :meth:`_loop` on a daemon thread; ``_wake`` nudges it, :meth:`stop` ends it."""

    thread_name = "lakesight-worker"

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def idle(self) -> bool:
        """Nothing running and nothing waiting."""
        raise NotImplementedError

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until :meth:`idle` (tests and the bench use this); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.02)
        return False

    def _loop(self) -> None:
        raise NotImplementedError
