"""The Azure ML retraining job exactly as the backend submits it.

Only the remote API is faked (:class:`CapturingJobs` keeps what ``MLClient.jobs.create_or_update``
receives); the job is then read the way the SDK serialises it for submission, and its command line
runs here, with exactly its environment, as far as it goes without Azure.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from handlers.retraining.azureml import EXPERIMENT, AzureMLBackend
from handlers.retraining.launcher import SUBMITTED
from handlers.retraining.runs import is_retraining_run
from infra.iac import RETRAINING_TAG
from infra.iac.specs import JOB_SECRET_VARIABLES
from infra.settings import Settings
from tests.helpers.azureml import ROOT, job_shell, only_lakesight_env, rest_payload, run_in_job

LAKE_ROOT = "abfss://lake@acct.dfs.core.windows.net/tables"
WORKSPACE_MLFLOW = (
    "azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/0000/resourceGroups/lakesight-rg"
    "/providers/Microsoft.MachineLearningServices/workspaces/lakesight-ml"
)


class CapturingJobs:
    """Stands in for ``MLClient.jobs`` (Azure cannot be reached here): keeps each job it receives."""

    def __init__(self) -> None:
        self.received: list[Any] = []

    def create_or_update(self, job: Any) -> Any:
        self.received.append(job)
        return SimpleNamespace(name=f"job-{len(self.received)}", studio_url="https://ml.azure.com/x")


def _submitted(settings: Settings, delta_version: int = 42, launch_id: int = 7) -> Any:
    jobs = CapturingJobs()
    result = AzureMLBackend(settings, client=SimpleNamespace(jobs=jobs)).run(delta_version, launch_id)
    assert result.status == SUBMITTED, result.outcome
    (job,) = jobs.received
    return job


@pytest.fixture
def handler_settings(tmp_path: Path) -> Settings:
    """A handler in Azure configured for Azure ML, with the workspace's tracking server and its own rule."""
    return Settings(
        mode="azure",
        state_dir=tmp_path / "state",
        lake_root=LAKE_ROOT,
        mlflow_tracking_uri=WORKSPACE_MLFLOW,
        model_name="digits-classifier",
        promotion_margin=0.02,
        azureml_compute="gpu-a100",
    )


def test_submitted_job_is_a_retraining_run(handler_settings: Settings) -> None:
    payload = rest_payload(_submitted(handler_settings, delta_version=42, launch_id=7))
    # The run's tags come back as the RunCompleted event's runTags.
    assert is_retraining_run({"runTags": dict(payload.tags)})
    assert payload.tags[RETRAINING_TAG] == "true"
    assert payload.tags["launch_id"] == "7" and payload.tags["delta_version"] == "42"
    assert payload.experiment_name == EXPERIMENT


def test_submitted_job_reads_the_handlers_table_at_the_version(handler_settings: Settings) -> None:
    payload = rest_payload(_submitted(handler_settings, delta_version=42))
    assert set(payload.inputs) == {"delta_table", "delta_version"}
    assert payload.inputs["delta_table"].uri == handler_settings.table_uri("images")
    assert payload.inputs["delta_version"].value == "42"
    assert payload.compute_id.endswith("gpu-a100")


def test_job_environment_alone_rebuilds_azure_settings_with_the_tracking_server(
    handler_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = rest_payload(_submitted(handler_settings)).environment_variables
    assert not set(env) & set(JOB_SECRET_VARIABLES)
    assert not [v for v in env.values() if str(tmp_path) in v], "a path of this machine went into the job"
    monkeypatch.chdir(tmp_path)  # no lakesight.toml here
    only_lakesight_env(env, monkeypatch)
    rebuilt = Settings()
    assert rebuilt.mode == "azure"
    assert rebuilt.mlflow_tracking_uri == WORKSPACE_MLFLOW
    assert not rebuilt.mlflow_tracking_uri.startswith("sqlite:")
    assert rebuilt.model_name == "digits-classifier" and rebuilt.promotion_margin == 0.02


def test_job_command_starts_lakesight_with_the_jobs_settings(handler_settings: Settings, tmp_path: Path) -> None:
    payload = rest_payload(_submitted(handler_settings, delta_version=42))
    setup, run = job_shell(payload)
    assert run == "lakesight train --version 42 --json"
    done = run_in_job(f"{setup} && lakesight config", dict(payload.environment_variables), tmp_path)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["mode"] == "azure"
    assert seen["lake_root"] == LAKE_ROOT  # the delta_table input's parent folder
    assert seen["mlflow_tracking_uri"] == WORKSPACE_MLFLOW
    assert seen["model_name"] == "digits-classifier" and seen["promotion_margin"] == 0.02
    # The training command itself parses: an unknown option would fail before --help is handled.
    done = run_in_job(f"{setup} && {run} --help", dict(payload.environment_variables), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--version" in done.stdout


def test_local_tracking_store_stays_here_and_the_job_uses_its_workspaces(settings: Settings, tmp_path: Path) -> None:
    assert settings.mlflow_tracking_uri.startswith("sqlite:")
    payload = rest_payload(_submitted(settings))
    env = dict(payload.environment_variables)
    assert "LAKESIGHT_MLFLOW_TRACKING_URI" not in env and "LAKESIGHT_MLFLOW_ARTIFACT_ROOT" not in env
    setup, _ = job_shell(payload)
    # Azure ML sets MLFLOW_TRACKING_URI in every job to the workspace's server.
    done = run_in_job(f"{setup} && lakesight config", {**env, "MLFLOW_TRACKING_URI": WORKSPACE_MLFLOW}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mlflow_tracking_uri"] == WORKSPACE_MLFLOW


def test_submitted_job_runs_in_the_yamls_environment_from_this_checkout(handler_settings: Settings) -> None:
    job = _submitted(handler_settings)
    assert Path(job.code) == ROOT  # the snapshot `pip install --no-deps .` installs
    conda = job.environment.conda_file["dependencies"]
    assert "openjdk=17" in conda  # Spark's JVM
    assert "azureml-mlflow" in next(d["pip"] for d in conda if isinstance(d, dict))  # azureml:// tracking URIs
    assert job.environment_variables["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
