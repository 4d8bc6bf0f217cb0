"""Image checks that every reader applies: what each path reports for bad bytes."""

from __future__ import annotations

import pytest

from infra.images import IMAGE_GLOB, glob_matcher, image_error
from tests.helpers.images import claimed_png, solid_png, truncated_png

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


@pytest.mark.parametrize("decode", [True, False])
def test_a_header_claiming_too_many_pixels_is_refused_before_decoding(decode: bool) -> None:
    # Pillow refuses only above twice its own limit: these passed every check and were decoded.
    for width, height, pixels in ((10_000, 10_000, "100,000,000"), (11_000, 11_000, "121,000,000")):
        bomb = claimed_png(width, height)
        assert len(bomb) < 1000
        assert image_error(bomb, 10_000, decode=decode, max_pixels=40_000_000) == (
            f"too many pixels: {width}x{height} = {pixels} pixels (limit 40,000,000)"
        )
    assert image_error(claimed_png(30_000, 30_000), 10_000, decode=decode).startswith("too many pixels")
    assert image_error(claimed_png(100, 100), 10_000, decode=False, max_pixels=10_000) is None
    assert image_error(claimed_png(100, 101), 10_000, decode=False, max_pixels=10_000).startswith("too many pixels")


def test_the_default_glob_matches_image_extensions_in_any_case() -> None:
    matches = glob_matcher(IMAGE_GLOB)
    for name in ("a.png", "UPPER.PNG", "b.Jpeg", "c.JPG", "d.TiFf", "e.webp", "f.gif", "g.BMP"):
        assert matches(name), name
    for name in ("notes.txt", "png", "a.png.bak", "a.pngx", "a_png"):
        assert not matches(name), name


def test_the_glob_matcher_reads_hadoop_globs_as_spark_does() -> None:
    assert glob_matcher("*.{png,jpg}")("x.jpg") and not glob_matcher("*.{png,jpg}")("x.gif")
    assert glob_matcher("[!a]*.png")("b.png") and not glob_matcher("[!a]*.png")("a.png")
    assert glob_matcher("img-??.png")("img-07.png") and not glob_matcher("img-??.png")("img-7.png")
    assert glob_matcher(r"a\*.png")("a*.png") and not glob_matcher(r"a\*.png")("ab.png")
    assert glob_matcher("a+b.(1).png")("a+b.(1).png")


def test_decoder_floods_are_refused_from_their_structure_by_every_reader() -> None:
    from infra.images import MAX_JPEG_SCANS, MAX_PNG_CHUNKS
    from tests.helpers.images import chunk_flood_png, many_scan_jpeg, zlib_text_png
    from training.data.preprocess import decode_images

    flood = chunk_flood_png(185_000)  # 2.2 MB: Pillow took 0.4 s reading its chunks
    scans = many_scan_jpeg(3 * MAX_JPEG_SCANS)
    text_bomb = zlib_text_png(40, 900 * 1024)  # 40 KiB inflating to 35 MiB of text (Pillow allowed 64)
    expected = {
        "flood": f"too many PNG chunks (limit {MAX_PNG_CHUNKS:,})",
        "scans": f"too many JPEG scans: {3 * MAX_JPEG_SCANS + 10:,} (limit {MAX_JPEG_SCANS})",
    }
    for decode in (True, False):  # the stream's check, the model server's header check
        assert image_error(flood, 10_000_000, decode=decode) == expected["flood"]
        assert image_error(scans, 10_000_000, decode=decode) == expected["scans"]
        assert "text chunks" in (image_error(text_bomb, 10_000_000, decode=decode) or "")
    # The model's own decoding (the pyfunc, the SQL functions, the model server's batches).
    _, errors = decode_images([flood, scans, text_bomb, chunk_flood_png(10), many_scan_jpeg(0)], 16)
    assert errors[:2] == [expected["flood"], expected["scans"]]
    assert "text chunks" in (errors[2] or "")
    assert errors[3:] == [None, None]  # real images pass


def test_the_model_decodes_only_the_formats_the_stream_accepts() -> None:
    from tests.helpers.images import ppm_image
    from training.data.preprocess import decode_images

    _, errors = decode_images([ppm_image(), solid_png()], 16)
    assert errors == ["unsupported format PPM", None]
