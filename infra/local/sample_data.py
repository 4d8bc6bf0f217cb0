"""Sample images: scikit-learn's digits (real, shipped data) and synthetic shapes with drift knobs.

Both produce ``(relative_name, png_bytes)`` pairs named ``<split>/<label>/<name>.png``; one
writer puts them in a folder or a blob container.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from infra.errors import UsageError
from infra.hashing import stable_fraction

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
# texture: smooth random colour blobs, different in every image (what a shift or re-encode keeps).
BACKGROUNDS = ("black", "white", "gradient", "noise", "texture")
_TEXTURE_CELLS = 4


def holdout_side(key: str, holdout_fraction: float) -> str:
    """``'holdout'`` or ``'train'``, decided by a hash of ``key`` so it never changes."""
    return "holdout" if stable_fraction(key) < holdout_fraction else "train"


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def digits_images(*, size: int = 32, holdout_fraction: float = 0.2) -> Iterator[tuple[str, bytes]]:
    """scikit-learn's 1,797 digits as RGB PNGs of ``size``×``size``, split train / holdout."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = (pixels / 16.0 * 255.0).astype(np.uint8)
        image = Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BILINEAR)
        rgb = np.stack([np.asarray(image)] * 3, axis=-1)
        name = f"digit-{index:04d}.png"
        yield f"{holdout_side(name, holdout_fraction)}/{int(target)}/{name}", png_bytes(rgb)


@dataclass
class ShapeKnobs:
    """Knobs of the synthetic shapes; change them between runs to make drift."""

    count: int = 1000
    size: int = 64
    classes: tuple[str, ...] = SHAPE_CLASSES
    weights: tuple[float, ...] | None = None  # class balance; uniform when None
    colour: str = "random"  # "random" or a fixed colour name / #rrggbb
    background: str = "black"  # "black", "white", "gradient", "noise" or "texture"
    noise: float = 0.0  # std of Gaussian pixel noise, 0..255
    rotation: float = 0.0  # maximum rotation in degrees, either way
    brightness: float = 1.0  # every pixel scaled by this (lighting drift), then clipped
    seed: int = 0
    holdout_fraction: float = 0.2
    prefix: str = "shape"
    extra: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        unknown = set(self.classes) - set(SHAPE_CLASSES)
        if unknown:
            raise UsageError(f"unknown shape classes {sorted(unknown)}; known: {', '.join(SHAPE_CLASSES)}")
        if self.weights is not None and len(self.weights) != len(self.classes):
            raise UsageError(f"{len(self.weights)} weights given for {len(self.classes)} classes")
        if self.weights is not None and (min(self.weights) < 0 or sum(self.weights) <= 0):
            raise UsageError("class weights must be non-negative and not all zero")
        if self.background not in BACKGROUNDS:
            raise UsageError(f"background must be {', '.join(BACKGROUNDS[:-1])} or {BACKGROUNDS[-1]}")
        if self.brightness <= 0:
            raise UsageError("brightness must be positive (1.0 leaves the images as drawn)")
        if self.size < 8 or self.count < 0:
            raise UsageError("size must be at least 8 and count non-negative")


def _background(rng: np.random.Generator, knobs: ShapeKnobs) -> np.ndarray:
    s = knobs.size
    if knobs.background == "white":
        return np.full((s, s, 3), 255, np.float32)
    if knobs.background == "gradient":
        ramp = np.linspace(0, 160, s, dtype=np.float32)
        return np.repeat(np.repeat(ramp[None, :, None], s, 0), 3, 2)
    if knobs.background == "noise":
        return rng.uniform(0, 120, (s, s, 3)).astype(np.float32)
    if knobs.background == "texture":
        cells = rng.uniform(0, 150, (_TEXTURE_CELLS, _TEXTURE_CELLS, 3)).astype(np.uint8)
        smooth = Image.fromarray(cells, mode="RGB").resize((s, s), Image.Resampling.BICUBIC)
        return np.asarray(smooth, dtype=np.float32)
    return np.zeros((s, s, 3), np.float32)


def _draw_shape(kind: str, size: int, colour: tuple[int, int, int], rng: np.random.Generator) -> Image.Image:
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    radius = size * rng.uniform(0.22, 0.38)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
    fill = (*colour, 255)
    if kind == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif kind == "square":
        draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif kind == "triangle":
        corners = (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        pts = [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in corners]
        draw.polygon(pts, fill=fill)
    else:  # cross
        w = radius / 3
        draw.rectangle([cx - radius, cy - w, cx + radius, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - radius, cx + w, cy + radius], fill=fill)
    return canvas


def _colour(rng: np.random.Generator, spec: str) -> tuple[int, int, int]:
    if spec == "random":
        red, green, blue = (int(v) for v in rng.integers(90, 256, 3))
        return red, green, blue
    from PIL import ImageColor

    red, green, blue = ImageColor.getrgb(spec)[:3]
    return red, green, blue


def shape_images(knobs: ShapeKnobs) -> Iterator[tuple[str, bytes]]:
    """``knobs.count`` synthetic shape PNGs, deterministic for a given seed."""
    knobs.validate()
    rng = np.random.default_rng(knobs.seed)
    weights = np.asarray(knobs.weights or [1.0] * len(knobs.classes), dtype=np.float64)
    weights = weights / weights.sum()
    for index in range(knobs.count):
        kind = knobs.classes[int(rng.choice(len(knobs.classes), p=weights))]
        base = _background(rng, knobs)
        shape = _draw_shape(kind, knobs.size, _colour(rng, knobs.colour), rng)
        if knobs.rotation:
            angle = float(rng.uniform(-knobs.rotation, knobs.rotation))
            shape = shape.rotate(angle, resample=Image.Resampling.BILINEAR)
        rgba = np.asarray(shape, dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        pixels = base * (1 - alpha) + rgba[..., :3] * alpha
        if knobs.noise:
            pixels = pixels + rng.normal(0, knobs.noise, pixels.shape)
        if knobs.brightness != 1.0:
            pixels = pixels * knobs.brightness
        name = f"{knobs.prefix}-{knobs.seed}-{index:06d}.png"
        yield f"{holdout_side(name, knobs.holdout_fraction)}/{kind}/{name}", png_bytes(np.clip(pixels, 0, 255))


def write_images(
    images: Iterator[tuple[str, bytes]],
    *,
    out_dir: Path | None = None,
    upload: Callable[[str, bytes], object] | None = None,
    on_written: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write each image to ``out_dir`` (atomically: temp name, then rename) or ``upload`` it.

    Returns counts per split.
    """
    if (out_dir is None) == (upload is None):
        raise ValueError("give exactly one of out_dir or upload")
    counts: dict[str, int] = {}
    for name, data in images:
        if out_dir is not None:
            target = out_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_name(f".{target.name}.tmp")
            temp.write_bytes(data)
            temp.replace(target)
        else:
            assert upload is not None
            upload(name, data)
        split = name.split("/", 1)[0]
        counts[split] = counts.get(split, 0) + 1
        if on_written is not None:
            on_written(name)
    return counts


def digit_variants(knobs: ShapeKnobs, sources: np.ndarray) -> Iterator[tuple[int, bytes]]:
    """scikit-learn's digits ``sources`` (indices) drawn with the shapes' knobs: ``(digit, png_bytes)``.

    Each digit's ink is laid over ``knobs.background`` in ``knobs.colour``, rotated up to
    ``knobs.rotation``, with ``knobs.noise``: the same drift knobs as the shapes, on real
    handwriting. ``knobs.classes`` and ``knobs.weights`` do not apply (the sources decide).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(knobs.seed)
    for source in sources:
        ink = Image.fromarray((digits.images[int(source)] / 16.0 * 255.0).astype(np.uint8), mode="L")
        ink = ink.resize((knobs.size, knobs.size), Image.Resampling.BILINEAR)
        if knobs.rotation:
            ink = ink.rotate(float(rng.uniform(-knobs.rotation, knobs.rotation)), resample=Image.Resampling.BILINEAR)
        alpha = np.asarray(ink, dtype=np.float32)[..., None] / 255.0
        base = _background(rng, knobs)
        pixels = base * (1 - alpha) + np.asarray(_colour(rng, knobs.colour), np.float32) * alpha
        if knobs.noise:
            pixels = pixels + rng.normal(0, knobs.noise, pixels.shape)
        yield int(digits.target[int(source)]), png_bytes(np.clip(pixels, 0, 255))


# The photo profile's frame, landscape; portraits are the same frame turned.
PHOTO_SIZE = (640, 480)
PHOTO_MODES = ("RGB", "RGB", "RGB", "RGB", "RGB", "RGB", "RGB", "RGB", "L", "CMYK")  # a few grey and print scans


def photo_images(count: int, *, seed: int = 0, prefix: str = "photo") -> Iterator[tuple[str, bytes]]:
    """``count`` photo-sized JPEGs (640×480 or 480×640) cut from the two photos scikit-learn ships.

    Each is a random crop scaled to the frame, landscape or portrait, at quality 80-95; one in ten
    greyscale and one in ten CMYK: where decode and resize cost more than the model (``bench score``'s
    photo profile). Named ``photo/<source>/<name>.jpg``; deterministic for a given seed.
    """
    from sklearn.datasets import load_sample_images

    sources = load_sample_images()
    names = [Path(file).stem for file in sources.filenames]
    rng = np.random.default_rng(seed)
    for index in range(count):
        which = int(rng.integers(len(sources.images)))
        picture = sources.images[which]
        height, width = picture.shape[:2]
        crop_w = int(rng.integers(width // 2, width + 1))
        crop_h = min(height, int(crop_w * 3 / 4))
        left, top = int(rng.integers(width - crop_w + 1)), int(rng.integers(height - crop_h + 1))
        image = Image.fromarray(picture[top : top + crop_h, left : left + crop_w]).resize(
            PHOTO_SIZE, Image.Resampling.BILINEAR
        )
        if rng.random() < 0.3:
            image = image.transpose(Image.Transpose.ROTATE_90)
        image = image.convert(PHOTO_MODES[int(rng.integers(len(PHOTO_MODES)))])
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(80, 96)))
        yield f"photo/{names[which]}/{prefix}-{seed}-{index:06d}.jpg", buffer.getvalue()
