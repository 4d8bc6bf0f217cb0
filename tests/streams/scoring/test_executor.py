"""Executor side of the scoring stream: the champion cached per worker, following promotions, the SQL function."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from infra.core import promotion
from infra.errors import SettingsError
from infra.local.sample_data import png_bytes
from infra.settings import Settings
from infra.status_files import read_stream_status as read_status
from streams.scoring.config import ScoringConfig
from tests.helpers.images import solid_png
from tests.helpers.streams import CLASSES, IMAGE_SIZE, rows_by_name, scoring_in_background, shapes, wait_for_rows
from tests.helpers.waiting import wait_until
from training.bench.toy_models import register_champion, tiny_cnn


@pytest.mark.spark
def test_promotion_reaches_the_running_stream(spark, score_settings: Settings, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    with scoring_in_background(score_settings, source=incoming) as result:
        first = shapes(incoming / "a", 4, seed=1, prefix="before")
        wait_for_rows(score_settings, len(first))
        version = register_champion(
            score_settings, tiny_cnn(IMAGE_SIZE, len(CLASSES), seed=7), class_names=CLASSES, image_size=IMAGE_SIZE
        )
        assert version == "2"
        time.sleep(score_settings.champion_check_s + 0.5)  # the workers' next check sees the new alias
        second = shapes(incoming / "b", 4, seed=2, prefix="after")
        wait_for_rows(score_settings, len(first) + len(second))
    rows = rows_by_name(score_settings)
    assert {rows[p.name]["model_version"] for p in first} == {"1"}
    assert {rows[p.name]["model_version"] for p in second} == {"2"}
    assert result["report"].stopped_by == "stop requested"  # type: ignore[union-attr]
    status = read_status(score_settings)
    assert status["model_version"] == "2" and status["last_progress"] is not None
    assert status["last_progress"]["processed_rows_per_s"] >= 0


@pytest.mark.spark
def test_sql_classify_function(spark, score_settings: Settings) -> None:
    from streams.scoring.executor import register_classify

    register_classify(spark, score_settings)
    frame = spark.createDataFrame([(solid_png(200),), (b"junk",), (None,)], "content binary")
    frame.createOrReplaceTempView("uploads")
    rows = spark.sql("SELECT classify(content) AS c FROM uploads").collect()
    assert rows[0].c.label in CLASSES and 0 < rows[0].c.confidence <= 1
    assert rows[1].c.label is None and rows[1].c.confidence is None
    assert rows[2].c.label is None


@pytest.mark.spark
def test_sql_embed_function(spark, score_settings: Settings) -> None:
    from infra.registry import load_classifier
    from streams.scoring.executor import register_classify, register_embed

    register_classify(spark, score_settings)
    register_embed(spark, score_settings)
    dims = load_classifier(score_settings)[0].embedding_dims
    noise = png_bytes(np.random.default_rng(3).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3)))
    frame = spark.createDataFrame([(solid_png(200),), (b"junk",), (None,), (noise,)], "content binary")
    frame.createOrReplaceTempView("embed_uploads")
    rows = spark.sql("SELECT embed(content) AS e, classify(content).label AS label FROM embed_uploads").collect()
    assert dict(spark.sql("SELECT embed(content) AS e FROM embed_uploads").dtypes) == {"e": "array<float>"}
    assert dims == 8 and [r.e is None for r in rows] == [False, True, True, False]  # null for bad rows
    for row in (rows[0], rows[3]):
        assert len(row.e) == dims and abs(float(np.linalg.norm(row.e)) - 1.0) < 1e-4 and row.label in CLASSES
    assert not np.allclose(rows[0].e, rows[3].e, atol=1e-3)  # a flat image and noise: different embeddings


@pytest.mark.spark
def test_rollback_reaches_the_running_stream(spark, score_settings: Settings, tmp_path: Path) -> None:
    from infra import registry

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    newer = register_champion(
        score_settings, tiny_cnn(IMAGE_SIZE, len(CLASSES), seed=9), class_names=CLASSES, image_size=IMAGE_SIZE
    )
    # As training's promotion records it: version 2 replaced champion 1.
    registry.set_version_tags(score_settings, newer, {registry.TAG_CHAMPION_VERSION: "1"})
    with scoring_in_background(score_settings, source=incoming):
        before = shapes(incoming / "a", 3, seed=1, prefix="before")
        wait_for_rows(score_settings, len(before))
        done = promotion.rollback(score_settings, reason="worse on live images")
        time.sleep(score_settings.champion_check_s + 0.5)  # the workers' next check sees the moved alias
        after = shapes(incoming / "b", 3, seed=2, prefix="after")
        wait_for_rows(score_settings, len(before) + len(after))
    rows = rows_by_name(score_settings)
    assert (done.from_version, done.to_version) == ("2", "1")
    assert {rows[p.name]["model_version"] for p in before} == {"2"}
    assert {rows[p.name]["model_version"] for p in after} == {"1"}


def test_a_champion_that_fails_to_load_is_shown_until_resolved(spark, score_settings: Settings, tmp_path: Path) -> None:
    from infra import registry

    # Its own experiment: its artifacts under this test's state, not the shared model store's.
    broken = register_champion(
        score_settings,
        tiny_cnn(IMAGE_SIZE, len(CLASSES), seed=4),
        class_names=CLASSES,
        image_size=IMAGE_SIZE,
        experiment="broken-upload",
    )
    registry.set_alias(score_settings, registry.CHAMPION, "1")
    newest = max(Path(score_settings.mlflow_artifact_root).rglob("model.keras"), key=lambda p: p.stat().st_mtime)
    newest.write_bytes(b"not a keras archive")  # version 2's weights, as a bad upload would leave them
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    with scoring_in_background(score_settings, source=incoming):
        first = shapes(incoming / "a", 2, seed=1, prefix="first")
        wait_for_rows(score_settings, len(first))
        registry.set_alias(score_settings, registry.CHAMPION, broken)
        time.sleep(score_settings.champion_check_s + 0.5)
        during = shapes(incoming / "b", 2, seed=2, prefix="during")
        wait_for_rows(score_settings, len(first) + len(during))
        # The status file is written after the batch's commit: a moment after its rows are readable.
        message = wait_until(lambda: _load_error(score_settings), "the status to name the champion's load failure")
        registry.set_alias(score_settings, registry.CHAMPION, "1")  # resolved: the alias names a good version
        time.sleep(score_settings.champion_check_s + 0.5)
        after = shapes(incoming / "c", 2, seed=3, prefix="after")
        wait_for_rows(score_settings, len(first) + len(during) + len(after))
        wait_until(lambda: _load_error(score_settings) is None, "the status to clear the champion's load failure")
    rows = rows_by_name(score_settings)
    # The previous version kept serving, and status named the failure until it was resolved.
    assert {rows[p.name]["model_version"] for p in first + during + after} == {"1"}
    # A reused worker keeps version 1 loaded, a fresh one loads it instead: both say so.
    assert "champion version 2 failed to load;" in message and "serving version 1" in message


def _load_error(settings: Settings) -> str | None:
    """The running stream's status: the champion load error it shows ("" before its first status)."""
    status = read_status(settings)
    return "" if status is None else status.get("champion_load_error")


# What the executors are sent ------------------------------------------------------------------
_BLOB_SECRET = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0LWtleS12YWx1ZQ==;"


def _pickled_mappers(settings: Settings) -> list[bytes]:
    """The closures the stream ships with every task, pickled as Spark pickles them."""
    from pyspark import cloudpickle

    from streams.scoring.executor import executor_mapper, score_rows
    from streams.scoring.fetch import fetch_blobs

    return [cloudpickle.dumps(executor_mapper(body, settings)) for body in (score_rows, fetch_blobs)]


def test_no_secret_travels_in_the_mappers_and_executors_read_the_blob_secret_from_their_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyspark import cloudpickle

    settings = Settings(
        state_dir=tmp_path / "state",
        blob_connection_string=_BLOB_SECRET,
        event_key="e" * 40 + "-event-secret",
        model_api_key="m" * 40 + "-model-secret",
    )
    for pickled in _pickled_mappers(settings):
        for secret in ("c2VjcmV0LWtleS12YWx1ZQ==", "-event-secret", "-model-secret"):
            assert secret.encode() not in pickled
        # The narrow view, not the settings: no field the executors never read travels either.
        assert b"labeling_daily_budget" not in pickled and b"ScoringConfig" in pickled
    view = cloudpickle.loads(cloudpickle.dumps(ScoringConfig.of(settings)))
    monkeypatch.delenv("LAKESIGHT_BLOB_CONNECTION_STRING", raising=False)
    with pytest.raises(SettingsError, match="LAKESIGHT_BLOB_CONNECTION_STRING in the executors' environment"):
        view.blob_connection()
    monkeypatch.setenv("LAKESIGHT_BLOB_CONNECTION_STRING", _BLOB_SECRET)
    assert view.blob_connection() == _BLOB_SECRET


def test_local_modes_azurite_default_is_derived_on_the_executor_not_shipped(tmp_path: Path) -> None:
    from pyspark import cloudpickle

    from infra.settings import AZURITE_KEY

    settings = Settings(state_dir=tmp_path / "state", blob_port=10123)
    for pickled in _pickled_mappers(settings):
        assert AZURITE_KEY.encode() not in pickled
    for view in (ScoringConfig.of(settings), settings.for_executors()):  # scoring's view, training's copy
        assert cloudpickle.loads(cloudpickle.dumps(view)).blob_connection() == settings.blob_connection()


def test_a_cluster_gets_the_blob_secret_in_its_executors_environment_redacted(tmp_path: Path) -> None:
    from infra.spark import executor_secret_conf

    conf = executor_secret_conf(Settings(state_dir=tmp_path / "s", blob_connection_string=_BLOB_SECRET))
    assert conf["spark.executorEnv.LAKESIGHT_BLOB_CONNECTION_STRING"] == _BLOB_SECRET
    assert re.search(conf["spark.redaction.regex"], "spark.executorEnv.LAKESIGHT_BLOB_CONNECTION_STRING")
    # Azurite's default is derived on the executor: only the redaction rule.
    assert set(executor_secret_conf(Settings(state_dir=tmp_path / "s"))) == {"spark.redaction.regex"}


def test_a_pickled_task_closure_carries_no_storage_option_or_spark_conf_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyspark import cloudpickle

    from infra.spark import executor_secret_conf

    options = {"azure_client_id": "the-client", "azure_client_secret": "sp-secret-value-1"}
    settings = Settings(
        state_dir=tmp_path / "state",
        blob_connection_string=_BLOB_SECRET,
        lake_storage_options=options,
        spark_conf={"fs.azure.account.key.acct.dfs.core.windows.net": "account-key-value-2"},
    )
    pickled = [*_pickled_mappers(settings), cloudpickle.dumps(settings.for_executors())]
    for blob in pickled:
        for secret in ("sp-secret-value-1", "account-key-value-2", "c2VjcmV0LWtleS12YWx1ZQ=="):
            assert secret.encode() not in blob
    # The executor reads the options from its environment, which the cluster's conf sets.
    conf = executor_secret_conf(settings)
    view = cloudpickle.loads(pickled[-1])
    monkeypatch.delenv("LAKESIGHT_LAKE_STORAGE_OPTIONS", raising=False)
    with pytest.raises(SettingsError, match="LAKESIGHT_LAKE_STORAGE_OPTIONS"):
        view.storage_options()
    monkeypatch.setenv("LAKESIGHT_LAKE_STORAGE_OPTIONS", conf["spark.executorEnv.LAKESIGHT_LAKE_STORAGE_OPTIONS"])
    assert view.storage_options() == options
    assert settings.storage_options() == options  # the driver's own


def test_the_sql_functions_refuse_what_the_stream_refuses(champion_settings: Settings) -> None:
    import pandas as pd

    from streams.scoring.executor import classify_series
    from tests.helpers.images import chunk_flood_png, many_scan_jpeg, ppm_image

    contents = pd.Series([chunk_flood_png(50_000), many_scan_jpeg(300), ppm_image(), solid_png(5)])
    out = classify_series(contents, ScoringConfig.of(champion_settings))
    assert out["label"].isna().tolist() == [True, True, True, False]
