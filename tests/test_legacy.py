"""The legacy stack end to end (docs/LEGACY.md): ``.venv-legacy`` trains with Horovod on Spark barrier
tasks, fed by Arrow or by Petastorm's Spark converter, and the default stack serves what it registered.

Each ``lakesight train`` here is a driver process of the legacy venv; ingest and scoring are the
default venv's own commands on the same lake and MLflow store.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from infra.core.model_cache import current_classifier
from infra.lake import Lake
from infra.processes import lakesight_argv
from infra.registry import TAG_DELTA_VERSION, configure_mlflow
from infra.settings import Settings
from infra.tables import IMAGES
from tests.helpers.training import flat_copies

pytestmark = [pytest.mark.legacy, pytest.mark.slow, pytest.mark.e2e, pytest.mark.azurite]

LEGACY_PYTHON = Path(__file__).resolve().parents[1] / ".venv-legacy" / "bin" / "python"


@pytest.fixture(scope="module")
def legacy_python() -> Path:
    if not LEGACY_PYTHON.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{LEGACY_PYTHON} is missing: CI must run `make install-legacy` before the tests")
        pytest.skip("the legacy venv is not built (make install-legacy)")
    return LEGACY_PYTHON


class Lakehouse:
    """One state folder: the digits ingested once, a model name per test."""

    def __init__(self, root: Path, blob_port: int):
        self.root = root
        self.blob_port = blob_port  # the stream hands unsure images to labeling in blob storage
        self.state = root / "state"
        self.digits = root / "digits"

    def env(self, model_name: str) -> dict[str, str]:
        # The legacy driver must run its executors on its own interpreter, not this one's.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_")}
        return {
            **inherited,
            "LAKESIGHT_STATE_DIR": str(self.state),
            "LAKESIGHT_MODEL_NAME": model_name,
            "LAKESIGHT_BLOB_PORT": str(self.blob_port),
        }

    def run(self, argv: list[str], model_name: str, timeout: float = 600) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, env=self.env(model_name), timeout=timeout)
        assert done.returncode == 0, f"{' '.join(argv[2:])}:\n{done.stderr[-5000:]}"
        return done.stdout

    def legacy_train(self, python: Path, model_name: str, *args: str) -> dict:
        printed = self.run([str(python), "-m", "infra.cli", "train", "--json", *args], model_name)
        return json.loads(printed.strip().splitlines()[-1])

    def settings(self, model_name: str) -> Settings:
        return Settings(state_dir=self.state, model_name=model_name, blob_port=self.blob_port)


@pytest.fixture(scope="module")
def lakehouse(tmp_path_factory: pytest.TempPathFactory, azurite_port: int) -> Lakehouse:
    house = Lakehouse(tmp_path_factory.mktemp("legacy"), azurite_port)
    house.run(lakesight_argv("data", "digits", "--out", str(house.digits)), "setup")
    house.run(lakesight_argv("ingest", str(house.digits / "train"), "--labeled"), "setup")
    return house


def _model_name() -> str:
    return f"legacy-{uuid.uuid4().hex[:6]}"


def _run_of(settings: Settings, version: str) -> tuple[object, object]:
    configure_mlflow(settings)
    client = MlflowClient()
    model_version = client.get_model_version(settings.model_name, version)
    return model_version, client.get_run(model_version.run_id)


def test_the_legacy_venv_trains_with_horovod_on_two_barrier_tasks(legacy_python: Path, lakehouse: Lakehouse) -> None:
    check = subprocess.run([str(legacy_python), "-m", "training.legacy.check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr[-3000:]
    stack = json.loads(check.stdout.strip().splitlines()[-1])
    assert stack["horovod_extensions"] == ["tensorflow"] and stack["gloo"] and not stack["mpi"]
    assert stack["versions"]["tensorflow-cpu"].startswith("2.15.") and stack["versions"]["tf-keras"].startswith("2.15.")
    assert int(stack["versions"]["numpy"].split(".")[0]) < 2 and int(stack["versions"]["pyarrow"].split(".")[0]) < 15

    name = _model_name()
    settings = lakehouse.settings(name)
    pinned = Lake(settings).version(IMAGES)
    result = lakehouse.legacy_train(legacy_python, name, "--strategy", "horovod", "--workers", "2", "--epochs", "3")
    assert result["delta_version"] == pinned
    version, run = _run_of(settings, str(result["model_version"]))
    assert run.data.params["strategy"] == "horovod" and run.data.params["feed"] == "arrow"
    assert run.data.params["workers"] == "2"
    assert run.data.tags[TAG_DELTA_VERSION] == str(pinned) and version.tags[TAG_DELTA_VERSION] == str(pinned)
    # Gradients all-reduced and state averaged: both ranks ended with the very same weights.
    assert run.data.tags["workers_identical_weights"] == "True"
    worker_logs = sorted((settings.logs_dir / "training").glob(f"run-{run.info.run_id[:8]}-worker-*.log"))
    assert [p.name[-12:] for p in worker_logs] == ["worker-0.log", "worker-1.log"]
    # Rank 0 alone logged and registered: one version, in the format both stacks load.
    assert [v.version for v in MlflowClient().search_model_versions(f"name='{name}'")] == [version.version]
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "model/artifacts")}
    assert "model/artifacts/weights.npz" in artifacts, artifacts


def test_a_horovod_petastorm_model_is_served_by_the_default_stream(legacy_python: Path, lakehouse: Lakehouse) -> None:
    name = _model_name()
    settings = lakehouse.settings(name)
    result = lakehouse.legacy_train(
        legacy_python, name, "--strategy", "horovod", "--workers", "2", "--feed", "petastorm", "--epochs", "15"
    )
    version = str(result["model_version"])
    assert result["alias"] == "champion"
    _, run = _run_of(settings, version)
    assert run.data.params["feed"] == "petastorm"
    assert int(run.data.params["petastorm_train_rows"]) == int(run.data.params["train_rows"])
    assert run.data.tags[TAG_DELTA_VERSION] == str(result["delta_version"])
    assert not any((lakehouse.state / "petastorm").glob("*/*.parquet")), "the converters' Parquet outlived the run"

    # The default stack (Keras 3, TensorFlow 2.21) scores the digits holdout with that version.
    holdout = lakehouse.root / "holdout-flat"
    truth = flat_copies(lakehouse.digits / "holdout", holdout)
    lakehouse.run(lakesight_argv("score", "--source", str(holdout), "--once"), name)
    columns = ["path", "predicted_label", "model_version", "error"]
    rows = [
        r for r in Lake(settings).read(IMAGES, columns=columns).to_pylist() if r["path"].rsplit("/", 1)[-1] in truth
    ]
    assert len(rows) == len(truth)
    assert all(r["model_version"] == version and r["error"] is None for r in rows), rows[:3]
    correct = sum(r["predicted_label"] == truth[r["path"].rsplit("/", 1)[-1]] for r in rows)
    assert correct / len(rows) >= 0.97, f"holdout accuracy {correct / len(rows):.4f}"

    # The model server and the SQL functions load the champion through infra.core.model_cache: same answers.
    classifier, served = current_classifier(settings)
    sample = sorted(truth)[:16]
    labels = classifier.classify([(holdout / f).read_bytes() for f in sample])["label"].tolist()
    by_file = {r["path"].rsplit("/", 1)[-1]: r["predicted_label"] for r in rows}
    assert served == version and labels == [by_file[f] for f in sample]
