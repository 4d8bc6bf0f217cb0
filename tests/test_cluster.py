"""lakesight on a Spark standalone cluster (2 workers on loopback) with an HTTP MLflow tracking server.

``local[*]`` runs every task inside the driver; here each ``lakesight`` command is a driver whose
tasks run in the workers' executors, whose models come over HTTP from the tracking server, and a
worker can be lost mid-stream. The cluster is started once (tests/helpers/cluster.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from infra.lake import Lake
from infra.processes import Service, free_port, lakesight_argv, port_open
from infra.settings import Settings
from infra.tables import IMAGES
from tests.helpers.cluster import ClusterStack, finished_tasks, stack_cli
from tests.helpers.training import flat_copies

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

CLASSES = ("circle", "square", "triangle")


def _model_name() -> str:
    # One tracking server serves every test: each test registers its own model.
    return f"cluster-{uuid.uuid4().hex[:8]}"


def test_stack_start_prints_the_environment_that_points_commands_at_the_cluster(cluster_stack: ClusterStack) -> None:
    printed = cluster_stack.printed_env
    assert printed["LAKESIGHT_SPARK_MASTER"] == cluster_stack.cluster.master_url
    assert printed["LAKESIGHT_SPARK_MASTER"].startswith("spark://127.0.0.1:")
    assert printed["LAKESIGHT_MLFLOW_TRACKING_URI"] == cluster_stack.tracking.uri
    assert printed["LAKESIGHT_MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    assert printed["LAKESIGHT_ALLOW_LOCAL_PATHS_ON_CLUSTER"] == "true"
    assert len(cluster_stack.cluster.alive_workers()) == 2
    assert len({str(d) for d in cluster_stack.cluster.work_dirs}) == 2

    shown = stack_cli("status", state=cluster_stack.state_dir, env={"COLUMNS": "300"})  # no cell cut short
    assert shown.returncode == 0, shown.stderr
    for service in ("spark-master", "spark-worker-0", "spark-worker-1", "mlflow-tracking"):
        assert service in shown.stdout
    assert "2 of 2 workers alive" in shown.stdout


def test_an_http_tracked_model_keeps_its_artifacts_on_the_server(cluster_stack: ClusterStack, tmp_path: Path) -> None:
    from training.bench.toy_models import register_champion, tiny_cnn

    state = tmp_path / "state"
    settings = Settings(state_dir=state, mlflow_tracking_uri=cluster_stack.tracking.uri, model_name=_model_name())
    assert settings.mlflow_artifact_root == "mlflow-artifacts:/"
    version = register_champion(settings, tiny_cnn(16, len(CLASSES)), class_names=list(CLASSES), image_size=16)

    # The server stored every file; the logging process's state dir holds none of them.
    on_server = list(cluster_stack.tracking.artifacts_dir.rglob("MLmodel"))
    assert on_server, f"no MLmodel under {cluster_stack.tracking.artifacts_dir}"
    assert not list(state.rglob("MLmodel")) and not (state / "mlartifacts").exists()

    # A fresh process elsewhere, with nothing of this one's disk, loads the champion over HTTP.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_CHAMPION],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        timeout=180,
        env={
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "LAKESIGHT_STATE_DIR": str(elsewhere / "state"),
            "LAKESIGHT_MLFLOW_TRACKING_URI": cluster_stack.tracking.uri,
            "LAKESIGHT_MODEL_NAME": settings.model_name,
        },
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    shown = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert shown == {"version": version, "classes": list(CLASSES), "rows": 1}


LOAD_CHAMPION = """
import json
import numpy as np
from infra.core.model_cache import current_classifier
from infra.local.sample_data import png_bytes
from infra.settings import Settings

classifier, version = current_classifier(Settings())
rows = classifier.classify([png_bytes(np.zeros((16, 16, 3), dtype=np.uint8))])
print(json.dumps({"version": version, "classes": list(classifier.class_names), "rows": len(rows)}))
"""


class OnCluster:
    """``lakesight`` commands of one test, each a driver on the cluster; records their apps and times."""

    def __init__(self, stack: ClusterStack, tmp_path: Path, **env: str):
        self.stack = stack
        self.state = tmp_path / "state"
        self.settings = Settings(state_dir=self.state, model_name=_model_name(), blob_port=stack.blob_port)
        self.env = {
            **os.environ,
            **stack.env,
            "LAKESIGHT_STATE_DIR": str(self.state),
            "LAKESIGHT_MODEL_NAME": self.settings.model_name,
            **env,
        }
        self.seconds: dict[str, float] = {}

    def __call__(self, *args: str, timeout: float = 420) -> tuple[str, set[Path]]:
        """Run ``lakesight ARGS``; its stdout and the app folders it left on the workers."""
        before = self.stack.app_dirs()
        started = time.perf_counter()
        result = subprocess.run(lakesight_argv(*args), capture_output=True, text=True, env=self.env, timeout=timeout)
        self.seconds[" ".join(args[:3])] = round(time.perf_counter() - started, 1)
        assert result.returncode == 0, f"lakesight {' '.join(args)}:\n{result.stderr[-4000:]}"
        return result.stdout, self.stack.app_dirs() - before

    def spawn(self, name: str, *args: str) -> Service:
        service = Service(name, self.settings)
        service.spawn(lakesight_argv(*args), env=self.env)
        return service

    def images(self) -> list[dict]:
        lake = Lake(Settings(state_dir=self.state))
        if not lake.exists(IMAGES):
            return []
        columns = ["path", "label", "label_source", "predicted_label", "model_version", "error"]
        return lake.read(IMAGES, columns=columns).to_pylist()


def ran_on_executors(stack: ClusterStack, apps: set[Path], *, executors: int = 1) -> dict[str, int]:
    """Assert the command's driver was a spark:// application whose tasks ran in ``executors`` executors."""
    assert apps, "the command left no application folder on any worker: its tasks ran in the driver"
    registered = {app["id"] for app in _master_apps(stack)}
    assert {app.name for app in apps} <= registered, "the master does not know the command's application"
    tasks = finished_tasks(apps)
    busy = {executor for executor, count in tasks.items() if count}
    assert len(busy) >= executors, f"finished tasks per executor: {tasks}"
    return tasks


def _master_apps(stack: ClusterStack) -> list[dict]:
    state = httpx.get(stack.cluster.master_json_url, timeout=5).json()
    return [*state.get("activeapps", []), *state.get("completedapps", [])]


def shapes(on: OnCluster, folder: str, *, count: int, seed: int) -> Path:
    out = on.state.parent / folder
    on(
        "data",
        "shapes",
        "--out",
        str(out),
        "--count",
        str(count),
        "--size",
        "16",
        "--classes",
        ",".join(CLASSES),
        "--seed",
        str(seed),
    )
    return out


def _export_labels(on: OnCluster, handler_port: int, truth: dict[str, str], folder: Path) -> None:
    """Play the labeling service: upload a JSONL export of the true labels (naming each image by its
    source path in ``folder``), announce it to the handler, wait until every label is in ``images``."""
    from infra.blob import BlobStore
    from tests.helpers.handlers import blob_event_dict

    wait_until(lambda: port_open("127.0.0.1", handler_port), "the handler", timeout=90)
    lines = [json.dumps({"image_url": str(folder.resolve() / name), "label": label}) for name, label in truth.items()]
    name = "exports/round-1.jsonl"
    BlobStore(on.settings).upload(on.settings.exports_container, name, ("\n".join(lines) + "\n").encode())
    event = blob_event_dict(on.settings, on.settings.exports_container, name)
    answer = httpx.post(
        f"http://127.0.0.1:{handler_port}/api/events", json=[event], headers={"aeg-sas-key": "local-dev-key"}
    )
    assert answer.status_code == 200, answer.text

    def labelled() -> bool:
        return sum(r["label_source"] == "human" for r in on.images()) == len(truth)

    wait_until(labelled, "the exported labels in images", timeout=120)


def wait_until(done: Callable[[], bool], what: str, *, timeout: float, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(every)


def trained(printed: str) -> dict:
    return json.loads(printed.strip().splitlines()[-1])


def test_ingest_train_score_label_and_retrain_on_the_cluster(cluster_stack: ClusterStack, tmp_path: Path) -> None:
    handler_port = free_port()
    on = OnCluster(
        cluster_stack,
        tmp_path,
        LAKESIGHT_HANDLER_PORT=str(handler_port),
        # This test launches the retrainings itself (on the cluster): the policy must not.
        LAKESIGHT_RETRAIN_MIN_NEW_LABELS="100000",
        LAKESIGHT_RETRAIN_MIN_SAMPLE="100000",
        LAKESIGHT_PROMOTION_MIN_PAIRS="0",
        LAKESIGHT_LABEL_CLASSES=json.dumps(CLASSES),
    )
    data = shapes(on, "shapes", count=60, seed=1)
    _, apps = on("ingest", str(data / "train"), "--labeled", "--classes", ",".join(CLASSES))
    ran_on_executors(cluster_stack, apps)

    v1 = trained(on("train", "--epochs", "2", "--batch-size", "16", "--json")[0])
    assert v1["promoted"], v1

    incoming = tmp_path / "incoming"
    truth = flat_copies(data / "holdout", incoming)
    _, apps = on("score", "--source", str(incoming), "--once")
    ran_on_executors(cluster_stack, apps)
    scored = [r for r in on.images() if r["path"].rsplit("/", 1)[-1] in truth]
    assert len(scored) == len(truth)
    # Every prediction names the model version that made it.
    assert all(r["predicted_label"] and r["model_version"] == str(v1["model_version"]) for r in scored), scored

    handler = on.spawn("handler", "serve-events", "--log-level", "warning")
    try:
        _export_labels(on, handler_port, truth, incoming)
    finally:
        handler.stop()

    # Retraining on the human labels: two MultiWorkerMirroredStrategy workers, one per executor.
    printed, apps = on("train", "--workers", "2", "--epochs", "2", "--batch-size", "16", "--json")
    v2 = trained(printed)
    assert v2["delta_version"] > v1["delta_version"] and v2["model_version"] != v1["model_version"]
    ran_on_executors(cluster_stack, apps, executors=2)
    # A random search: its trials are parallel Spark tasks, one per executor.
    printed, apps = on("train", "--search", "2", "--epochs", "1", "--batch-size", "16", "--json")
    v3 = trained(printed)
    assert v3["model_version"] not in (v1["model_version"], v2["model_version"])
    ran_on_executors(cluster_stack, apps, executors=2)
    print(f"\ncluster e2e step seconds: {json.dumps(on.seconds)}", file=sys.stderr)


def test_a_worker_lost_mid_stream_loses_and_duplicates_no_row(cluster_stack: ClusterStack, tmp_path: Path) -> None:
    from training.bench.toy_models import register_champion, tiny_cnn

    # Small batches, so the stream is mid-way through several when the worker goes.
    on = OnCluster(cluster_stack, tmp_path, LAKESIGHT_SCORE_MAX_FILES_PER_TRIGGER="4", LAKESIGHT_SCORE_TRIGGER_S="1")
    tracked = Settings(
        state_dir=on.state, mlflow_tracking_uri=cluster_stack.tracking.uri, model_name=on.settings.model_name
    )
    version = register_champion(tracked, tiny_cnn(16, len(CLASSES)), class_names=list(CLASSES), image_size=16)
    files = sorted(shapes(on, "shapes", count=40, seed=2).rglob("*.png"))
    incoming, staging = tmp_path / "incoming", tmp_path / "staging"
    incoming.mkdir()
    arrive(files[:12], staging, incoming)

    before = cluster_stack.app_dirs()
    stream = on.spawn("score", "score", "--source", str(incoming))

    def scored() -> list[dict]:
        assert stream.pid() is not None, (
            f"the stream exited; see {stream.log_file}:\n{stream.log_file.read_text()[-3000:]}"
        )
        return [r for r in on.images() if r["model_version"] and r["error"] is None]

    try:
        wait_until(lambda: len(scored()) >= 4, "the stream's first batches", timeout=240)
        stream_apps = cluster_stack.app_dirs() - before
        # The worker to lose runs one of the stream's executors (its tasks are retried on the other).
        assert any(app.parent == cluster_stack.cluster.work_dirs[1] for app in stream_apps), stream_apps
        cluster_stack.cluster.kill_worker(1)
        for start in range(12, len(files), 7):  # files keep arriving on the one worker left
            arrive(files[start : start + 7], staging, incoming)
            time.sleep(1.5)
        wait_until(lambda: len(scored()) >= len(files), f"all {len(files)} files scored", timeout=300)
    finally:
        stream.stop(timeout=30)
        cluster_stack.cluster.restart_worker(1)  # the session's later tests get both workers back

    ran_on_executors(cluster_stack, stream_apps)
    rows = on.images()
    paths = sorted(r["path"] for r in rows)
    assert len(paths) == len(set(paths)) == len(files), "a row was lost or written twice"
    assert {p.rsplit("/", 1)[-1] for p in paths} == {f"{f.parent.name}-{f.name}" for f in files}
    assert all(r["model_version"] == version and r["error"] is None for r in rows)


def arrive(images: list[Path], staging: Path, folder: Path) -> None:
    """Land ``images`` in ``folder`` whole (written beside it, then renamed in), as ``<label>-<name>``."""
    staging.mkdir(parents=True, exist_ok=True)
    for image in images:
        name = f"{image.parent.name}-{image.name}"
        shutil.copy(image, staging / name)
        os.replace(staging / name, folder / name)
