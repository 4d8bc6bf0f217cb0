"""Fixtures for the scoring stream: a tiny registered champion, shared by copying its MLflow store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from infra.settings import Settings

CLASSES = ["circle", "square", "triangle"]
IMAGE_SIZE = 16


@pytest.fixture(scope="session")
def model_store(session_dir: Path) -> Path:
    """An MLflow store holding version 1 of a tiny CNN as champion (built once per session)."""
    from training.toy_models import register_champion, tiny_cnn

    state = session_dir / "model-store"
    settings = Settings(state_dir=state)
    register_champion(settings, tiny_cnn(IMAGE_SIZE, len(CLASSES)), class_names=CLASSES, image_size=IMAGE_SIZE)
    return state


def _with_model(value: Settings, model_store: Path) -> Settings:
    # Each test gets its own copy of the registry database (aliases can move); artifacts are shared.
    shutil.copy(model_store / "mlflow.db", value.state_dir / "mlflow.db")
    return value


def _scoring(tmp_path: Path, **fields: object) -> Settings:
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    return Settings(
        state_dir=state,
        spark_master="local[2]",
        champion_check_s=0.5,
        labeling_daily_budget=0,
        score_trigger_s=0.5,
        **fields,
    )


@pytest.fixture
def score_settings(tmp_path: Path, model_store: Path) -> Settings:
    """Settings with a champion registered and labeling off."""
    return _with_model(_scoring(tmp_path), model_store)


@pytest.fixture
def score_blob_settings(tmp_path: Path, model_store: Path, azurite_port: int) -> Settings:
    """Like ``score_settings`` but wired to the session's Azurite."""
    from infra.blob import BlobStore

    value = _with_model(_scoring(tmp_path, blob_port=azurite_port), model_store)
    BlobStore(value).ensure_containers()
    return value
