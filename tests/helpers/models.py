"""The tiny registered champion every scoring test shares: its classes, image size, per-test registry copy."""

from __future__ import annotations

import shutil
from pathlib import Path

from infra.settings import Settings

CLASSES = ["circle", "square", "triangle"]
IMAGE_SIZE = 16


def with_model(value: Settings, model_store: Path) -> Settings:
    """``value`` with its own copy of ``model_store``'s registry database (artifacts are shared)."""
    # A copy per test: a test may move the aliases.
    value.state_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_store / "mlflow.db", value.state_dir / "mlflow.db")
    return value
