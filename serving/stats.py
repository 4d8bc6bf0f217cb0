"""Counters of the model server for ``GET /v1/stats`` and the status page: rate, latency, outcomes."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np

WINDOW_SECONDS = 60.0


class ServingStats:
    def __init__(self, window_s: float = WINDOW_SECONDS) -> None:
        self._window_s = window_s
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, float, int]] = deque()  # (finished_at, latency_ms, images)
        self.statuses: Counter[int] = Counter()
        self.images = 0
        self.started_at = time.time()

    def refused(self, status: int) -> None:
        """Count a request refused before any work (a wrong key): in ``statuses``, never in the latency
        window, so a flood of wrong-key requests cannot move p50 and p99 of the real ones."""
        with self._lock:
            self.statuses[status] += 1

    def observe(self, status: int, latency_ms: float, images: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.statuses[status] += 1
            self.images += images
            self._recent.append((now, latency_ms, images))
            self._trim(now)

    def snapshot(self) -> dict[str, object]:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            recent = list(self._recent)
            statuses = {str(k): v for k, v in sorted(self.statuses.items())}
            images = self.images
        span = min(self._window_s, max(time.time() - self.started_at, 1e-9))
        latencies = np.array([r[1] for r in recent]) if recent else None
        return {
            "requests": sum(statuses.values()),
            "images": images,
            "statuses": statuses,
            "window_s": self._window_s,
            "requests_per_s": round(len(recent) / span, 2),
            "images_per_s": round(sum(r[2] for r in recent) / span, 2),
            "p50_ms": None if latencies is None else round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": None if latencies is None else round(float(np.percentile(latencies, 99)), 2),
        }

    def _trim(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > self._window_s:
            self._recent.popleft()
