"""Stable pseudo-random decisions keyed by a string (same key, same answer, on every machine)."""

from __future__ import annotations

import hashlib


def stable_fraction(key: str) -> float:
    """A number in [0, 1) derived from ``key`` alone: for splits and sampling that never change."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
