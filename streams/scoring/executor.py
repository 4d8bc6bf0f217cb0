"""Executor-side scoring: the champion classifier cached per Python worker, and the row mappers.

Spark reuses Python workers (``spark.python.worker.reuse``), so the module-level cache below
lives across tasks and micro-batches: the model is loaded once per worker, and the champion
alias is re-read at most every ``settings.champion_check_s`` seconds, so a promotion reaches a
running stream without a restart.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

from infra.registry import TF_THREADS_ENV
from infra.settings import Settings
from streams.file_rows import ARRIVAL_DDL, FileChecks, arrival_rows, quarantine

log = logging.getLogger(__name__)

PREDICTION_DDL = (
    "predicted_label string, confidence double, probabilities array<float>, class_names array<string>, "
    "model_name string, model_version string, scored_at timestamp"
)
SCORED_DDL = f"{ARRIVAL_DDL}, {PREDICTION_DDL}"
CLASSIFY_DDL = "label string, confidence double"
# Input rows may carry a reason they could not be read (a vanished blob); it wins over image checks.
FETCH_ERROR = "fetch_error"


@dataclass
class _Cached:
    classifier: Any
    version: str
    checked_at: float


_lock = threading.Lock()
# A few registries at most per worker (tests point each test at its own); oldest dropped first.
_models: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
_MAX_MODELS = 3


def _prepare_worker(settings: Settings) -> None:
    # Two Spark workers on two cores must not each start a full TensorFlow thread pool. The
    # setting wins over whatever the worker inherited: it is the one knob (docs/ARCHITECTURE.md).
    os.environ[TF_THREADS_ENV] = str(settings.score_tf_threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def current_classifier(settings: Settings, *, now: float | None = None) -> tuple[Any, str]:
    """``(classifier, version)`` of the champion, loaded once per worker and re-checked periodically."""
    from infra.registry import champion, load_classifier

    _prepare_worker(settings)
    key = (settings.mlflow_tracking_uri, settings.model_name)
    now = time.monotonic() if now is None else now
    with _lock:
        cached = _models.get(key)
        if cached is not None and now - cached.checked_at < settings.champion_check_s:
            return cached.classifier, cached.version
        latest = champion(settings) if cached is not None else None
        if cached is not None and latest is not None and str(latest.version) == cached.version:
            cached.checked_at = now
            return cached.classifier, cached.version
        # First use, or the alias moved (or vanished: keep serving what we have if loading fails).
        wanted = None if latest is None else latest.version
        try:
            classifier, version = load_classifier(settings, wanted)
        except Exception as exc:
            if cached is None:
                raise
            # Logged here, not per row or batch: the next try waits for the next check.
            log.warning(
                "champion version %s of %s failed to load; still serving version %s: %s",
                "(alias gone)" if wanted is None else wanted,
                settings.model_name,
                cached.version,
                exc,
            )
            cached.checked_at = now
            return cached.classifier, cached.version
        _models[key] = _Cached(classifier, version, now)
        _models.move_to_end(key)
        while len(_models) > _MAX_MODELS:
            _models.popitem(last=False)
        return classifier, version


def forget_models() -> None:
    """Drop every cached classifier (tests; a worker that must reload)."""
    with _lock:
        _models.clear()


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
            yield pd.concat([quarantine(rows, checks), scored], axis=1)


def classify_series(contents: pd.Series, settings: Settings) -> pd.DataFrame:
    """The SQL ``classify(content)`` body: label and confidence per row (nulls for bad images)."""
    n = len(contents)
    out = pd.DataFrame({"label": [None] * n, "confidence": [None] * n}, dtype=object)
    rows = [i for i, c in enumerate(contents) if c is not None and len(c) > 0]
    if rows:
        classifier, _ = current_classifier(settings)
        result = classifier.classify([bytes(contents.iloc[i]) for i in rows])
        out.loc[rows, "label"] = result["label"].to_numpy()
        out.loc[rows, "confidence"] = result["confidence"].to_numpy()
    out["confidence"] = out["confidence"].astype("float64")
    return out


def register_classify(spark: Any, settings: Settings, name: str = "classify") -> Any:
    """Register the champion as the Spark SQL function ``name(content)`` -> struct<label, confidence>."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(CLASSIFY_DDL)  # type: ignore[call-overload]
    def classify(contents: pd.Series) -> pd.DataFrame:
        return classify_series(contents, settings)

    return spark.udf.register(name, classify)
