"""Checks on raw image bytes that every reader applies the same way, and the default file names."""

from __future__ import annotations

import hashlib
import io
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from infra.errors import LakesightError
from infra.settings import MAX_IMAGE_PIXELS

# The formats the model decodes: every reader (stream, model server, SQL functions, the pyfunc)
# refuses the others before Pillow decodes them.
SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"})
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff")
# Pillow's own guard is only a backstop: it warns above this and refuses only above twice this,
# so the check in ``image_error`` is the one that holds (docs/STREAMING.md, "What a row gets").
Image.MAX_IMAGE_PIXELS = 64_000_000
# Decoding budget beyond the pixel count (docs/STREAMING.md, "What a row gets"). Pillow reads PNG
# chunks one by one (about 2 µs each): a 2 MB file of 185,000 empty chunks took 0.4 s. A
# progressive JPEG is decoded once per scan: 3,000 scans took 0.8 s for a 256x256 image. Real
# images have a few dozen chunks (IDAT every 8-64 KiB) and about ten scans.
MAX_PNG_CHUNKS = 10_000
MAX_JPEG_SCANS = 100
# Decompressed text (zTXt, iTXt) one PNG may hold; Pillow's default is 64 MiB.
PngImagePlugin.MAX_TEXT_MEMORY = 4 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8"
# A JPEG's start-of-scan marker; inside entropy-coded data 0xFF is always followed by 0x00.
JPEG_SCAN_MARKER = b"\xff\xda"


class ImageRefused(LakesightError):
    """An image refused before decoding (format, pixel count, decoding budget); the message says why."""


def case_insensitive_glob(extensions: Iterable[str]) -> str:
    """A Hadoop glob (Spark's ``pathGlobFilter``) matching these extensions in any letter case."""
    classes = ("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext) for ext in extensions)
    return "*.{" + ",".join(classes) + "}"


# The file names every folder reader (ingest, the scoring stream, the CLI) picks up by default:
# Spark's glob is case-sensitive, and ``UPPER.PNG`` used to be skipped without a word.
IMAGE_GLOB = case_insensitive_glob(IMAGE_EXTENSIONS)


def _glob_regex(glob: str) -> str:
    """The regular expression of a Hadoop glob: ``* ? [..] [!..] {a,b} \\x``, as Spark applies it."""
    out: list[str] = []
    depth = index = 0
    while index < len(glob):
        char = glob[index]
        if char == "\\" and index + 1 < len(glob):
            index += 1
            out.append(re.escape(glob[index]))
        elif char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and glob.find("]", index + 1) > 0:
            end = glob.find("]", index + 1)
            body = glob[index + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            index = end
        elif char == "{":
            depth += 1
            out.append("(?:")
        elif char == "}" and depth:
            depth -= 1
            out.append(")")
        elif char == "," and depth:
            out.append("|")
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


def glob_matcher(glob: str) -> Callable[[str], bool]:
    """Whether a file name passes ``glob`` the way Spark's ``pathGlobFilter`` decides it."""
    pattern = re.compile(_glob_regex(glob), re.DOTALL)
    return lambda name: pattern.fullmatch(name) is not None


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixel_error(width: int, height: int, max_pixels: int) -> str | None:
    """The refusal for an image whose header claims more than ``max_pixels`` pixels."""
    pixels = width * height
    if pixels <= max_pixels:
        return None
    return f"too many pixels: {width}x{height} = {pixels:,} pixels (limit {max_pixels:,})"


def _png_chunks_over(data: bytes, limit: int) -> bool:
    """Whether the PNG ``data`` has more than ``limit`` chunks (stops counting there)."""
    position, count = len(PNG_SIGNATURE), 0
    while position + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, position)
        count += 1
        if count > limit:
            return True
        if data[position + 4 : position + 8] == b"IEND":
            return False
        position += 12 + length
    return False


def structure_error(data: bytes) -> str | None:
    """Why ``data`` would cost more to decode than any real image, read from its structure alone
    (no decompression): too many PNG chunks, too many JPEG scans."""
    if data.startswith(PNG_SIGNATURE) and _png_chunks_over(data, MAX_PNG_CHUNKS):
        return f"too many PNG chunks (limit {MAX_PNG_CHUNKS:,})"
    if data.startswith(JPEG_START):
        scans = data.count(JPEG_SCAN_MARKER)
        if scans > MAX_JPEG_SCANS:
            return f"too many JPEG scans: {scans:,} (limit {MAX_JPEG_SCANS})"
    return None


@contextmanager
def opened_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """``data`` opened by Pillow (header only) once it passed the checks every reader shares: its
    structure (:func:`structure_error`), a format the model decodes, at most ``max_pixels`` pixels.
    Raises :class:`ImageRefused`; Pillow's own errors for what is not an image pass through."""
    refused = structure_error(data)
    if refused is not None:
        raise ImageRefused(refused)
    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format or "unknown"
        if fmt not in SUPPORTED_FORMATS:
            raise ImageRefused(f"unsupported format {fmt}")
        too_many = pixel_error(*image.size, max_pixels)
        if too_many is not None:
            raise ImageRefused(too_many)
        yield image


def image_error(
    data: bytes | None, max_bytes: int, *, decode: bool = True, max_pixels: int = MAX_IMAGE_PIXELS
) -> str | None:
    """Why ``data`` cannot be used as an image, or None when it decodes fully.

    The pixel count comes from the header (``Image.open`` reads no pixel data), so a small file
    claiming a huge image is refused before anything decodes it. ``decode=False`` checks the
    header and format only, for callers that decode the image anyway and record a decoder
    failure themselves (the scoring path: one decode, not two).
    """
    if data is None or len(data) == 0:
        return "empty file"
    if len(data) > max_bytes:
        return f"too large: {len(data)} bytes (limit {max_bytes})"
    try:
        with opened_image(data, max_pixels=max_pixels) as image:
            if decode:
                image.load()
    except ImageRefused as exc:
        return str(exc)
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError as exc:
        return f"too many pixels: {exc}"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"undecodable image: {exc}"
    return None
