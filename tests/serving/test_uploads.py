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
    boundary = content_type.split("boundary=", 1)[1].encode()
    parts = split_multipart(body, boundary)
    assert [(p.param("content-disposition", "filename"), p.data) for p in parts] == [
        ("a.png", TRICKY),
        ("b.jpg", b"\r\n"),
    ]
    # Read as uploads, neither is an image: each gets the header check's reason and no bytes.
    uploads = parse_uploads(Settings(), content_type, body)
    assert not uploads.single
    assert [(u.caller_id, u.content) for u in uploads.items] == [("a.png", None), ("b.jpg", None)]
    assert all(u.error for u in uploads.items)


def test_part_headers_come_back_by_lower_case_name() -> None:
    parts = split_multipart(b"--b\r\nContent-Type: image/png\r\n\r\nDATA\r\n--b--\r\n", b"b")
    assert [(p.headers["content-type"], p.data) for p in parts] == [(b"image/png", b"DATA")]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"--b\r\nContent-Type: image/png\r\n\r\nDATA", "truncated"),
        (b"--b\r\nContent-Type: image/png DATA\r\n--b--", "truncated"),
        (b"--b\r\nno colon here\r\n\r\nDATA\r\n--b--", "malformed multipart body"),
        (b"nothing like multipart", "malformed multipart body"),
        (b"a preamble\r\n--b\r\nContent-Type: image/png\r\n\r\nDATA\r\n--b--", "malformed multipart body"),
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


def test_a_body_of_many_tiny_parts_is_refused_before_its_headers_are_read() -> None:
    import time

    body = b"".join(b"--b\r\nContent-Type: image/png\r\n\r\nx\r\n" for _ in range(200_000)) + b"--b--\r\n"
    started = time.perf_counter()
    with pytest.raises(RequestRefused) as refused:
        split_multipart(body, b"b", max_parts=32)
    assert refused.value.status_code == 413 and "more than 32 images" in refused.value.message
    assert time.perf_counter() - started < 0.5  # it stopped at part 33


def test_utf8_file_names_come_back_as_sent_and_rfc2231_ones_are_ignored() -> None:
    # RFC 7578 section 4.2 forbids filename*= in multipart/form-data: the field name stands in.
    body = (
        b'--b\r\nContent-Disposition: form-data; name="images"; filename="caf\xc3\xa9.png"\r\n'
        b"Content-Type: image/png\r\n\r\nA\r\n"
        b"--b\r\nContent-Disposition: form-data; name=\"images\"; filename*=utf-8''na%C3%AFve.png\r\n"
        b"Content-Type: image/png\r\n\r\nB\r\n--b--\r\n"
    )
    uploads = parse_uploads(Settings(), "multipart/form-data; boundary=b", body)
    assert [u.caller_id for u in uploads.items] == ["café.png", "images"]


def test_a_decompression_bomb_is_refused_from_its_header_like_the_stream_does() -> None:
    from tests.helpers.images import claimed_png, solid_png

    bomb = claimed_png(11_000, 11_000)
    with pytest.raises(RequestRefused) as refused:
        parse_uploads(Settings(), "image/png", bomb)
    assert refused.value.status_code == 422 and "too many pixels" in refused.value.message
    content_type, body = _encoded([("bomb.png", bomb, "image/png"), ("ok.png", solid_png(), "image/png")])
    bad, good = parse_uploads(Settings(), content_type, body).items
    assert bad.content is None and "too many pixels" in (bad.error or "")
    assert good.content is not None and good.error is None
