"""Checks on raw image bytes that every reader applies the same way."""

from __future__ import annotations

import hashlib
import io

from PIL import Image, UnidentifiedImageError

SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"})
# The file names every folder reader (ingest, the scoring stream, the CLI) picks up by default.
IMAGE_GLOB = "*.{png,jpg,jpeg,gif,bmp,webp,tif,tiff}"
# Decompression bombs are refused rather than decoded.
Image.MAX_IMAGE_PIXELS = 64_000_000


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_error(data: bytes | None, max_bytes: int, *, decode: bool = True) -> str | None:
    """Why ``data`` cannot be used as an image, or None when it decodes fully.

    ``decode=False`` checks the header and format only, for callers that decode the image
    anyway and record a decoder failure themselves (the scoring path: one decode, not two).
    """
    if data is None or len(data) == 0:
        return "empty file"
    if len(data) > max_bytes:
        return f"too large: {len(data)} bytes (limit {max_bytes})"
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format or "unknown"
            if fmt not in SUPPORTED_FORMATS:
                return f"unsupported format {fmt}"
            if decode:
                image.load()
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError as exc:
        return f"too many pixels: {exc}"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"undecodable image: {exc}"
    return None
