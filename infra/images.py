"""Checks on raw image bytes that every reader applies the same way, and the default file names."""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Iterable

from PIL import Image, UnidentifiedImageError

from infra.settings import MAX_IMAGE_PIXELS

SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"})
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff")
# Pillow's own guard is only a backstop: it warns above this and refuses only above twice this,
# so the check in ``image_error`` is the one that holds (docs/STREAMING.md, "What a row gets").
Image.MAX_IMAGE_PIXELS = 64_000_000


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
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format or "unknown"
            if fmt not in SUPPORTED_FORMATS:
                return f"unsupported format {fmt}"
            too_many = pixel_error(*image.size, max_pixels)
            if too_many is not None:
                return too_many
            if decode:
                image.load()
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError as exc:
        return f"too many pixels: {exc}"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"undecodable image: {exc}"
    return None
