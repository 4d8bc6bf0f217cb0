"""What the model server holds for callers at once: a budget of request bytes and of requests.

A request reserves its declared Content-Length before a byte of its body is read (a chunked body
reserves as it streams in) and gives it back when it is answered. Past either budget it is
answered 503 with ``Retry-After`` at once, so a burst of large requests costs the server its
budget, never its memory. Every reservation happens on the event loop, so no lock is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from infra.web import RequestRefused

# Seconds a busy server asks a caller to wait before trying again.
RETRY_AFTER_S = 1


def busy(reason: str) -> RequestRefused:
    return RequestRefused(503, f"busy: {reason}; retry later", retry_after_s=RETRY_AFTER_S)


class Reservation:
    """One request's share of the budget; :meth:`grow` adds the bytes of a body read in chunks."""

    def __init__(self, budget: InFlightBudget):
        self._budget = budget
        self.bytes = 0

    def grow(self, count: int) -> None:
        self._budget.take_bytes(count)
        self.bytes += count


class InFlightBudget:
    def __init__(self, max_bytes: int, max_requests: int):
        self.max_bytes = max_bytes
        self.max_requests = max_requests
        self.bytes = 0
        self.requests = 0
        self.refused = 0

    def take_bytes(self, count: int) -> None:
        if self.bytes + count > self.max_bytes:
            self.refused += 1
            raise busy(f"{self.bytes} request bytes in flight of {self.max_bytes} (LAKESIGHT_SERVE_MAX_INFLIGHT_BYTES)")
        self.bytes += count

    @contextmanager
    def hold(self, declared_bytes: int | None) -> Iterator[Reservation]:
        """A reservation of one request and ``declared_bytes``, given back on exit."""
        if self.requests >= self.max_requests:
            self.refused += 1
            raise busy(f"{self.requests} requests in flight (LAKESIGHT_SERVE_MAX_INFLIGHT_REQUESTS)")
        if declared_bytes and declared_bytes > self.max_bytes:  # could never fit: no use retrying
            raise RequestRefused(
                413, f"body of {declared_bytes} bytes is over the in-flight budget of {self.max_bytes} bytes"
            )
        reservation = Reservation(self)
        if declared_bytes:
            reservation.grow(declared_bytes)
        self.requests += 1
        try:
            yield reservation
        finally:
            self.requests -= 1
            self.bytes -= reservation.bytes

    def snapshot(self) -> dict[str, int]:
        return {"in_flight_requests": self.requests, "in_flight_bytes": self.bytes, "busy_refusals": self.refused}
