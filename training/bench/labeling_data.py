"""The label-efficiency benchmark's data: two sources, their drift, stream-like windows, near-duplicates.

Sources: the synthetic shapes (:func:`infra.local.sample_data.shape_images`, four classes) and
scikit-learn's handwritten digits (:func:`infra.local.sample_data.digit_variants`, ten classes).
Distribution A of each (v0's): black background, upright, no noise. B (the drifted stream): a
smooth random colour texture behind the object, rotation, pixel noise (and skewed classes for the
shapes). A scenario's pool is ``rounds`` fresh windows of ``window`` images each, in stream order:
window ``r`` is what round ``r`` may choose from, and what it does not choose is gone.

Scenarios per source: ``drift`` (A → B), ``control`` (A → A: no drift), ``duplicates`` (A → B
where 30 % of every window are near-duplicates of images of that window or of earlier ones, so
copies of images labeled under an earlier model version arrive after a retraining).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from infra.core.labeling import pixels
from infra.local.sample_data import SHAPE_CLASSES, ShapeKnobs, digit_variants, shape_images
from training.data.preprocess import decode_images

SHAPES = "shapes"
DIGITS = "digits"
SOURCES = (SHAPES, DIGITS)
DRIFT = "drift"
CONTROL = "control"
DUPLICATES = "duplicates"
KINDS = (DRIFT, CONTROL, DUPLICATES)
CLASSES = {SHAPES: SHAPE_CLASSES, DIGITS: tuple(str(d) for d in range(10))}
KNOBS: dict[str, dict[str, dict[str, Any]]] = {
    SHAPES: {
        "A": {"background": "black", "rotation": 0.0, "noise": 0.0, "weights": None},
        "B": {"background": "texture", "rotation": 45.0, "noise": 8.0, "weights": (0.4, 0.3, 0.2, 0.1)},
    },
    DIGITS: {
        "A": {"background": "black", "rotation": 0.0, "noise": 0.0, "colour": "white"},
        "B": {"background": "texture", "rotation": 30.0, "noise": 12.0, "colour": "white"},
    },
}
HOLDOUT_SEED = 9_999  # one holdout per source and distribution, for every seed and strategy
HOLDOUT_DIGITS = 400  # digits set aside for the holdouts: no pool image draws on them


def scenario(source: str, kind: str) -> str:
    return f"{source}_{kind}"


def parse_scenario(name: str) -> tuple[str, str]:
    source, _, kind = name.partition("_")
    if source not in SOURCES or kind not in KINDS:
        raise ValueError(f"unknown scenario {name!r}")
    return source, kind


SCENARIOS = tuple(scenario(source, kind) for source in SOURCES for kind in KINDS)


@dataclass
class Pool:
    """Images with their truth, in stream order."""

    keys: list[str]
    contents: list[bytes]
    labels: np.ndarray  # class ids
    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 3), np.float32))
    groups: np.ndarray = field(
        default_factory=lambda: np.zeros(0, np.int64)
    )  # each one's picture: its source's position
    hashes: list[str] = field(default_factory=list)
    thumbnails: list[bytes | None] = field(default_factory=list)  # the stream's pixel near-duplicate key

    def __len__(self) -> int:
        return len(self.keys)

    def decoded(self, image_size: int) -> Pool:
        self.images = decode_images(self.contents, image_size)[0]
        self.hashes = [hashlib.sha256(data).hexdigest() for data in self.contents]
        self.thumbnails = [pixels.thumbnail(data) for data in self.contents]
        if not len(self.groups):
            self.groups = np.arange(len(self))
        return self


def images(source: str, count: int, seed: int, side: str, *, file_size: int, image_size: int, prefix: str) -> Pool:
    """``count`` images of ``source`` from distribution ``side`` ("A" or "B"), seeded."""
    knobs = ShapeKnobs(
        count=count, size=file_size, seed=seed, prefix=prefix, holdout_fraction=0.0, **KNOBS[source][side]
    )
    if source == SHAPES:
        keys, contents, labels = [], [], []
        for name, data in shape_images(knobs):
            _, kind, base = name.split("/")
            keys.append(base)
            contents.append(data)
            labels.append(SHAPE_CLASSES.index(kind))
        return Pool(keys, contents, np.asarray(labels, np.int64)).decoded(image_size)
    sources = _digit_sources(count, seed, holdout=prefix.startswith("holdout"))
    made = list(digit_variants(knobs, sources))
    names = [f"{prefix}-{seed}-{n:06d}.png" for n in range(count)]
    digits = np.asarray([digit for digit, _ in made], np.int64)
    return Pool(names, [data for _, data in made], digits).decoded(image_size)


def _digit_sources(count: int, seed: int, *, holdout: bool) -> np.ndarray:
    """Which of the 1,797 digits to draw: the holdout's set-aside ones, or (with replacement) the rest."""
    order = np.random.default_rng(HOLDOUT_SEED).permutation(1797)
    allowed = order[:HOLDOUT_DIGITS] if holdout else order[HOLDOUT_DIGITS:]
    return np.random.default_rng(seed).choice(allowed, size=count, replace=count > len(allowed))


def near_duplicate(content: bytes, rng: np.random.Generator) -> bytes:
    """Another file of the same picture: shifted up to 2 px, maybe light noise, JPEG round trip or re-saved."""
    with Image.open(io.BytesIO(content)) as image:
        picture: np.ndarray = np.asarray(image.convert("RGB"), dtype=np.float32)
    dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
    padded = np.pad(picture, ((2, 2), (2, 2), (0, 0)), mode="edge")
    height, width = picture.shape[:2]
    picture = padded[2 - dy : 2 - dy + height, 2 - dx : 2 - dx + width]
    if rng.random() < 0.5:
        picture = picture + rng.normal(0.0, 3.0, picture.shape)
    out_image = Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8), mode="RGB")
    if rng.random() < 0.5:
        jpeg = io.BytesIO()
        out_image.save(jpeg, format="JPEG", quality=int(rng.integers(85, 96)))
        with Image.open(io.BytesIO(jpeg.getvalue())) as decoded:
            out_image = decoded.convert("RGB")
    out = io.BytesIO()
    out_image.save(out, format="PNG", compress_level=1)  # a re-save: other bytes even for equal pixels
    return out.getvalue()


def with_duplicates(fresh: Pool, window: int, share: float, seed: int, image_size: int) -> Pool:
    """Windows of ``window`` images: ``1 - share`` of each fresh (the first of ``fresh``'s window), the
    rest near-duplicates of fresh images of this window or an earlier one; each window shuffled."""
    copies = round(window * share)
    rng = np.random.default_rng(seed)
    keys: list[str] = []
    contents: list[bytes] = []
    labels: list[int] = []
    sources: list[int] = []  # per image, the fresh original's index in ``fresh``
    for start in range(0, len(fresh), window):
        originals = list(range(start, start + window - copies))
        seen = [i for i in range(start + window - copies) if i % window < window - copies]
        chosen = [int(s) for s in rng.choice(seen, size=copies)]
        members = [(i, i) for i in originals] + [(s, -1) for s in chosen]
        for n in rng.permutation(len(members)):
            source, own = members[int(n)]
            keys.append(fresh.keys[source] if own >= 0 else f"{fresh.keys[source]}.copy{len(keys)}")
            contents.append(fresh.contents[source] if own >= 0 else near_duplicate(fresh.contents[source], rng))
            labels.append(int(fresh.labels[source]))
            sources.append(source)
    # A picture's group is the position of its original in the new pool.
    position = {s: n for n, (s, key) in enumerate(zip(sources, keys, strict=True)) if ".copy" not in key}
    groups = np.asarray([position[s] for s in sources], np.int64)
    return Pool(keys, contents, np.asarray(labels, np.int64), groups=groups).decoded(image_size)
