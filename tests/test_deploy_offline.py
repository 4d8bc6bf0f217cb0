"""The deployment artifacts run for real, offline (docs/DEPLOY.md, Offline runs of the deployment files).

Each Databricks task runs its own command line (the wheel task's parameters) with its cluster's
``spark_conf`` and ``spark_env_vars`` as the bundle renders them, as a driver on the local standalone
cluster; the Azure ML retraining job runs its own command with its own variables. The only thing
changed is where the cloud's locations and services are: one small dict of replacements per
deployment target, applied to the rendered values.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.arrivals import write_arrival_records
from infra.blob import BlobStore
from infra.lake import Lake
from infra.local.cluster import TrackingServer
from infra.local.stack import Azurite
from infra.processes import free_port, lakesight_argv
from infra.settings import AZURITE_ACCOUNT, AZURITE_KEY, Settings
from infra.tables import IMAGES
from tests.helpers.azureml import job_shell, only_lakesight_env, rest_payload, run_in_job
from tests.helpers.cluster import ClusterStack, finished_tasks
from tests.helpers.streams import arrival_record, merge_engines
from tests.helpers.training import digit_rows, write_rows
from tests.infra.iac import specs

# What `--var lake_url=...` gives `databricks bundle deploy`, and the target deployed.
LAKE_URL = "abfss://lake@lakesightacct.dfs.core.windows.net"
TARGET = "dev"
SCOPE = "lakesight-dev"  # the dev target's secret_scope
# spark_conf keys of the bundle that do not apply to the local standalone cluster, with why; every
# other key reaches the task's driver as the cluster would set it.
NOT_ON_THE_LOCAL_CLUSTER = {
    # Databricks' own cluster profile (single node); open-source Spark has no such setting. The
    # single node itself (spark.master local[*, 4]) is passed on.
    "spark.databricks.cluster.profile": "Databricks-only",
}
# A storage account azure mode accepts (it refuses Azurite's public development key): a second
# Azurite serves it, beside the development account its start-up uses to create containers.
OFFLINE_ACCOUNT = "lakesightoffline"
OFFLINE_KEY = base64.b64encode(b"lakesight offline account key 32").decode()
DIGITS_PER_CLASS = 15
TASK_TIMEOUT_S = 420


# ------------------------------------------------------------------------------------------------
# the mapping: cloud locations and services -> this machine's
def bundle_mapping(tmp_path: Path, stack: ClusterStack, blob_connection: str) -> dict[str, str]:
    """The bundle's cloud values and what stands in for each here (a value, or a prefix before '/')."""
    return {
        LAKE_URL: str(tmp_path / "lake"),  # the lake container: tables, checkpoints, arrivals, seed
        "/local_disk0/lakesight": str(tmp_path / "node"),  # a cluster node's local disk
        "databricks": stack.tracking.uri,  # the workspace's tracking server and registry
        f"{{{{secrets/{SCOPE}/lake-storage-options}}}}": "{}",  # a local folder needs no credential
        f"{{{{secrets/{SCOPE}/blob-connection-string}}}}": blob_connection,
        f"{{{{secrets/{SCOPE}/event-key}}}}": "e" * 40,
    }


def mapped(value: str, mapping: dict[str, str]) -> str:
    """``value`` with the first mapping key that is all of it, or its prefix before a '/', replaced."""
    for cloud, local in mapping.items():
        if value == cloud or value.startswith(cloud + "/"):
            return local + value[len(cloud) :]
    return value


def attached(stack: ClusterStack) -> dict[str, str]:
    """What a Databricks driver gets from its cluster rather than from the task: the master, and
    shared storage (the lake folders stand in for abfss://, and every loopback worker shares them)."""
    printed = stack.printed_env
    return {name: printed[name] for name in ("LAKESIGHT_SPARK_MASTER", "LAKESIGHT_ALLOW_LOCAL_PATHS_ON_CLUSTER")}


def task_env(spec: dict[str, Any], task_key: str, mapping: dict[str, str], stack: ClusterStack) -> dict[str, str]:
    """The task's cluster's spark_env_vars, mapped, with its spark_conf as LAKESIGHT_SPARK_CONF."""
    cluster = specs.task_cluster(spec, task_key)
    env = {name: mapped(value, mapping) for name, value in cluster["spark_env_vars"].items()}
    cloud = [f"{k}={v}" for k, v in env.items() if "abfss://" in v or "{{secrets/" in v or v in mapping]
    assert not cloud, f"unmapped cloud values in {task_key}'s environment: {cloud}"
    conf = {k: v for k, v in cluster["spark_conf"].items() if k not in NOT_ON_THE_LOCAL_CLUSTER}
    return {**env, "LAKESIGHT_SPARK_CONF": json.dumps(conf), **attached(stack)}


def without_lakesight(environ: dict[str, str]) -> dict[str, str]:
    """This process's environment (PATH, JAVA_HOME, PYTHONPATH) without any LAKESIGHT_* setting."""
    return {k: v for k, v in environ.items() if not k.startswith("LAKESIGHT_")}


class BundleTasks:
    """Runs Databricks tasks as ``lakesight`` drivers on the cluster; records each one's seconds."""

    def __init__(self, stack: ClusterStack, mapping: dict[str, str]):
        self.stack = stack
        self.mapping = mapping
        self.seconds: dict[str, float] = {}
        self.apps: dict[str, set[Path]] = {}

    def command(self, spec: dict[str, Any], task_key: str) -> list[str]:
        return [mapped(p, self.mapping) for p in specs.wheel_commands(spec, bind=True)[task_key]]

    def env(self, spec: dict[str, Any], task_key: str) -> dict[str, str]:
        return task_env(spec, task_key, self.mapping, self.stack)

    def __call__(self, spec: dict[str, Any], task_key: str, *extra: str) -> str:
        """Run the task (plus ``extra`` arguments); its stdout."""
        argv = lakesight_argv(*self.command(spec, task_key), *extra)
        env = {**without_lakesight(dict(os.environ)), **self.env(spec, task_key)}
        before = self.stack.app_dirs()
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TASK_TIMEOUT_S)
        self.seconds[task_key] = round(time.perf_counter() - started, 1)
        self.apps[task_key] = self.stack.app_dirs() - before
        assert done.returncode == 0, f"task {task_key}: {' '.join(argv[3:])}\n{done.stderr[-4000:]}"
        return done.stdout

    def ran_on_executors(self, task_key: str) -> None:
        tasks = finished_tasks(self.apps[task_key])
        assert sum(tasks.values()) > 0, f"{task_key}'s Spark tasks ran in no executor: {tasks}"


# ------------------------------------------------------------------------------------------------
# fixtures
@pytest.fixture
def azure_blob_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The connection string of :data:`OFFLINE_ACCOUNT` on an Azurite of this test's own."""
    monkeypatch.setenv("AZURITE_ACCOUNTS", f"{AZURITE_ACCOUNT}:{AZURITE_KEY};{OFFLINE_ACCOUNT}:{OFFLINE_KEY}")
    port = free_port()
    azurite = Azurite(Settings(state_dir=tmp_path / "azurite", blob_port=port))
    azurite.start()
    try:
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={OFFLINE_ACCOUNT};AccountKey={OFFLINE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{OFFLINE_ACCOUNT};"
        )
    finally:
        azurite.stop()


def seed_digits(digits_dir: Path, seed: Path) -> None:
    """The first digits of each class of the train split, as ``<seed>/<label>/<name>.png``."""
    for label_dir in sorted((digits_dir / "train").iterdir()):
        (seed / label_dir.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(label_dir.glob("*.png"))[:DIGITS_PER_CLASS]:
            shutil.copy(image, seed / label_dir.name / image.name)


def arrive(settings: Settings, images: list[Path]) -> list[str]:
    """Upload ``images`` to the images container and write their arrival records, as the handler
    does on their BlobCreated events; the blobs' URLs."""
    store = BlobStore(settings)
    store.ensure_containers()
    at = dt.datetime.now(dt.UTC).isoformat()
    records = []
    for image in images:
        name = f"incoming/{image.parent.name}-{image.name}"
        store.upload(settings.images_container, name, image.read_bytes(), content_type="image/png")
        records.append(arrival_record(settings, store, name, image.read_bytes(), at=at))
    write_arrival_records(settings, records)
    return [r.url for r in records]


def registered_on_the_server(tracking: TrackingServer, name: str, version: str, local_state: Path) -> None:
    """Version ``version`` of ``name`` is in the server's registry, its files in the server's store only."""
    from mlflow import MlflowClient

    found = MlflowClient(tracking.uri, registry_uri=tracking.uri).get_model_version(name, version)
    assert found.version == version
    assert list(tracking.artifacts_dir.rglob("MLmodel")), f"no MLmodel under {tracking.artifacts_dir}"
    assert not list(local_state.rglob("MLmodel")), "the run wrote model files on its own disk"


# ------------------------------------------------------------------------------------------------
# Databricks
@pytest.mark.cluster
@pytest.mark.e2e
@pytest.mark.slow
def test_databricks_tasks_run_with_their_clusters_conf_and_env_on_the_local_cluster(
    cluster_stack: ClusterStack,
    azure_blob_connection: str,
    digits_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    training = specs.load_databricks_job("training", TARGET, {"lake_url": LAKE_URL})
    scoring = specs.load_databricks_job("scoring", TARGET, {"lake_url": LAKE_URL})
    mapping = bundle_mapping(tmp_path, cluster_stack, azure_blob_connection)
    run = BundleTasks(cluster_stack, mapping)
    seed_digits(digits_dir, Path(run.command(training, "ingest")[1]))  # the labeled_source parameter

    # The training DAG, task by task in its order.
    printed = {key: run(training, key) for key in specs.task_order(training)}
    assert list(printed) == ["ingest", "train", "registry"]
    run.ran_on_executors("ingest")
    trained = json.loads(printed["train"].strip().splitlines()[-1])
    version = str(trained["model_version"])
    assert trained["promoted"], trained
    only_lakesight_env(run.env(scoring, "score"), monkeypatch)
    settings = Settings()  # what the scoring task's driver reads
    registered_on_the_server(cluster_stack.tracking, settings.model_name, version, tmp_path / "node")
    assert version in printed["registry"]

    # The scoring job is continuous; --once (availableNow) is the one argument added, so that it stops.
    holdout = sorted((digits_dir / "holdout").rglob("*.png"))[:10]
    urls = arrive(settings, holdout)
    run(scoring, "score", "--once")
    run.ran_on_executors("score")
    rows = {r["path"]: r for r in Lake(settings).read(IMAGES).to_pylist()}
    scored = [rows[url] for url in urls if url in rows]
    assert len(scored) == len(urls), f"{len(scored)} of {len(urls)} arrivals scored"
    assert all(r["predicted_label"] and r["model_version"] == version and r["error"] is None for r in scored)
    # Ingest's and the stream's MERGEs were committed by delta-spark, the engine the bundle sets.
    assert merge_engines(Lake(settings)) == {"spark"}
    print(f"\ndatabricks task seconds: {json.dumps(run.seconds)}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------
# Azure ML
def azureml_mapping(tracking: TrackingServer, tmp_path: Path) -> dict[str, str]:
    """What Azure ML gives a job that the job's definition does not: its services and disk."""
    return {
        "MLFLOW_TRACKING_URI": tracking.uri,  # Azure ML sets it to the workspace's tracking server
        "LAKESIGHT_STATE_DIR": str(tmp_path / "node"),  # the compute node's disk (else: the code snapshot)
    }


@pytest.mark.e2e
@pytest.mark.slow
def test_the_retraining_job_trains_and_registers_through_the_tracking_server(digits_dir: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    tracking = TrackingServer(Settings(state_dir=tmp_path / "tracking")).start()
    try:
        lake_root = tmp_path / "lake" / "tables"
        rows = digit_rows(digits_dir, 10 * DIGITS_PER_CLASS)
        delta_version = write_rows(Settings(state_dir=tmp_path / "writer", lake_root=str(lake_root)), rows)
        # As `az ml job create -f retrain-job.yml --set inputs.delta_table.path=... inputs.delta_version=...`.
        job = specs.load_retrain_job(delta_table=str(lake_root / IMAGES.name), delta_version=delta_version)
        payload = rest_payload(job)
        setup, command = job_shell(payload)
        env = {**payload.environment_variables, **azureml_mapping(tracking, tmp_path)}
        started = time.perf_counter()
        done = run_in_job(f"{setup} && {command}", env, tmp_path, timeout=TASK_TIMEOUT_S)
        seconds = round(time.perf_counter() - started, 1)
        assert done.returncode == 0, done.stderr[-4000:]
        trained = json.loads(done.stdout.strip().splitlines()[-1])
        assert trained["delta_version"] == delta_version
        name = Settings.model_fields["model_name"].default  # the job sets none
        versions = MlflowClient(tracking.uri, registry_uri=tracking.uri).search_model_versions(f"name='{name}'")
        assert [v.version for v in versions] == [str(trained["model_version"])]
        registered_on_the_server(tracking, name, str(trained["model_version"]), tmp_path / "node")
        print(f"\nretraining job seconds: {seconds}", file=sys.stderr)
    finally:
        tracking.stop()
