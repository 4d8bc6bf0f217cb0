"""Test image builders."""

from __future__ import annotations

import numpy as np

from infra.local.sample_data import png_bytes


def solid_png(value: int = 128, size: int = 32) -> bytes:
    return png_bytes(np.full((size, size, 3), value, dtype=np.uint8))


def truncated_png(size: int = 32) -> bytes:
    data = solid_png(77, size)
    return data[: len(data) // 2]


def claimed_png(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    pixels = zlib.compress(b"\0" * 4096, 9)  # the first rows only: nothing should get this far
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
