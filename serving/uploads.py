"""Reading a classify request: one raw image body, or a multipart batch of images, within limits.

Every refusal is an ``infra.web.RequestRefused`` carrying its HTTP status, so the route answers 4xx
with a one-line reason and never 500 for what a caller sent. A batch keeps going past a bad
part: that part gets a per-image error and the others are still answered.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from infra.images import image_error
from infra.settings import Settings
from infra.web import RequestRefused

# python-multipart logs each framing error it raises at WARNING: a hostile caller must not fill
# the log (the 400 already says why).
logging.getLogger("python_multipart").setLevel(logging.ERROR)

# Headers and boundaries of a multipart body, beyond the images themselves.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# RFC 2046 caps a boundary at 70 characters.
MAX_BOUNDARY_CHARS = 70
# Header lines a part may have (Content-Disposition, Content-Type and a few a client may add).
MAX_PART_HEADERS = 8
DEFAULT_PART_HEADER_BYTES = 2048
# Part types accepted besides image/*: what curl -F and most HTTP clients send for a file.
GENERIC_BINARY = "application/octet-stream"


@dataclass
class Upload:
    """One image of a request: its bytes, or why there are none; ``caller_id`` is the part's name."""

    caller_id: str | None
    content: bytes | None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.error is not None:
            self.content = None  # refused: never reaches the model


@dataclass
class Uploads:
    items: list[Upload]
    single: bool  # a raw body: answered as one object, a bad image is a 422


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_image_type(kind: str) -> bool:
    return kind.startswith("image/") and len(kind) > len("image/")


async def read_capped(
    chunks: AsyncIterator[bytes], limit: int, what: str, reserve: Callable[[int], None] | None = None
) -> bytearray:
    """The whole body, refused with 413 as soon as it passes ``limit`` bytes (never buffered past it).

    ``reserve`` is called with each chunk's size before it is kept (a body of undeclared length
    takes its share of the in-flight budget as it arrives, ``serving.admission``)."""
    body = bytearray()
    async for chunk in chunks:
        if len(body) + len(chunk) > limit:
            raise RequestRefused(413, f"{what} is over the limit of {limit} bytes")
        if reserve is not None:
            reserve(len(chunk))
        body.extend(chunk)
    return body  # a bytearray: the bytes are not copied once more


def body_limit(settings: Settings, kind: str) -> int:
    if kind == "multipart/form-data":
        return settings.max_batch_images * settings.max_image_bytes + MULTIPART_OVERHEAD_BYTES
    return settings.max_image_bytes


def check_declared_length(declared: str | None, limit: int) -> int | None:
    """The declared Content-Length; 413 before reading when it already says the body is too large."""
    if declared is None:
        return None
    try:
        length = int(declared)
    except ValueError:
        raise RequestRefused(400, "Content-Length is not a number") from None
    if length > limit:
        raise RequestRefused(413, f"body of {length} bytes is over the limit of {limit} bytes")
    return length


def check_kind(kind: str) -> None:
    if kind != "multipart/form-data" and not is_image_type(kind):
        raise RequestRefused(
            415, f"content type {kind or '(none)'!r} is not an image: send image/* or multipart/form-data"
        )


def parse_uploads(settings: Settings, content_type: str, body: bytes) -> Uploads:
    """The images of a request whose type passed :func:`check_kind` and body passed the size cap."""
    kind = media_type(content_type)
    if kind != "multipart/form-data":
        if not body:
            raise RequestRefused(422, "the body is empty: send the image bytes")
        refused = header_error(settings, body)
        if refused:
            raise RequestRefused(422, refused)
        return Uploads([Upload(None, body)], single=True)
    return Uploads(_multipart(settings, content_type, body), single=False)


def _multipart(settings: Settings, content_type: str, body: bytes) -> list[Upload]:
    parts = split_multipart(
        body,
        _boundary(content_type),
        max_parts=settings.max_batch_images,
        max_part_bytes=settings.max_image_bytes,
        max_header_bytes=settings.max_part_header_bytes,
    )
    if not parts:
        raise RequestRefused(400, "the multipart body holds no images")
    return [_part_upload(settings, part) for part in parts]


def _boundary(content_type: str) -> bytes:
    # python-multipart's header reader is linear in the header's length; the stdlib email one was not.
    _kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if not 1 <= len(boundary) <= MAX_BOUNDARY_CHARS:
        raise RequestRefused(400, "multipart/form-data without a usable boundary")
    return boundary


@dataclass
class Part:
    """One part of a multipart body: its headers (names lower-case) and its bytes.

    ``oversize`` is set when the part passed ``max_part_bytes``: its bytes past the cap were not kept.
    """

    headers: dict[str, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    oversize: bool = False

    def param(self, header: str, name: str) -> str | None:
        """A parameter of a part header (``filename`` of Content-Disposition), UTF-8 or else latin-1."""
        _value, options = parse_options_header(self.headers.get(header, b"").decode("latin-1"))
        raw = options.get(name.encode())
        if raw is None:
            return None
        try:  # curl and browsers send UTF-8 file names; anything else is read as latin-1
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


class _PartCollector:
    """python-multipart callbacks that collect parts, refusing a body past the part cap at once and
    keeping at most ``max_part_bytes + 1`` bytes of any part."""

    def __init__(self, max_parts: int | None, max_part_bytes: int | None):
        self.parts: list[Part] = []
        self._max_parts = max_parts
        self._max_part_bytes = max_part_bytes
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self.on_header_end,
            "on_part_data": self.on_part_data,
        }

    def on_part_begin(self) -> None:
        if self._max_parts is not None and len(self.parts) >= self._max_parts:
            raise RequestRefused(413, f"more than {self._max_parts} images in one request (LAKESIGHT_MAX_BATCH_IMAGES)")
        self.parts.append(Part())

    def on_header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self.parts[-1].headers[name] = bytes(self._value).strip()
        self._field.clear()
        self._value.clear()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        if part.oversize:
            return
        part.data.extend(data[start:end])
        if self._max_part_bytes is not None and len(part.data) > self._max_part_bytes:
            part.oversize = True
            del part.data[self._max_part_bytes + 1 :]  # what is past the cap is never kept


def split_multipart(
    body: bytes,
    boundary: bytes,
    *,
    max_parts: int | None = None,
    max_part_bytes: int | None = None,
    max_header_bytes: int = DEFAULT_PART_HEADER_BYTES,
) -> list[Part]:
    """The parts of a multipart body (RFC 7578 framing), read by python-multipart.

    A part past ``max_parts`` is a 413 the moment it begins; a part header line over
    ``max_header_bytes``, more than :data:`MAX_PART_HEADERS` header lines, broken framing or a
    missing closing boundary is a 400. The parser is linear in the body's length, so no header,
    however it is written, holds the caller for long.
    """
    collector = _PartCollector(max_parts, max_part_bytes)
    try:
        parser = MultipartParser(
            boundary,
            collector.callbacks(),  # type: ignore[arg-type]  # a plain dict of the callbacks it names
            max_header_count=MAX_PART_HEADERS,
            max_header_size=max_header_bytes,
        )
        parser.write(body)
    except (MultipartParseError, FormParserError) as exc:
        raise RequestRefused(400, f"malformed multipart body: {exc}") from None
    if parser.state != MultipartState.END:
        raise RequestRefused(400, "the multipart body is truncated (no closing boundary)")
    return collector.parts


def _part_upload(settings: Settings, part: Part) -> Upload:
    caller_id = part.param("content-disposition", "filename") or part.param("content-disposition", "name")
    kind = media_type(part.headers.get("content-type", b"").decode("latin-1") or GENERIC_BINARY)
    if not (is_image_type(kind) or kind == GENERIC_BINARY):
        return Upload(caller_id, None, f"part type {kind!r} is not an image")
    if not part.data:
        return Upload(caller_id, None, "empty image")
    if part.oversize:
        return Upload(caller_id, None, f"image over the limit of {settings.max_image_bytes} bytes")
    data = bytes(part.data)
    return Upload(caller_id, data, header_error(settings, data))


def header_error(settings: Settings, data: bytes) -> str | None:
    """What the image's header already refuses (format, a decompression bomb's pixel count), before
    the model thread decodes it: the check the stream uses, so both refuse the same images."""
    return image_error(data, settings.max_image_bytes, decode=False, max_pixels=settings.max_image_pixels)
