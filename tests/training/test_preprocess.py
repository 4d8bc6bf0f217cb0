"""The one preprocessing: batch decoding equals single decoding, and bad rows are reported."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.helpers.images import solid_png, truncated_png
from training.data.preprocess import decode_image, decode_images


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
