"""Test image builders."""

from __future__ import annotations

import numpy as np

from infra.local.sample_data import png_bytes


def solid_png(value: int = 128, size: int = 32) -> bytes:
    return png_bytes(np.full((size, size, 3), value, dtype=np.uint8))


def pattern_png(seed: int, size: int = 32) -> bytes:
    """Random pixels from ``seed``: pictures that differ from each other, where solid colours do not
    (the hand-off's pixel check takes brightness off, so two solid images are one picture twice)."""
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


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


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def chunk_flood_png(chunks: int) -> bytes:
    """A valid PNG with ``chunks`` empty private chunks before its pixels (Pillow reads them one by one)."""
    data = solid_png(90, 16)
    first_idat = data.index(b"IDAT") - 4
    return data[:first_idat] + _png_chunk(b"abCd", b"") * chunks + data[first_idat:]


def zlib_text_png(chunks: int, each_bytes: int) -> bytes:
    """A valid PNG carrying ``chunks`` zTXt chunks, each inflating to ``each_bytes`` (a text bomb
    under Pillow's per-chunk cap)."""
    import zlib

    data = solid_png(91, 16)
    first_idat = data.index(b"IDAT") - 4
    text = _png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * each_bytes, 9))
    return data[:first_idat] + text * chunks + data[first_idat:]


def many_scan_jpeg(extra_scans: int, side: int = 64) -> bytes:
    """A progressive JPEG whose last scan is repeated ``extra_scans`` times (each one decoded again)."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", progressive=True, quality=90)
    data = out.getvalue()
    last_scan, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last_scan:end] * extra_scans + data[end:]


def ppm_image() -> bytes:
    """A PPM: an image Pillow decodes but the model does not accept."""
    return b"P6\n2 2\n255\n" + bytes(12)
