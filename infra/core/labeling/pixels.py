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
from threadpoolctl import threadpool_limits

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
    return shift_residuals(image[None], others, np.arange(len(others))[None])[0]


def shift_residuals(queries: np.ndarray, references: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``(n, count)``: per query, the smallest RMS residual to each of its ``references[index[i]]``
    (``index`` -1: infinite) over shifts up to ``SHIFT``.

    The residual's square at a shift is ``|window|² - 2 <window, core> + |core|²`` over the query's
    core (its centre less ``SHIFT`` a side) and the reference's window at that shift: the window
    sums come from an integral image, and the cross terms of every shift at once from one matrix
    product with the core placed at each shift. The same figures as comparing every shifted window
    in turn, several times faster over a window's candidates.
    """
    side = SIZE - 2 * SHIFT
    shifts = 2 * SHIFT + 1
    out = np.full(index.shape, np.inf)
    refs = np.asarray(references, np.float64)
    square = np.pad(np.cumsum(np.cumsum((refs**2).sum(-1), axis=1), axis=2), ((0, 0), (1, 0), (1, 0)))
    windows = square[:, side:, side:] - square[:, :-side, side:] - square[:, side:, :-side] + square[:, :-side, :-side]
    flat = refs.reshape(len(refs), -1)
    placed = np.zeros((shifts, shifts, SIZE, SIZE, 3))
    # Hundreds of small products: several BLAS threads only contend (a hundred times slower on a busy machine).
    with threadpool_limits(1, user_api="blas"):
        _cross_residuals(queries, index, flat, windows, placed, out)
    return out


def _cross_residuals(
    queries: np.ndarray, index: np.ndarray, flat: np.ndarray, windows: np.ndarray, placed: np.ndarray, out: np.ndarray
) -> None:
    side = SIZE - 2 * SHIFT
    shifts = 2 * SHIFT + 1
    for row, query in enumerate(np.asarray(queries, np.float64)):
        columns = np.flatnonzero(index[row] >= 0)
        if not len(columns):
            continue
        core = query[SHIFT : SIZE - SHIFT, SHIFT : SIZE - SHIFT]
        for a in range(shifts):
            for b in range(shifts):
                placed[a, b, a : a + side, b : b + side] = core
        chosen = index[row, columns]
        cross = flat[chosen] @ placed.reshape(shifts * shifts, -1).T
        total = windows[chosen].reshape(len(chosen), -1) - 2.0 * cross + float((core**2).sum())
        out[row, columns] = np.sqrt(np.maximum(total, 0.0) / (side * side * 3)).min(axis=1)
        placed[:] = 0.0


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
    if n == 0 or count <= 0:
        return index, np.full((n, neighbours), np.inf)
    q, r = coarse(queries), coarse(references)
    distance = (q**2).sum(1)[:, None] + (r**2).sum(1)[None, :] - 2.0 * q @ r.T
    if same_set:
        np.fill_diagonal(distance, np.inf)
    index[:, :count] = np.argsort(distance, axis=1, kind="stable")[:, :count]
    return index, shift_residuals(queries, references, index)


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
