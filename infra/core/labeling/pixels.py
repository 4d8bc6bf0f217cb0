"""Near-duplicates in pixel space, independent of the model.

Every candidate gets a *thumbnail*: the image at 32×32, blurred, each colour channel's mean
removed, stored as signed bytes (``labeling_candidates.thumbnail``, ``labeling_requests.thumbnail``).
A candidate is a near-duplicate of an image sent or picked (any model version) when the smallest
RMS residual between their thumbnails over shifts of up to ``SHIFT`` thumbnail pixels is under a
threshold calibrated from the data: ``fraction`` of the median residual from an image to its
nearest distinct one. The nearest images are first retrieved by a coarser 8×8 view, so the shift
search runs on a few pairs per candidate. docs/LABELING.md ("Near-duplicates") has the numbers.

The classifier's embedding is not used here: a 2-pixel shift and a JPEG round trip move an image as
far in it as a distinct image (docs/LABELING.md), and it changes with every retraining.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

log = logging.getLogger(__name__)

SIZE = 32  # thumbnail side, pixels
SHIFT = 3  # residuals are the smallest over shifts of up to this many thumbnail pixels each way
COARSE = 8  # side of the retrieval view
NEIGHBOURS = 16  # nearest images (by the retrieval view) whose residual is computed
BLUR_RADIUS = 1.0
# Below this many nearest residuals, the threshold is not calibrated from the data but DEFAULT_RESIDUAL.
MIN_CALIBRATION = 8
# An image's nearest distinct one is taken as its (DISTINCT_RANK + 1)-th nearest: up to this many copies.
DISTINCT_RANK = 3
# In thumbnail units (a pixel value is stored halved): used until the data can calibrate, between
# the copies' residuals (under 5) and the nearest distinct image's (over 6.5) on shapes and digits.
DEFAULT_RESIDUAL = 5.5
_BYTES = SIZE * SIZE * 3


def thumbnail(content: bytes | None) -> bytes | None:
    """The stored thumbnail of an image's bytes; ``None`` when they do not decode."""
    if not content:
        return None
    try:
        with Image.open(io.BytesIO(content)) as image:
            small = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BOX)
    except Exception:  # noqa: BLE001 - any undecodable image simply has no thumbnail
        return None
    pixels = np.asarray(small.filter(ImageFilter.GaussianBlur(BLUR_RADIUS)), dtype=np.float32)
    centred = pixels - pixels.mean(axis=(0, 1), keepdims=True)
    return np.clip(np.round(centred / 2.0), -127, 127).astype(np.int8).tobytes()


def as_array(thumbnails: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """Stored thumbnails as a float array ``(n, SIZE, SIZE, 3)`` and which rows have one."""
    valid = np.asarray([t is not None and len(t) == _BYTES for t in thumbnails], dtype=bool)
    out = np.zeros((len(thumbnails), SIZE, SIZE, 3), np.float32)
    for i, data in enumerate(thumbnails):
        if valid[i]:
            out[i] = np.frombuffer(data, dtype=np.int8).reshape(SIZE, SIZE, 3)  # type: ignore[arg-type]
    return out, valid


def coarse(images: np.ndarray) -> np.ndarray:
    step = SIZE // COARSE
    return images.reshape(len(images), COARSE, step, COARSE, step, 3).mean(axis=(2, 4)).reshape(len(images), -1)


def shift_residual(image: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Per image of ``others``: the smallest RMS residual to ``image`` over shifts up to ``SHIFT``."""
    if len(others) == 0:
        return np.zeros(0)
    core = image[SHIFT : SIZE - SHIFT, SHIFT : SIZE - SHIFT]
    best = np.full(len(others), np.inf)
    for dy in range(-SHIFT, SHIFT + 1):
        for dx in range(-SHIFT, SHIFT + 1):
            moved = others[:, SHIFT + dy : SIZE - SHIFT + dy, SHIFT + dx : SIZE - SHIFT + dx]
            best = np.minimum(best, np.sqrt(((moved - core) ** 2).mean(axis=(1, 2, 3))))
    return best


def nearest(
    queries: np.ndarray, references: np.ndarray, *, same_set: bool = False, neighbours: int = NEIGHBOURS
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: its ``neighbours`` nearest references by the coarse view, and their shift residuals.

    Both ``(n, neighbours)``: indices into ``references`` (-1 where there are fewer) and residuals
    (infinite there). With ``same_set`` the queries are the references and an image is not its own neighbour.
    """
    n = len(queries)
    count = min(neighbours, len(references) - (1 if same_set else 0))
    index = np.full((n, neighbours), -1, np.int64)
    residual = np.full((n, neighbours), np.inf)
    if n == 0 or count <= 0:
        return index, residual
    q, r = coarse(queries), coarse(references)
    distance = (q**2).sum(1)[:, None] + (r**2).sum(1)[None, :] - 2.0 * q @ r.T
    if same_set:
        np.fill_diagonal(distance, np.inf)
    closest = np.argsort(distance, axis=1, kind="stable")[:, :count]
    for i in range(n):
        index[i, :count] = closest[i]
        residual[i, :count] = shift_residual(queries[i], references[closest[i]])
    return index, residual


def calibrated_threshold(neighbour_residuals: np.ndarray, fraction: float) -> float:
    """``fraction`` of the median residual from an image to its nearest distinct one.

    ``neighbour_residuals`` holds each image's residuals to its retrieved neighbours (a row each).
    An image may have a few copies among them, so its nearest *distinct* image is taken as its
    ``DISTINCT_RANK + 1``-th nearest: a pool where most images have a copy (the benchmark's
    near-duplicate scenario) would otherwise calibrate on copies. Too few rows: ``DEFAULT_RESIDUAL``.
    """
    if neighbour_residuals.ndim != 2 or neighbour_residuals.shape[1] == 0:
        return DEFAULT_RESIDUAL
    ranked = np.sort(neighbour_residuals, axis=1)
    values = ranked[:, min(DISTINCT_RANK, ranked.shape[1] - 1)]
    values = values[np.isfinite(values)]
    if len(values) < MIN_CALIBRATION:
        return DEFAULT_RESIDUAL
    return fraction * float(np.median(values))
