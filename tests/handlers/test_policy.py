"""Retraining policy against a real Delta table and a real MLflow registry (champion with delta_version tag)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from handlers.retraining.policy import (
    Metrics,
    RetrainPolicy,
    champion_training_version,
    decide_retraining,
    evaluate,
    jensen_shannon,
    measure,
    psi,
)
from handlers.retraining.runs import promotion_check
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES, RETRAINING_DECISIONS
from tests.helpers.handlers import fake_train_command, serving
from tests.helpers.memory import peak_in_subprocess

DAY = dt.date(2026, 1, 3)


def test_distances() -> None:
    same = Counter(a=10, b=10)
    assert psi(same, Counter(a=5, b=5)) == pytest.approx(0.0, abs=1e-9)
    assert jensen_shannon(same, same) == pytest.approx(0.0, abs=1e-9)
    shifted = Counter(a=1, b=19)
    assert psi(same, shifted) > 0.5
    assert 0 < jensen_shannon(same, shifted) < 1
    assert jensen_shannon(Counter(a=1), Counter(b=1)) == pytest.approx(1.0, abs=1e-2)  # disjoint: maximal


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        (Metrics(delta_version=1, new_labels=60), (True, ["new_labels"])),
        (Metrics(delta_version=1, new_labels=25, psi=0.5), (True, ["label_shift"])),
        (Metrics(delta_version=1, new_labels=5, psi=0.5), (False, [])),  # too few for drift to count
        (Metrics(delta_version=1, new_labels=30, champion_accuracy=0.5, accuracy_sample=30), (True, ["accuracy"])),
        (Metrics(delta_version=1, new_labels=0, dataset_drift=0.9), (False, ["dataset_drift"])),
        (Metrics(delta_version=1, new_labels=3, dataset_drift=0.9), (True, ["dataset_drift"])),
    ],
)
def test_decide_rules(settings: Settings, metrics: Metrics, expected: tuple[bool, list[str]]) -> None:
    assert decide_retraining(RetrainPolicy.of(settings), metrics) == expected


def _labels(lake: Lake, paths: list[str], labels: list[str], source: str) -> None:
    lake.merge(
        IMAGES,
        pa.table(
            {
                "path": paths,
                "load_date": pa.array([DAY] * len(paths), pa.date32()),
                "label": labels,
                "label_source": [source] * len(paths),
                "labeled_at": pa.array([dt.datetime.now(dt.UTC)] * len(paths), pa.timestamp("us", tz="UTC")),
            }
        ),
        update={"label": "s.label", "label_source": "s.label_source", "labeled_at": "s.labeled_at"},
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow SQLite registry for the module (creating one costs seconds)."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()
    return uri


def _register(uri: str, name: str, *, accuracy: float, delta_version: int | None, tmp: Path) -> tuple[str, str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("t") or client.get_experiment(
        client.create_experiment("t", artifact_location=str(tmp / "artifacts"))
    )
    run = client.create_run(experiment.experiment_id)
    client.log_metric(run.info.run_id, "accuracy", accuracy)
    client.set_terminated(run.info.run_id)
    with contextlib.suppress(Exception):  # already registered by an earlier call
        client.create_registered_model(name)
    tags = {"delta_version": str(delta_version)} if delta_version is not None else {}
    version = client.create_model_version(name, source=str(tmp / "model"), run_id=run.info.run_id, tags=tags)
    return str(version.version), run.info.run_id


def test_measure_against_champion_and_record(tmp_path: Path, registry: str) -> None:
    settings = Settings(
        state_dir=tmp_path / "state",
        mlflow_tracking_uri=registry,
        model_name="policy-model",
        retrain_min_new_labels=100,
        retrain_min_sample=4,
        retrain_label_shift_threshold=0.2,
        retrain_min_accuracy=0.9,
    )
    lake = Lake(settings)
    paths = [f"/data/img-{i}.png" for i in range(16)]
    _labels(lake, paths[:10], ["circle"] * 5 + ["square"] * 5, "path")
    _labels(lake, paths[10:11], ["square"], "human")  # human label the champion already trained on
    trained_on = lake.version(IMAGES)
    from mlflow import MlflowClient

    version, _ = _register(registry, "policy-model", accuracy=0.9, delta_version=trained_on, tmp=tmp_path)
    MlflowClient(tracking_uri=registry, registry_uri=registry).set_registered_model_alias(
        "policy-model", "champion", version
    )

    # After training: four new human labels of a new class, all predicted wrong.
    lake.merge(
        IMAGES,
        pa.table(
            {"path": paths[11:15], "load_date": pa.array([DAY] * 4, pa.date32()), "predicted_label": ["circle"] * 4}
        ),
        update={"predicted_label": "s.predicted_label"},
    )
    _labels(lake, paths[11:15], ["triangle"] * 4, "human")

    metrics = measure(settings, lake)
    assert metrics.champion_version == version and metrics.champion_delta_version == trained_on
    assert metrics.new_labels == 4 and metrics.new_distribution == {"triangle": 4}
    assert metrics.psi > 1 and 0 < metrics.js <= 1
    assert metrics.champion_accuracy == 0.0 and metrics.accuracy_sample == 4

    requested = []

    def launch(trigger_id: str, reason: str, delta_version: int) -> str:
        requested.append((trigger_id, reason, delta_version))
        return "queued"

    first = evaluate(settings, lake, decision_id="evt-1", trigger="labeling-export", request_launch=launch)
    evaluate(settings, lake, decision_id="evt-1", trigger="labeling-export", request_launch=launch)  # replay
    assert first.retrain and first.reasons == ["label_shift", "accuracy"]
    rows = lake.read(RETRAINING_DECISIONS).to_pylist()
    assert len(rows) == 1, "a replayed trigger must not add a decision row"
    assert rows[0]["psi"] == pytest.approx(metrics.psi) and rows[0]["champion_version"] == version
    assert rows[0]["drift_threshold"] == 0.2 and rows[0]["launch"] == "queued"
    assert requested[0] == ("evt-1", "label_shift,accuracy", lake.version(IMAGES))


def test_champion_training_version_from_the_registry(
    tmp_path: Path, registry: str, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = Settings(state_dir=tmp_path / "fresh")
    assert champion_training_version(fresh) == (None, None)
    assert not (fresh.state_dir / "mlflow.db").exists()  # no registry yet: none is created to find out

    from mlflow import MlflowClient

    settings = Settings(state_dir=tmp_path / "state", mlflow_tracking_uri=registry, model_name="tag-model")
    assert champion_training_version(settings) == (None, None)  # no such model
    version, _ = _register(registry, "tag-model", accuracy=0.9, delta_version=7, tmp=tmp_path)
    assert champion_training_version(settings) == (None, None)  # a version, but no champion
    client = MlflowClient(tracking_uri=registry, registry_uri=registry)
    client.set_registered_model_alias("tag-model", "champion", version)
    assert champion_training_version(settings) == (version, 7)
    client.set_model_version_tag("tag-model", version, "delta_version", "seven")
    with caplog.at_level("WARNING", logger="handlers.retraining.policy"):
        assert champion_training_version(settings) == (version, None)
    assert "non-integer delta_version tag 'seven'" in caplog.text


def test_promotion_check_after_remote_run(tmp_path: Path, registry: str) -> None:
    settings = Settings(
        state_dir=tmp_path / "state", mlflow_tracking_uri=registry, model_name="promo-model", promotion_margin=0.01
    )
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry, registry_uri=registry)
    champion_version, _ = _register(registry, "promo-model", accuracy=0.90, delta_version=1, tmp=tmp_path)
    client.set_registered_model_alias("promo-model", "champion", champion_version)
    _, weak_run = _register(registry, "promo-model", accuracy=0.905, delta_version=2, tmp=tmp_path)
    strong_version, strong_run = _register(registry, "promo-model", accuracy=0.95, delta_version=3, tmp=tmp_path)

    weak = promotion_check(settings, weak_run)
    assert weak["promoted"] is False and "does not beat" in weak["reason"]  # within the margin
    assert weak["decision"] == "rejected"
    # A split winner waits for live labels as challenger (promotion_min_pairs 20 by default).
    outcome = promotion_check(settings, strong_run)
    assert (outcome["promoted"], outcome["decision"], outcome["model_version"]) == (False, "challenger", strong_version)
    assert outcome["champion_accuracy"] == pytest.approx(0.90)
    assert str(client.get_model_version_by_alias("promo-model", "challenger").version) == strong_version
    assert str(client.get_model_version_by_alias("promo-model", "champion").version) == champion_version
    # A redelivered RunCompleted finds the decision already taken and changes nothing.
    again = promotion_check(settings, strong_run)
    assert not again["promoted"] and again["reason"] == "decided by the run: challenger"
    assert promotion_check(settings, "no-such-run")["promoted"] is False
    # Asking for no live pairs, the split alone promotes.
    best_version, best_run = _register(registry, "promo-model", accuracy=0.97, delta_version=4, tmp=tmp_path)
    best = promotion_check(settings.model_copy(update={"promotion_min_pairs": 0}), best_run)
    assert best["promoted"] and best["decision"] == "champion"
    assert str(client.get_model_version_by_alias("promo-model", "champion").version) == best_version


def test_dataset_drift_event_triggers_one_launch(settings: Settings, tmp_path: Path, publisher) -> None:
    from azure.eventgrid import EventGridEvent

    from handlers.api.payloads import DATASET_DRIFT

    record = tmp_path / "runs.txt"
    settings = settings.model_copy(update={"retrain_command": fake_train_command(record), "retrain_cooldown_s": 0.0})
    lake = Lake(settings)
    _labels(lake, ["/d/1.png", "/d/2.png"], ["a", "b"], "human")
    drift = EventGridEvent(
        subject="datadrift/abc/run/r1",
        event_type=DATASET_DRIFT,
        data_version="2",
        data={
            "dataDriftId": "abc",
            "dataDriftName": "images",
            "runId": "r1",
            "baseDatasetId": "b",
            "targetDatasetId": "t",
            "driftCoefficient": 0.83,
            "startTime": "2026-01-01T00:00:00Z",
            "endTime": "2026-01-02T00:00:00Z",
        },
    )
    calm = EventGridEvent(
        subject="datadrift/abc/run/r2",
        event_type=DATASET_DRIFT,
        data_version="2",
        data={"dataDriftId": "abc", "runId": "r2", "driftCoefficient": 0.01},
    )
    with serving(settings) as (url, service):
        publisher(url).send([drift, calm])
        publisher(url).send([drift])  # redelivery
        assert service.wait_idle(30) and service.launcher.wait_idle(30)
    rows = {r["decision_id"]: r for r in lake.read(RETRAINING_DECISIONS).to_pylist()}
    assert rows[str(drift.id)]["retrain"] and rows[str(drift.id)]["reasons"] == "dataset_drift"
    assert rows[str(drift.id)]["dataset_drift"] == pytest.approx(0.83)
    assert not rows[str(calm.id)]["retrain"] and rows[str(calm.id)]["launch"] == "none"
    assert record.read_text().split() == [str(lake.version(IMAGES))]


def policy_heap_peak(rows: int, folder: str) -> int:
    """The policy's peak Python heap reading a table of ``rows`` paths and 20 new human labels."""
    import tracemalloc

    settings = Settings(state_dir=Path(folder) / f"state-{rows}")
    lake = Lake(settings)
    _labels(lake, [f"/data/bulk-{i:06d}.png" for i in range(rows)], ["circle"] * rows, "path")
    _labels(lake, [f"/data/human-{i}.png" for i in range(20)], ["square", "triangle"] * 10, "human")
    lake = Lake(settings)  # a fresh reader, as each event gets
    measure(settings, lake)  # warm: imports and caches outside the measurement
    tracemalloc.start()
    try:
        metrics = measure(settings, lake)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert metrics.new_labels == 20 and metrics.new_distribution == {"square": 10, "triangle": 10}
    return peak


def test_measure_reads_in_python_memory_independent_of_the_table_size(tmp_path: Path) -> None:
    """The policy used to turn every images row into a Python dict on every event: its Python heap
    grew with the table. Arrow buffers are not Python objects, so tracemalloc sees only what the
    policy itself builds."""
    peak = "tests.handlers.test_policy:policy_heap_peak"
    small, large = peak_in_subprocess(peak, 1_000, tmp_path), peak_in_subprocess(peak, 60_000, tmp_path)
    # 59,000 more rows as dicts were tens of MB; the bounded reads leave the heap where it was.
    assert large - small < 2 * 1024 * 1024, (small, large)
