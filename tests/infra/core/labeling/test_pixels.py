"""Pixel near-duplicates: copies (a 2-px shift, a JPEG round trip) of images humans have are
skipped, distinct images are not, whatever model scored them."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from infra.core.labeling import hand_off, pixels
from infra.core.labeling.strategies import MARGIN, MARGIN_DIVERSITY, RANDOM, Candidates, Known, select
from infra.lake import Lake
from infra.local.sample_data import ShapeKnobs, digits_images, shape_images
from infra.settings import Settings
from infra.tables import IMAGES, LABELING_CANDIDATES, LABELING_REQUESTS
from tests.infra.core.labeling.test_handoff import CLASSES, at, paced, spread
from training.bench.labeling_data import KNOBS, SHAPES, near_duplicate

__all__ = ["paced"]  # the fixture, shared with test_handoff


def shapes(count: int, seed: int) -> list[bytes]:
    knobs = ShapeKnobs(count=count, size=96, seed=seed, prefix="p", holdout_fraction=0.0, **KNOBS[SHAPES]["B"])
    return [data for _, data in shape_images(knobs)]


def digits(count: int) -> list[bytes]:
    return [data for _, data in list(digits_images(size=32))[:count]]


def shifted_jpeg(content: bytes, seed: int) -> bytes:
    """A copy shifted by exactly 2 px and re-encoded as JPEG (the hardest of the benchmark's copies)."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        state = rng.bit_generator.state
        dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
        noisy, jpeg = rng.random(), rng.random()
        if max(abs(dx), abs(dy)) == 2 and noisy >= 0.5 and jpeg < 0.5:
            rng.bit_generator.state = state
            return near_duplicate(content, rng)
    raise AssertionError("no 2-px JPEG draw")


def candidates(contents: list[bytes], *, embeddings: bool = True) -> Candidates:
    n = len(contents)
    probabilities = np.tile([0.55, 0.45], (n, 1)) + np.linspace(0, 0.1, n)[:, None] * [1, -1]
    return Candidates(
        keys=[f"c{i:03d}" for i in range(n)],
        probabilities=probabilities,
        predicted=["a"] * n,
        embeddings=np.eye(n, 64, dtype=np.float32) if embeddings else None,
        content_hashes=[hashlib.sha256(c).hexdigest() for c in contents],
        thumbnails=[pixels.thumbnail(c) for c in contents],
    )


@pytest.mark.parametrize("source", ["shapes", "digits"])
@pytest.mark.parametrize("strategy", [MARGIN_DIVERSITY, MARGIN, RANDOM])
def test_shifted_jpeg_copies_of_known_images_are_skipped_and_distinct_ones_are_not(source: str, strategy: str) -> None:
    images = shapes(120, seed=3) if source == "shapes" else digits(120)
    sent, fresh = images[:60], images[60:]
    copies = [shifted_jpeg(c, seed=i) for i, c in enumerate(sent[:30])]
    window = candidates(copies + fresh)
    known = Known(thumbnails=tuple(pixels.thumbnail(c) for c in sent))
    chosen = select(window, len(window), strategy=strategy, known=known)
    assert sorted(chosen.near_duplicates) == list(range(30))  # every copy, and nothing else
    assert sorted(chosen.indices) == list(range(30, 90))


def test_a_copy_within_one_window_is_sent_once() -> None:
    originals = shapes(40, seed=5)
    window = candidates([*originals, shifted_jpeg(originals[0], seed=1)])
    chosen = select(window, len(window), strategy=MARGIN)
    assert len(chosen.near_duplicates) == 1 and len(chosen.picks) == 40
    assert {0, 40} & set(chosen.near_duplicates)


def test_pixel_copies_are_caught_without_embeddings() -> None:
    sent = shapes(30, seed=7)
    window = candidates([shifted_jpeg(sent[0], seed=2), *shapes(10, seed=8)], embeddings=False)
    chosen = select(window, 11, known=Known(thumbnails=tuple(pixels.thumbnail(c) for c in sent)))
    assert chosen.near_duplicates == [0] and len(chosen.picks) == 10 and chosen.fallback


def scored_batch(contents: list[bytes], names: list[str], version: str, vectors: list[list[float]]) -> pa.Table:
    n = len(contents)
    return IMAGES.conform(
        pa.table(
            {
                "path": [f"file:/in/{name}.png" for name in names],
                "load_date": pa.array([at(9).date()] * n, pa.date32()),
                "content": contents,
                "content_hash": [hashlib.sha256(c).hexdigest() for c in contents],
                "predicted_label": ["cat"] * n,
                "confidence": [0.6] * n,
                "probabilities": [[0.6, 0.4]] * n,
                "embedding": pa.array(vectors, pa.list_(pa.float32())),
                "class_names": [CLASSES] * n,
                "model_name": ["m"] * n,
                "model_version": [version] * n,
                "scored_at": pa.array([at(9)] * n, pa.timestamp("us", tz="UTC")),
            }
        )
    )


def test_after_a_retraining_copies_are_still_caught_and_other_networks_vectors_are_not_compared(
    paced: Settings,
) -> None:
    settings = paced.model_copy(update={"labeling_window_s": 0, "labeling_min_distance": 0.05})
    lake = Lake(settings)
    sent = shapes(12, seed=11)
    first = scored_batch(sent, [f"v1-{i}" for i in range(12)], "1", [spread(i) for i in range(12)])
    assert hand_off(settings, lake, first, app_id="score:q", batch_id=0, now=at(9)).sent == 12
    # Version 2: a new network. A copy of a v1 image gets a vector unlike its original's; a
    # distinct image happens to get the very vector a v1 image had (another network's space).
    copy, distinct = shifted_jpeg(sent[3], seed=4), shapes(1, seed=12)[0]
    second = scored_batch([copy, distinct], ["copy-of-v1-3", "new"], "2", [spread(9), spread(5)])
    handed = hand_off(settings, lake, second, app_id="score:q", batch_id=1, now=at(10))
    assert handed.outcomes == {"sent": 1, "near_duplicate": 1}
    outcomes = {r["path"]: r["outcome"] for r in lake.read(LABELING_CANDIDATES).to_pylist()}
    assert outcomes["file:/in/copy-of-v1-3.png"] == "near_duplicate"
    assert outcomes["file:/in/new.png"] == "sent"
    thumbnails = lake.read(LABELING_REQUESTS, columns=["thumbnail"]).column("thumbnail").to_pylist()
    assert len(thumbnails) == 13 and all(t and len(t) == pixels.SIZE * pixels.SIZE * 3 for t in thumbnails)


def test_distinct_images_close_in_the_embedding_are_not_skipped_when_pixels_are_known() -> None:
    images = shapes(6, seed=31)
    window = candidates(images)
    same_vector = np.tile(np.eye(1, 64, dtype=np.float32), (6, 1))  # one point for all: "near" by embedding
    window = Candidates(
        window.keys, window.probabilities, window.predicted, same_vector, window.content_hashes, window.thumbnails
    )
    chosen = select(window, 6, strategy=MARGIN_DIVERSITY, min_distance=0.05)
    assert chosen.near_duplicates == [] and len(chosen.picks) == 6


def test_shift_residuals_equal_comparing_every_shifted_window_in_turn() -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(-127, 128, (12, pixels.SIZE, pixels.SIZE, 3)).astype(np.float32)
    images[1] = np.roll(images[0], (2, -1), axis=(0, 1))  # a shifted copy: residual 0 at that shift
    index = np.asarray([[1, 2, 3, -1], [0, 4, 5, 6]])
    found = pixels.shift_residuals(images[:2], images, index)
    side, shift = pixels.SIZE - 2 * pixels.SHIFT, pixels.SHIFT
    for row in range(2):
        core = images[row][shift : shift + side, shift : shift + side]
        for column, other in enumerate(index[row]):
            if other < 0:
                assert found[row, column] == np.inf
                continue
            expected = min(
                float(np.sqrt(((images[other][dy : dy + side, dx : dx + side] - core) ** 2).mean()))
                for dy in range(2 * shift + 1)
                for dx in range(2 * shift + 1)
            )
            assert found[row, column] == pytest.approx(expected, abs=1e-4)
    assert found[0, 0] == pytest.approx(0.0, abs=1e-4)
