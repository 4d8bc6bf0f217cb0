"""The champion cache: loaded once per process, following the alias, the old one kept when a new one fails."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from infra.champion import current_classifier, forget_models
from infra.registry import load_classifier
from infra.settings import Settings
from tests.helpers.models import CLASSES, IMAGE_SIZE
from training.toy_models import register_champion, tiny_cnn


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

        with caplog.at_level(logging.WARNING, logger="infra.champion"):
            first = current_classifier(champion_settings, now=100.0 + check)
            within = current_classifier(champion_settings, now=100.0 + check * 1.5)  # cached: no second try
            next_check = current_classifier(champion_settings, now=100.0 + check * 2.5)
    finally:
        forget_models()

    assert first[0] is within[0] is next_check[0] is classifier
    assert first[1] == within[1] == next_check[1] == "1"
    warnings = [r for r in caplog.records if r.name == "infra.champion"]
    assert len(warnings) == 2  # once per check interval, not once per call
    message = warnings[0].getMessage()
    assert warnings[0].levelno == logging.WARNING
    assert "champion version 2" in message and "still serving version 1" in message
    assert str(failure.value) in message


def test_a_fresh_process_serves_the_version_a_broken_champion_replaced(champion_settings: Settings) -> None:
    from infra import registry
    from infra.champion import load_failure

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
