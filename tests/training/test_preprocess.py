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


def test_a_photo_decoded_at_reduced_scale_stays_close_to_a_full_decode() -> None:
    # JPEGs decode at 1/2-1/8 scale (Pillow's draft), never below the model's input size.
    from infra.local.sample_data import photo_images

    for _, data in photo_images(6, seed=3):  # landscape and portrait, RGB, grey and CMYK among them
        with Image.open(io.BytesIO(data)) as image:
            full = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
        reduced = decode_image(data, 64) * 255
        assert reduced.shape == (64, 64, 3)
        assert np.abs(reduced - full).mean() < 2.0
