"""Test image builders."""

from __future__ import annotations

import numpy as np

from infra.local.sample_data import png_bytes


def solid_png(value: int = 128, size: int = 32) -> bytes:
    return png_bytes(np.full((size, size, 3), value, dtype=np.uint8))


def truncated_png(size: int = 32) -> bytes:
    data = solid_png(77, size)
    return data[: len(data) // 2]
