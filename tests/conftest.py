"""Shared fixtures: one SparkSession per test session, Azurite started once, a fresh lake per test."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from infra.processes import free_port
from infra.settings import Settings

if TYPE_CHECKING:
    from infra.local.label_studio import LabelStudio

# The Spark standalone cluster and tracking server of the `cluster` tests (started only when one runs).
pytest_plugins = ["tests.helpers.cluster"]

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
# TensorFlow on 2 cores next to Spark: keep it quiet and from grabbing every thread.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests that are not about pacing see unsure images sent from the batch that scored them; the
# pacing tests (tests/infra/core/labeling/test_handoff.py) set the window themselves.
os.environ.setdefault("LAKESIGHT_LABELING_WINDOW_S", "0")
# A test that wants Label Studio says so (the session starts one, slowly): a handler elsewhere must not
# sync with a Label Studio on the default port of this machine.
os.environ.setdefault("LAKESIGHT_LABELING_SERVICE", "container")


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lakesight-session")


@pytest.fixture(scope="session")
def label_studio(session_dir: Path) -> Iterator[LabelStudio]:
    """One real Label Studio for the whole session (it takes a minute or more to start): each test
    uses a project of its own (the model name). Skipped where it is not installed, outside CI.
    ``LAKESIGHT_TEST_LABEL_STUDIO_PORT`` reuses one already running there (default admin), for
    working on these tests without a start per run; it is left running."""
    from infra.local.label_studio import LabelStudio
    from infra.local.stack import StackError

    running = os.environ.get("LAKESIGHT_TEST_LABEL_STUDIO_PORT")
    port = int(running) if running else free_port()
    service = LabelStudio(Settings(state_dir=session_dir / "label-studio-state", label_studio_port=port))
    if running:
        assert service.healthy(), f"no Label Studio answers on port {port} (LAKESIGHT_TEST_LABEL_STUDIO_PORT)"
        yield service
        return
    try:
        service.start(timeout=420)
    except StackError as exc:
        if "not installed" in str(exc) and os.environ.get("CI") != "true":
            pytest.skip(str(exc))
        raise
    yield service
    service.stop()


@pytest.fixture(scope="session")
def azurite_port(session_dir: Path) -> Iterator[int]:
    """Azurite on a free port for the whole session (real blob storage, well-known dev key)."""
    from infra.local.stack import Azurite

    port = free_port()
    service = Azurite(Settings(state_dir=session_dir / "azurite-state", blob_port=port))
    service.start()
    yield port
    service.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a fresh lake, checkpoints and MLflow store under this test's tmp dir."""
    return Settings(state_dir=tmp_path / "state", spark_master="local[2]")


@pytest.fixture
def blob_settings(tmp_path: Path, azurite_port: int) -> Settings:
    """Like ``settings`` but wired to the session's Azurite."""
    from infra.blob import BlobStore

    value = Settings(state_dir=tmp_path / "state", spark_master="local[2]", blob_port=azurite_port)
    BlobStore(value).ensure_containers()
    return value


@pytest.fixture(scope="session")
def spark(session_dir: Path):
    """The one SparkSession of the test session."""
    from infra.spark import get_spark

    # With the spark engine's jars and Delta extension: tests of either engine share this session.
    session = get_spark(
        Settings(state_dir=session_dir / "spark-state", spark_master="local[2]", lake_engine="spark"),
        "lakesight-tests",
    )
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _spark_first(request: pytest.FixtureRequest) -> None:
    """A spark-marked test gets the shared session before its code can start one of its own."""
    if request.node.get_closest_marker("spark") is not None:
        request.getfixturevalue("spark")


@pytest.fixture(scope="session")
def digits_dir(session_dir: Path) -> Path:
    """scikit-learn digits written once per session as <split>/<label>/<name>.png."""
    from infra.local.sample_data import digits_images, write_images

    out = session_dir / "digits"
    write_images(digits_images(), out_dir=out)
    return out


@pytest.fixture(scope="session")
def model_store(session_dir: Path) -> Path:
    """An MLflow store holding version 1 of a tiny CNN as champion (built once per session)."""
    from tests.helpers.models import CLASSES, IMAGE_SIZE
    from training.bench.toy_models import register_champion, tiny_cnn

    state = session_dir / "model-store"
    register_champion(
        Settings(state_dir=state), tiny_cnn(IMAGE_SIZE, len(CLASSES)), class_names=CLASSES, image_size=IMAGE_SIZE
    )
    return state


@pytest.fixture
def champion_settings(tmp_path: Path, model_store: Path) -> Settings:
    """Settings with their own registry copy of the session's tiny champion, re-checked every 0.5 s."""
    from tests.helpers.models import with_model

    return with_model(Settings(state_dir=tmp_path / "state", champion_check_s=0.5), model_store)
