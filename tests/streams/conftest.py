"""Fixtures for the streams tests: scoring settings on the session's tiny champion (``model_store``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings import Settings
from tests.helpers.streams import scoring_settings, with_model


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


@pytest.fixture(scope="session")
def shapes_model_store(session_dir: Path) -> Path:
    """An MLflow store whose champion learnt the shapes generator's images, with its reference (~25 s, once)."""
    from training.bench.toy_models import train_shapes_champion

    state = session_dir / "shapes-model-store"
    train_shapes_champion(Settings(state_dir=state))
    return state


@pytest.fixture
def drift_settings(tmp_path: Path, shapes_model_store: Path) -> Settings:
    """Scoring settings on the shapes champion; the artifacts are the store's, the registry a copy."""
    return with_model(scoring_settings(tmp_path), shapes_model_store)
