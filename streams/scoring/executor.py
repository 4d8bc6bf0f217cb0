"""Executor-side scoring: the row mappers and the SQL functions, on the champion of ``infra.core.model_cache``.

Spark reuses Python workers (``spark.python.worker.reuse``), so that process-wide cache lives
across tasks and micro-batches: the model is loaded once per worker and follows the alias.
While a ``challenger`` exists, the rows a stable hash of their path picks (``shadow_fraction``)
are also scored with it into the shadow columns (docs/PROMOTION.md); the challenger never stops
the champion's scoring.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from infra.core import model_cache
from infra.hashing import stable_fraction
from infra.registry import CHALLENGER, TF_THREADS_ENV
from infra.settings import Settings
from streams.file_rows import ARRIVAL_DDL, arrival_rows, quarantine
from streams.scoring.config import ScoringConfig

log = logging.getLogger(__name__)

PREDICTION_DDL = (
    "predicted_label string, confidence double, probabilities array<float>, embedding array<float>, "
    "class_names array<string>, "
    "model_name string, model_version string, scored_at timestamp"
)
SHADOW_DDL = "shadow_label string, shadow_confidence double, shadow_model_version string, shadow_scored_at timestamp"

# Not stored: why the worker is not scoring with the version the champion alias names (a failed
# load), carried to foreachBatch so the driver can show it in status (the workers' logs are not
# where anyone looks).
MODEL_LOAD_ERROR = "model_load_error"
SCORED_DDL = f"{ARRIVAL_DDL}, {PREDICTION_DDL}, {SHADOW_DDL}, {MODEL_LOAD_ERROR} string"
CLASSIFY_DDL = "label string, confidence double"
EMBED_DDL = "array<float>"
# Input rows may carry a reason they could not be read (a vanished blob); it wins over image checks.
FETCH_ERROR = "fetch_error"


def executor_mapper(body: Callable[..., Iterator[pd.DataFrame]], settings: Settings) -> Callable[[Any], Any]:
    """The mapInPandas function ``body(batches, config=...)`` for the executors: it closes over the
    narrow :class:`ScoringConfig`, never the driver's settings (their secrets would travel pickled
    with every task; executors read the blob connection string from their environment)."""
    config = ScoringConfig.of(settings)
    return lambda batches: body(batches, config=config)


def _prepare_worker(config: ScoringConfig) -> None:
    # Two Spark workers on two cores must not each start a full TensorFlow thread pool. The
    # setting wins over whatever the worker inherited: it is the one knob (docs/ARCHITECTURE.md).
    os.environ[TF_THREADS_ENV] = str(config.score_tf_threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def worker_champion(config: ScoringConfig, *, now: float | None = None) -> tuple[Any, str]:
    """``(classifier, version)`` of the champion for this Python worker (``infra.core.model_cache``'s cache)."""
    _prepare_worker(config)
    return model_cache.current_classifier(config, now=now)


def shadow_classifier(config: ScoringConfig, *, now: float | None = None) -> tuple[Any, str] | None:
    """``(classifier, version)`` of the challenger for this Python worker, or None while there is none."""
    if config.shadow_fraction <= 0:
        return None  # shadow scoring is off: not even the alias is looked up
    _prepare_worker(config)
    return model_cache.optional_classifier(config, alias=CHALLENGER, now=now)


def shadowed(paths: Iterable[str], fraction: float) -> list[bool]:
    """Which rows the challenger also scores: a stable hash of the path, so a replay picks the same rows."""
    if fraction >= 1:
        return [True for _ in paths]
    return [stable_fraction(f"shadow:{path}") < fraction for path in paths]


# The pandas types of the prediction and shadow columns, null until a model answers.
_OUTPUT_TYPES = {
    "predicted_label": object,
    "confidence": "float64",
    "probabilities": object,
    "embedding": object,
    "class_names": object,
    "model_name": object,
    "model_version": object,
    "scored_at": "datetime64[us, UTC]",
    "shadow_label": object,
    "shadow_confidence": "float64",
    "shadow_model_version": object,
    "shadow_scored_at": "datetime64[us, UTC]",
}
# Challenger versions whose failure this worker logged: once each, not once per batch.
_failed_shadows: set[tuple[str, str]] = set()


def _empty(index: pd.Index, types: dict[str, Any]) -> pd.DataFrame:
    """Null columns of ``types`` for ``index``."""
    n = len(index)
    nulls = {
        name: pd.Series([pd.NaT if "datetime" in str(kind) else None] * n, dtype=kind) for name, kind in types.items()
    }
    return pd.DataFrame(nulls, index=index)


def _shadow(out: pd.DataFrame, frame: pd.DataFrame, ok: pd.Index, champion_version: str, config: ScoringConfig) -> None:
    """Fill the shadow columns of ``out`` for the picked rows of ``ok`` (scored by the champion)."""
    shadow = shadow_classifier(config)
    if shadow is None or shadow[1] == champion_version or len(ok) == 0:
        return
    picked = ok[shadowed(frame.loc[ok, "path"], config.shadow_fraction)]
    if len(picked) == 0:
        return
    classifier, version = shadow
    try:
        labels, confidence, done = _labels_only(classifier, frame.loc[picked, "content"])
    except Exception as exc:  # noqa: BLE001 - the champion's scoring of this batch must not depend on it
        if (config.model_name, version) not in _failed_shadows:
            _failed_shadows.add((config.model_name, version))
            log.warning("challenger version %s failed; its batches get no shadow scores: %s", version, exc)
        return
    rows = picked[done]
    out.loc[rows, "shadow_label"] = labels
    out.loc[rows, "shadow_confidence"] = confidence
    out.loc[rows, "shadow_model_version"] = version
    out.loc[rows, "shadow_scored_at"] = pd.Timestamp.now(tz="UTC")


def _labels_only(classifier: Any, contents: pd.Series) -> tuple[list[str], np.ndarray, list[int]]:
    """``(labels, confidences, positions decoded)``: the challenger's top class only.

    Its two halves (``decode``, ``probabilities``) instead of ``classify``: the shadow columns need
    no per-class lists or embeddings, and building them was a fifth of a classify call (measured
    on training's CNN: 0.92 against 1.18 ms an image).
    """
    images, errors = classifier.decode([bytes(c) for c in contents])
    done = [i for i, error in enumerate(errors) if error is None]
    if not done:
        return [], np.zeros(0), done
    probabilities = np.asarray(classifier.probabilities(images[done]))
    best = probabilities.argmax(axis=1)
    names = list(classifier.class_names)
    return [names[b] for b in best], probabilities[np.arange(len(best)), best].astype("float64"), done


def predictions(frame: pd.DataFrame, config: ScoringConfig) -> pd.DataFrame:
    """Prediction (and shadow) columns for arrival rows: only rows without ``error`` are classified.

    A row the model still cannot decode gets the model's error and no prediction.
    """
    out = _empty(frame.index, _OUTPUT_TYPES)
    good = frame.index[frame["error"].isna() & frame["content"].notna()]
    if len(good) == 0:
        return out
    classifier, version = worker_champion(config)
    result = classifier.classify([bytes(c) for c in frame.loc[good, "content"]])
    result.index = good
    ok = good[result["error"].isna().to_numpy()]
    names = list(classifier.class_names)
    out.loc[ok, "predicted_label"] = result.loc[ok, "label"]
    out.loc[ok, "confidence"] = result.loc[ok, "confidence"].astype("float64")
    out.loc[ok, "probabilities"] = pd.Series(list(result.loc[ok, "probabilities"]), index=ok, dtype=object)
    out.loc[ok, "embedding"] = pd.Series(list(result.loc[ok, "embedding"]), index=ok, dtype=object)
    out.loc[ok, "class_names"] = pd.Series([names] * len(ok), index=ok, dtype=object)
    out.loc[ok, "model_name"] = config.model_name
    out.loc[ok, "model_version"] = version
    out.loc[ok, "scored_at"] = pd.Timestamp.now(tz="UTC")
    failed = good[result["error"].notna().to_numpy()]
    if len(failed):
        frame.loc[failed, "error"] = result.loc[failed, "error"]
    _shadow(out, frame, ok, version, config)
    return out


def score_rows(batches: Iterable[pd.DataFrame], *, config: ScoringConfig) -> Iterator[pd.DataFrame]:
    """mapInPandas body: file rows (path, modificationTime, length[, content][, fetch_error]) -> scored rows.

    Bad input (empty, over-size, undecodable, unsupported, vanished) keeps its row with ``error``
    set and no prediction; nothing here raises for a bad image.
    """
    for frame in batches:
        if frame.empty:
            continue
        fetch_errors = frame[FETCH_ERROR] if FETCH_ERROR in frame.columns else None
        files = frame.drop(columns=[FETCH_ERROR], errors="ignore")
        # The model decodes every image and reports what it cannot decode (``predictions``):
        # a full decode here as well would be the same work twice on the hot path.
        checks = config.checks
        for rows in arrival_rows([files], checks=checks, decode=False):
            if fetch_errors is not None:
                failed = fetch_errors.notna().to_numpy()
                rows.loc[failed, "error"] = fetch_errors[failed].to_numpy()
                rows.loc[failed, "content"] = None
                rows.loc[failed, "content_hash"] = None
            scored = predictions(rows, config)  # may add the decoder's error to ``rows``
            scored[MODEL_LOAD_ERROR] = model_cache.load_failure(config)
            yield pd.concat([quarantine(rows, checks), scored], axis=1)


def _classified(contents: pd.Series, config: ScoringConfig) -> tuple[list[int], pd.DataFrame | None]:
    """The positions of the non-empty rows and the champion's answer for them (None when there are none).

    What the SQL functions share: null and empty bytes never reach the model.
    """
    rows = [i for i, c in enumerate(contents) if c is not None and len(c) > 0]
    if not rows:
        return rows, None
    classifier, _ = worker_champion(config)
    return rows, classifier.classify([bytes(contents.iloc[i]) for i in rows])


def classify_series(contents: pd.Series, config: ScoringConfig) -> pd.DataFrame:
    """The SQL ``classify(content)`` body: label and confidence per row (nulls for bad images)."""
    n = len(contents)
    out = pd.DataFrame({"label": [None] * n, "confidence": [None] * n}, dtype=object)
    rows, result = _classified(contents, config)
    if result is not None:
        out.loc[rows, "label"] = result["label"].to_numpy()
        out.loc[rows, "confidence"] = result["confidence"].to_numpy()
    out["confidence"] = out["confidence"].astype("float64")
    return out


def embed_series(contents: pd.Series, config: ScoringConfig) -> pd.Series:
    """The SQL ``embed(content)`` body: the champion's L2-normalised embedding per row.

    Null for bad images, and for every row when the champion has no embedding layer.
    """
    vectors: list[Any] = [None] * len(contents)
    rows, result = _classified(contents, config)
    if result is not None:
        for row, vector in zip(rows, result["embedding"], strict=True):
            vectors[row] = vector
    return pd.Series(vectors, dtype=object)


def register_classify(spark: Any, settings: Settings, name: str = "classify") -> Any:
    """Register the champion as the Spark SQL function ``name(content)`` -> struct<label, confidence>."""
    from pyspark.sql.functions import pandas_udf

    config = ScoringConfig.of(settings)  # pickled with the function: no secrets (executor_mapper)

    @pandas_udf(CLASSIFY_DDL)  # type: ignore[call-overload]
    def classify(contents: pd.Series) -> pd.DataFrame:
        return classify_series(contents, config)

    return spark.udf.register(name, classify)


def register_embed(spark: Any, settings: Settings, name: str = "embed") -> Any:
    """Register the champion's embedding as the Spark SQL function ``name(content)`` -> array<float>."""
    from pyspark.sql.functions import pandas_udf

    config = ScoringConfig.of(settings)  # pickled with the function: no secrets (executor_mapper)

    @pandas_udf(EMBED_DDL)  # type: ignore[call-overload]
    def embed(contents: pd.Series) -> pd.Series:
        return embed_series(contents, config)

    return spark.udf.register(name, embed)
