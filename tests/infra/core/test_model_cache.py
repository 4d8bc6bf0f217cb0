"""The champion cache: loaded once per process, following the alias, the old one kept when a new one fails."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from infra.core.model_cache import current_classifier, forget_models
from infra.registry import load_classifier
from infra.settings import Settings
from tests.helpers.models import CLASSES, IMAGE_SIZE
from training.bench.toy_models import register_champion, tiny_cnn


def test_a_champion_that_fails_to_load_is_logged_and_the_old_one_kept_serving(
    champion_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    forget_models()
    check = champion_settings.champion_check_s
    try:
        classifier, version = current_classifier(champion_settings, now=100.0)
        assert version == "1"
        # Version 2 becomes champion, then its artifacts go (a half-copied or purged artifact store).
        broken = register_champion(
            champion_settings,
            tiny_cnn(IMAGE_SIZE, len(CLASSES), seed=3),
            class_names=CLASSES,
            image_size=IMAGE_SIZE,
            experiment="broken-champion",
        )
        assert broken == "2"
        artifacts = Path(champion_settings.mlflow_artifact_root) / "broken-champion"
        assert artifacts.is_dir()
        shutil.rmtree(artifacts)
        with pytest.raises(Exception) as failure:  # whatever MLflow raises is what gets logged
            load_classifier(champion_settings, "2")

        with caplog.at_level(logging.WARNING, logger="infra.core.model_cache"):
            first = current_classifier(champion_settings, now=100.0 + check)
            within = current_classifier(champion_settings, now=100.0 + check * 1.5)  # cached: no second try
            next_check = current_classifier(champion_settings, now=100.0 + check * 2.5)
    finally:
        forget_models()

    assert first[0] is within[0] is next_check[0] is classifier
    assert first[1] == within[1] == next_check[1] == "1"
    warnings = [r for r in caplog.records if r.name == "infra.core.model_cache"]
    assert len(warnings) == 2  # once per check interval, not once per call
    message = warnings[0].getMessage()
    assert warnings[0].levelno == logging.WARNING
    assert "champion version 2" in message and "still serving version 1" in message
    assert str(failure.value) in message


def test_a_fresh_process_serves_the_version_a_broken_champion_replaced(champion_settings: Settings) -> None:
    from infra import registry
    from infra.core.model_cache import load_failure

    broken = register_champion(
        champion_settings,
        tiny_cnn(IMAGE_SIZE, len(CLASSES), seed=5),
        class_names=CLASSES,
        image_size=IMAGE_SIZE,
        experiment="broken-fresh",
    )
    registry.set_version_tags(champion_settings, broken, {registry.TAG_CHAMPION_VERSION: "1"})
    shutil.rmtree(Path(champion_settings.mlflow_artifact_root) / "broken-fresh")
    forget_models()  # as a new Spark Python worker starts: nothing loaded yet
    try:
        _, version = current_classifier(champion_settings, now=10.0)
        failure = load_failure(champion_settings)
    finally:
        forget_models()
    assert version == "1"
    assert failure is not None and failure.startswith("champion version 2 failed to load; serving version 1: ")


def test_an_optional_alias_is_none_until_it_names_a_version_and_a_broken_one_is_logged_once(
    champion_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from infra.core.model_cache import optional_classifier
    from infra.registry import CHALLENGER, drop_alias, set_alias
    from training.bench.toy_models import register_version

    forget_models()
    check = champion_settings.champion_check_s
    try:
        assert optional_classifier(champion_settings, alias=CHALLENGER, now=100.0) is None
        challenger = register_version(
            champion_settings,
            tiny_cnn(IMAGE_SIZE, len(CLASSES), seed=4),
            class_names=CLASSES,
            image_size=IMAGE_SIZE,
            alias=CHALLENGER,
        )
        assert optional_classifier(champion_settings, alias=CHALLENGER, now=100.0 + check / 2) is None  # cached
        loaded = optional_classifier(champion_settings, alias=CHALLENGER, now=100.0 + check)
        assert loaded is not None and loaded[1] == challenger == "2"
        again = optional_classifier(champion_settings, alias=CHALLENGER, now=100.0 + 2 * check)
        assert again is not None and again[0] is loaded[0]  # the alias stayed: the same object

        # Version 3 takes the alias, then its artifacts go.
        register_version(
            champion_settings,
            tiny_cnn(IMAGE_SIZE, len(CLASSES), seed=5),
            class_names=CLASSES,
            image_size=IMAGE_SIZE,
            alias=CHALLENGER,
            experiment="broken-challenger",
        )
        shutil.rmtree(Path(champion_settings.mlflow_artifact_root) / "broken-challenger")
        with caplog.at_level(logging.WARNING, logger="infra.core.model_cache"):
            broken = [optional_classifier(champion_settings, alias=CHALLENGER, now=100.0 + k * check) for k in (3, 4)]
        assert broken == [None, None]  # never the old challenger: its alias moved
        warnings = [r.getMessage() for r in caplog.records if r.name == "infra.core.model_cache"]
        assert len(warnings) == 1 and "challenger of" in warnings[0] and "version 3 failed" in warnings[0]

        set_alias(champion_settings, CHALLENGER, "2")
        assert optional_classifier(champion_settings, alias=CHALLENGER, now=100.0 + 5 * check)[1] == "2"  # type: ignore[index]
        assert drop_alias(champion_settings, CHALLENGER, "2")
        assert optional_classifier(champion_settings, alias=CHALLENGER, now=100.0 + 6 * check) is None
        assert current_classifier(champion_settings, now=100.0)[1] == "1"  # the champion was never touched
    finally:
        forget_models()


@pytest.mark.slow
def test_a_tracking_server_that_goes_down_keeps_the_champion_serving_and_says_so_once(
    champion_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from infra.core.model_cache import load_failure
    from infra.local.cluster import TrackingServer

    forget_models()
    server = TrackingServer(champion_settings, database=champion_settings.state_dir / "mlflow.db").start()
    try:
        remote = champion_settings.model_copy(update={"mlflow_tracking_uri": server.uri})
        classifier, version = current_classifier(remote, now=100.0)
        assert version == "1" and load_failure(remote) is None
        server.stop()
        with caplog.at_level(logging.WARNING, logger="infra.core.model_cache"):
            assert current_classifier(remote, now=200.0) == (classifier, "1")
            assert current_classifier(remote, now=300.0) == (classifier, "1")
        failure = load_failure(remote)
        assert failure is not None and failure.startswith(f"MLflow tracking URI {server.uri} is not reachable")
        assert failure.endswith("still serving champion version 1") and "\n" not in failure
        warnings = [r for r in caplog.records if "not reachable" in r.getMessage()]
        assert len(warnings) == 1  # once for the outage, not at every check
    finally:
        server.stop()
        forget_models()
