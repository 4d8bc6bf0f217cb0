"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings import Settings
from tests.helpers.training import digit_rows, write_rows


@pytest.fixture
def digits_lake(settings: Settings, digits_dir: Path) -> int:
    """200 labeled digits in the images table; returns its Delta version."""
    return write_rows(settings, digit_rows(digits_dir, 200))
