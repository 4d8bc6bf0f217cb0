"""Executor-side scoring: the row mappers and the SQL functions, on the champion of ``infra.champion``.

Spark reuses Python workers (``spark.python.worker.reuse``), so that process-wide cache lives
across tasks and micro-batches: the model is loaded once per worker and follows the alias.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import pandas as pd

from infra import champion as champion_cache
from infra.registry import TF_THREADS_ENV
from infra.settings import Settings
from streams.file_rows import ARRIVAL_DDL, FileChecks, arrival_rows, quarantine

PREDICTION_DDL = (
    "predicted_label string, confidence double, probabilities array<float>, embedding array<float>, "
    "class_names array<string>, "
    "model_name string, model_version string, scored_at timestamp"
)
# Not stored: why the worker is not scoring with the version the champion alias names (a failed
# load), carried to foreachBatch so the driver can show it in status (the workers' logs are not
# where anyone looks).
MODEL_LOAD_ERROR = "model_load_error"
SCORED_DDL = f"{ARRIVAL_DDL}, {PREDICTION_DDL}, {MODEL_LOAD_ERROR} string"
CLASSIFY_DDL = "label string, confidence double"
EMBED_DDL = "array<float>"
# Input rows may carry a reason they could not be read (a vanished blob); it wins over image checks.
FETCH_ERROR = "fetch_error"


def _prepare_worker(settings: Settings) -> None:
    # Two Spark workers on two cores must not each start a full TensorFlow thread pool. The
    # setting wins over whatever the worker inherited: it is the one knob (docs/ARCHITECTURE.md).
    os.environ[TF_THREADS_ENV] = str(settings.score_tf_threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def current_classifier(settings: Settings, *, now: float | None = None) -> tuple[Any, str]:
    """``(classifier, version)`` of the champion for this Python worker (``infra.champion``'s cache)."""
    _prepare_worker(settings)
    return champion_cache.current_classifier(settings, now=now)


def predictions(frame: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Prediction columns for arrival rows: only rows without ``error`` are classified.

    A row the model still cannot decode gets the model's error and no prediction.
    """
    n = len(frame)
    out = pd.DataFrame(
        {
            "predicted_label": pd.Series([None] * n, dtype=object),
            "confidence": pd.Series([None] * n, dtype="float64"),
            "probabilities": pd.Series([None] * n, dtype=object),
            "embedding": pd.Series([None] * n, dtype=object),
            "class_names": pd.Series([None] * n, dtype=object),
            "model_name": pd.Series([None] * n, dtype=object),
            "model_version": pd.Series([None] * n, dtype=object),
            "scored_at": pd.Series([pd.NaT] * n, dtype="datetime64[us, UTC]"),
        },
        index=frame.index,
    )
    good = frame.index[frame["error"].isna() & frame["content"].notna()]
    if len(good) == 0:
        return out
    classifier, version = current_classifier(settings)
    result = classifier.classify([bytes(c) for c in frame.loc[good, "content"]])
    result.index = good
    ok = good[result["error"].isna().to_numpy()]
    names = list(classifier.class_names)
    out.loc[ok, "predicted_label"] = result.loc[ok, "label"]
    out.loc[ok, "confidence"] = result.loc[ok, "confidence"].astype("float64")
    out.loc[ok, "probabilities"] = pd.Series(list(result.loc[ok, "probabilities"]), index=ok, dtype=object)
    out.loc[ok, "embedding"] = pd.Series(list(result.loc[ok, "embedding"]), index=ok, dtype=object)
    out.loc[ok, "class_names"] = pd.Series([names] * len(ok), index=ok, dtype=object)
    out.loc[ok, "model_name"] = settings.model_name
    out.loc[ok, "model_version"] = version
    out.loc[ok, "scored_at"] = pd.Timestamp.now(tz="UTC")
    failed = good[result["error"].notna().to_numpy()]
    if len(failed):
        frame.loc[failed, "error"] = result.loc[failed, "error"]
    return out


def score_rows(batches: Iterable[pd.DataFrame], *, settings: Settings) -> Iterator[pd.DataFrame]:
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
        checks = FileChecks.of(settings)
        for rows in arrival_rows([files], checks=checks, decode=False):
            if fetch_errors is not None:
                failed = fetch_errors.notna().to_numpy()
                rows.loc[failed, "error"] = fetch_errors[failed].to_numpy()
                rows.loc[failed, "content"] = None
                rows.loc[failed, "content_hash"] = None
            scored = predictions(rows, settings)  # may add the decoder's error to ``rows``
            scored[MODEL_LOAD_ERROR] = champion_cache.load_failure(settings)
            yield pd.concat([quarantine(rows, checks), scored], axis=1)


def _classified(contents: pd.Series, settings: Settings) -> tuple[list[int], pd.DataFrame | None]:
    """The positions of the non-empty rows and the champion's answer for them (None when there are none).

    What the SQL functions share: null and empty bytes never reach the model.
    """
    rows = [i for i, c in enumerate(contents) if c is not None and len(c) > 0]
    if not rows:
        return rows, None
    classifier, _ = current_classifier(settings)
    return rows, classifier.classify([bytes(contents.iloc[i]) for i in rows])


def classify_series(contents: pd.Series, settings: Settings) -> pd.DataFrame:
    """The SQL ``classify(content)`` body: label and confidence per row (nulls for bad images)."""
    n = len(contents)
    out = pd.DataFrame({"label": [None] * n, "confidence": [None] * n}, dtype=object)
    rows, result = _classified(contents, settings)
    if result is not None:
        out.loc[rows, "label"] = result["label"].to_numpy()
        out.loc[rows, "confidence"] = result["confidence"].to_numpy()
    out["confidence"] = out["confidence"].astype("float64")
    return out


def embed_series(contents: pd.Series, settings: Settings) -> pd.Series:
    """The SQL ``embed(content)`` body: the champion's L2-normalised embedding per row.

    Null for bad images, and for every row when the champion has no embedding layer.
    """
    vectors: list[Any] = [None] * len(contents)
    rows, result = _classified(contents, settings)
    if result is not None:
        for row, vector in zip(rows, result["embedding"], strict=True):
            vectors[row] = vector
    return pd.Series(vectors, dtype=object)


def register_classify(spark: Any, settings: Settings, name: str = "classify") -> Any:
    """Register the champion as the Spark SQL function ``name(content)`` -> struct<label, confidence>."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(CLASSIFY_DDL)  # type: ignore[call-overload]
    def classify(contents: pd.Series) -> pd.DataFrame:
        return classify_series(contents, settings)

    return spark.udf.register(name, classify)


def register_embed(spark: Any, settings: Settings, name: str = "embed") -> Any:
    """Register the champion's embedding as the Spark SQL function ``name(content)`` -> array<float>."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(EMBED_DDL)  # type: ignore[call-overload]
    def embed(contents: pd.Series) -> pd.Series:
        return embed_series(contents, settings)

    return spark.udf.register(name, embed)
