"""Image checks and the one preprocessing: what each path reports for bad bytes, and equal pixels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from infra.images import image_error
from tests.helpers.images import solid_png, truncated_png
from training.preprocess import decode_image, decode_images

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


def test_batch_decode_matches_single_decode_and_reports_bad_rows() -> None:
    rgba = io.BytesIO()
    Image.fromarray(np.arange(48 * 48 * 4, dtype=np.uint32).astype(np.uint8).reshape(48, 48, 4)).save(rgba, "PNG")
    contents = [solid_png(200, size=32), truncated_png(), None, rgba.getvalue()]

    batch, errors = decode_images(contents, 32)

    assert batch.dtype == np.float32 and batch.shape == (4, 32, 32, 3)
    assert errors[0] is None and errors[3] is None
    assert errors[1].startswith("undecodable") and errors[2] == "empty file"
    assert np.array_equal(batch[0], decode_image(contents[0], 32))
    assert np.array_equal(batch[3], decode_image(contents[3], 32))  # RGBA converted, 48 -> 32 resized
    assert np.allclose(batch[0], 200 / 255) and not batch[1].any() and not batch[2].any()
    assert batch.min() >= 0.0 and batch.max() <= 1.0
