"""Image checks that every reader applies: what each path reports for bad bytes."""

from __future__ import annotations

from infra.images import image_error
from tests.helpers.images import solid_png, truncated_png

PPM = b"P6\n2 2\n255\n" + bytes(12)


def test_header_check_skips_only_the_decode() -> None:
    broken = truncated_png()
    assert image_error(broken, 10_000).startswith("undecodable")
    # The header is intact, so only a decoder can tell: the scoring path leaves it to the model.
    assert image_error(broken, 10_000, decode=False) is None
    for decode in (True, False):
        assert image_error(b"", 10_000, decode=decode) == "empty file"
        assert image_error(b"not an image", 10_000, decode=decode) == "not an image"
        assert image_error(PPM, 10_000, decode=decode) == "unsupported format PPM"
        assert image_error(solid_png(), 10, decode=decode).startswith("too large")
        assert image_error(solid_png(), 10_000, decode=decode) is None
