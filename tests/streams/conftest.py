"""Fixtures for the streams tests: a tiny registered champion, shared by copying its MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings import Settings
from tests.helpers.streams import CLASSES, IMAGE_SIZE, scoring_settings, with_model


@pytest.fixture(scope="session")
def model_store(session_dir: Path) -> Path:
    """An MLflow store holding version 1 of a tiny CNN as champion (built once per session)."""
    from training.toy_models import register_champion, tiny_cnn

    state = session_dir / "model-store"
    settings = Settings(state_dir=state)
    register_champion(settings, tiny_cnn(IMAGE_SIZE, len(CLASSES)), class_names=CLASSES, image_size=IMAGE_SIZE)
    return state


@pytest.fixture
def score_settings(tmp_path: Path, model_store: Path) -> Settings:
    """Settings with a champion registered and labeling off."""
    return with_model(scoring_settings(tmp_path), model_store)


@pytest.fixture
def score_blob_settings(tmp_path: Path, model_store: Path, azurite_port: int) -> Settings:
    """Like ``score_settings`` but wired to the session's Azurite."""
    from infra.blob import BlobStore

    value = with_model(scoring_settings(tmp_path, blob_port=azurite_port), model_store)
    BlobStore(value).ensure_containers()
    return value
