"""Reading classify requests: multipart framing, limits and refusals, without a server."""

from __future__ import annotations

import httpx
import pytest

from infra.settings import Settings
from infra.web import RequestRefused
from serving.uploads import parse_uploads, split_multipart

# Bytes that look like framing inside an image must survive: CRLFs, dashes, a fake boundary.
TRICKY = bytes(range(256)) + b"\r\n--boundary\r\n\r\n--" + b"\x00\xff" * 10


def _encoded(parts: list[tuple[str, bytes, str]]) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://x/", files=[("images", p) for p in parts])
    return request.headers["content-type"], request.read()


def test_parts_come_back_byte_for_byte_with_their_names() -> None:
    content_type, body = _encoded([("a.png", TRICKY, "image/png"), ("b.jpg", b"\r\n", "image/jpeg")])
    uploads = parse_uploads(Settings(), content_type, body)
    assert not uploads.single
    assert [(u.caller_id, u.content, u.error) for u in uploads.items] == [
        ("a.png", TRICKY, None),
        ("b.jpg", b"\r\n", None),
    ]


def test_a_preamble_is_skipped() -> None:
    parts = split_multipart(b"ignored preamble\r\n--b\r\nContent-Type: image/png\r\n\r\nDATA\r\n--b--\r\n", b"b")
    assert [(h.get_content_type(), data) for h, data in parts] == [("image/png", b"DATA")]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"--b\r\nContent-Type: image/png\r\n\r\nDATA", "truncated"),
        (b"--b\r\nContent-Type: image/png DATA\r\n--b--", "no header block"),
        (b"--b\r\nno colon here\r\n\r\nDATA\r\n--b--", "malformed header"),
        (b"nothing like multipart", "does not start with its boundary"),
    ],
)
def test_broken_framing_is_a_400_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        split_multipart(body, b"b")
    assert refused.value.status_code == 400 and reason in refused.value.message


def test_a_boundary_must_be_usable() -> None:
    for content_type in (
        "multipart/form-data",
        "multipart/form-data; boundary=",
        f"multipart/form-data; boundary={'x' * 71}",
    ):
        with pytest.raises(RequestRefused, match="boundary"):
            parse_uploads(Settings(), content_type, b"--x\r\n")
