import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from infra import registry
from infra.core import promotion
from infra.registry import RegistryError
from infra.settings import Settings
from tests.helpers.images import solid_png
from tests.helpers.training import write_rows
from training.data.feed import TrainingDataError
from training.pipeline import TrainOptions, train

CONTRACT = {"model_version", "promoted", "alias", "accuracy", "champion_accuracy", "run_id", "delta_version"}
TINY = {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 32}


def _client(settings: Settings):
    return registry.client(settings)


@pytest.mark.slow
def test_cli_trains_logs_registers_and_promotes_then_a_pinned_dry_run(settings: Settings, digits_lake: int) -> None:
    # The handlers' launcher runs exactly this and reads exactly one JSON line from stdout.
    env = {**os.environ, "LAKESIGHT_STATE_DIR": str(settings.state_dir), "LAKESIGHT_SPARK_MASTER": "local[1]"}
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "train", "--epochs", "1", "--batch-size", "128", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    first = json.loads(lines[0])
    assert set(first) == CONTRACT
    assert (first["promoted"], first["alias"], first["champion_accuracy"]) == (True, "champion", None)
    assert first["delta_version"] == digits_lake
    assert "epoch 1/1" in done.stderr  # progress went to stderr

    client = _client(settings)
    version = client.get_model_version(settings.model_name, first["model_version"])
    assert version.tags[registry.TAG_DELTA_VERSION] == str(digits_lake)
    assert float(version.tags[registry.TAG_ACCURACY]) == pytest.approx(first["accuracy"], abs=1e-6)
    run = client.get_run(first["run_id"])
    assert run.data.params["delta_version"] == str(digits_lake) and run.data.params["model"] == "cnn"
    assert "loss" in run.data.metrics and "test_accuracy" in run.data.metrics
    assert run.data.tags[registry.TAG_DECISION] == "champion"
    dataset = run.inputs.dataset_inputs[0].dataset
    assert json.loads(dataset.source)["delta_table_version"] == digits_lake
    assert json.loads(dataset.profile)["num_rows"] == 200
    artifacts = {a.path for a in client.list_artifacts(first["run_id"], "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/per_class_report.json"} <= artifacts
    if Path(__file__).resolve().parents[2].joinpath(".git").exists():
        assert len(run.data.tags.get("git_commit", "")) == 40

    # New rows make a new Delta version; pinning the old one trains on exactly that snapshot.
    write_rows(settings, [(f"file:/late/{i}.png", solid_png(i * 20), "late", None) for i in range(5)])
    pinned = train(settings, TrainOptions(**TINY, version=digits_lake, dry_run=True))
    assert pinned.delta_version == digits_lake and pinned.alias is None and not pinned.promoted
    assert pinned.rows["train"] > 100 and set(pinned.contract()) == CONTRACT
    assert pinned.champion_accuracy == pytest.approx(first["accuracy"])
    would = promotion.promotion_decision(
        pinned.accuracy, pinned.champion_accuracy, settings.promotion_margin, min_pairs=settings.promotion_min_pairs
    )
    tags = client.get_model_version(settings.model_name, pinned.model_version).tags
    assert tags[registry.TAG_DECISION] == f"would be {would.decision}"
    assert str(registry.champion_version(settings).version) == first["model_version"]  # a dry run moves nothing


@pytest.mark.spark
@pytest.mark.slow
def test_two_workers_train_to_identical_weights_and_the_chief_registers(
    spark, settings: Settings, digits_lake: int
) -> None:
    result = train(settings, TrainOptions(**TINY, workers=2))
    assert result.mode == "distributed" and len(result.workers) == 2
    assert [w["worker_index"] for w in result.workers] == [0, 1]
    assert all(w["ok"] and w["train_images"] > 0 for w in result.workers)
    assert result.workers[0]["weights_digest"] == result.workers[1]["weights_digest"]
    run = _client(settings).get_run(result.run_id)
    assert run.data.tags["workers_identical_weights"] == "True"
    assert "loss" in run.data.metrics  # logged by the chief, inside its own process
    version = _client(settings).get_model_version(settings.model_name, result.model_version)
    assert version.run_id == result.run_id and version.tags[registry.TAG_DELTA_VERSION] == str(digits_lake)
    assert result.alias == "champion"


@pytest.mark.spark
@pytest.mark.slow
def test_search_runs_trials_as_nested_runs_and_registers_the_best(spark, settings: Settings, digits_lake: int) -> None:
    result = train(settings, TrainOptions(**TINY, search=2, search_models=("cnn",)))
    assert result.mode == "search" and len(result.workers) == 2 and all(w["ok"] for w in result.workers)
    experiment = registry.ensure_experiment(settings, settings.model_name)
    children = mlflow.search_runs(
        [experiment], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'", output_format="list"
    )
    assert len(children) == 2
    assert {c.data.params["learning_rate"] for c in children} != {"0.002"}  # trials vary
    version = _client(settings).get_model_version(settings.model_name, result.model_version)
    best = max(children, key=lambda c: c.data.metrics["val_accuracy"])
    assert version.run_id in {c.info.run_id for c in children}
    assert _client(settings).get_run(version.run_id).data.metrics["val_accuracy"] == best.data.metrics["val_accuracy"]
    assert result.alias == "champion"


def test_bad_input_fails_clearly_before_training(settings: Settings, tmp_path: Path) -> None:
    unreachable = Settings(state_dir=tmp_path / "other", mlflow_tracking_uri="http://127.0.0.1:9")
    with pytest.raises(RegistryError, match="not reachable"):
        train(unreachable, TrainOptions(**TINY))
    with pytest.raises(TrainingDataError, match="no images table"):
        train(settings, TrainOptions(**TINY))
    write_rows(settings, [(f"file:/u/{i}.png", solid_png(i), None, None) for i in range(4)])
    with pytest.raises(TrainingDataError, match="no usable labeled rows"):
        train(settings, TrainOptions(**TINY))
    write_rows(settings, [(f"file:/c/{i}.png", solid_png(i), "cat", None) for i in range(4)])
    with pytest.raises(TrainingDataError, match="single class"):
        train(settings, TrainOptions(**TINY))
    with pytest.raises(ValueError, match="cannot be combined"):
        train(settings, TrainOptions(workers=2, search=2))
    assert registry.list_versions(settings) == []  # nothing was trained or registered
