"""The ``azureml`` retraining backend: the Azure ML command job of ``infra/iac/azureml/retrain-job.yml``.

The job runs the same ``lakesight train --version N --json`` as the local backend, from the
project's code, with the images Delta table and its version as job inputs. The backend loads the
one job definition with :func:`infra.iac.load_retrain_job`, fills in this deployment's values and
submits it through ``MLClient``; the job's ``RunCompleted`` event later finishes the launch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from handlers.retraining.launcher import FAILED, SUBMITTED, LaunchResult
from infra.iac import load_retrain_job
from infra.locations import is_local_uri
from infra.settings import Settings
from infra.tables import IMAGES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "lakesight-retraining"
# What the job takes from the handler's settings: the model it registers a version of and the rule
# it promotes by must be the handler's own, since handlers/retraining/runs.py checks that version afterwards.
# The rest stays out: the lake root comes from the job's delta_table input; the mode is the YAML's
# (azure); state_dir and the paths under it are this machine's; secrets and storage options are not
# written into a job definition (infra.iac.specs.JOB_SECRET_VARIABLES).
JOB_SETTINGS = ("model_name", "promotion_margin", "max_image_bytes", "mlflow_tracking_uri", "mlflow_artifact_root")
# Of those, the ones that name a location, passed only when the cluster can reach it.
_LOCATIONS = ("mlflow_tracking_uri", "mlflow_artifact_root")


def job_environment(settings: Settings) -> dict[str, str]:
    """The ``LAKESIGHT_*`` variables the retraining job gets from ``settings`` (never a secret).

    A tracking URI local to this machine (the SQLite default) is left out; the job's command then
    falls back to the workspace's own tracking server (``MLFLOW_TRACKING_URI``, set by Azure ML).
    """
    env = settings.to_env(secrets=False, only=JOB_SETTINGS)
    for name in _LOCATIONS:
        if _on_this_machine(getattr(settings, name)):
            env.pop(f"LAKESIGHT_{name.upper()}", None)
    return env


def _on_this_machine(uri: str) -> bool:
    # MLflow's sqlite:/// store is a file here; "databricks" names a remote server without a scheme.
    return uri.startswith("sqlite:") or (uri != "databricks" and is_local_uri(uri))


def retrain_job(settings: Settings, delta_version: int, launch_id: int) -> Any:
    """The retraining job for ``images`` at ``delta_version`` (not submitted)."""
    return load_retrain_job(
        delta_table=settings.table_uri(IMAGES.name),
        delta_version=delta_version,
        compute=settings.azureml_compute,
        code=PROJECT_ROOT,
        launch_id=launch_id,
        environment=job_environment(settings),
    )


def ml_client(settings: Settings) -> Any:
    """An ``MLClient`` for the configured workspace (needs Azure credentials)."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    missing = [
        n
        for n in ("azureml_subscription_id", "azureml_resource_group", "azureml_workspace")
        if not getattr(settings, n)
    ]
    if missing:
        raise ValueError(f"retrain_backend=azureml needs {', '.join(missing)}")
    return MLClient(
        DefaultAzureCredential(),
        settings.azureml_subscription_id,
        settings.azureml_resource_group,
        settings.azureml_workspace,
    )


class AzureMLBackend:
    """Submits :func:`retrain_job`; the launch stays ``submitted`` until the run's RunCompleted event."""

    name = "azureml"

    def __init__(self, settings: Settings, client: Any = None):
        self.settings = settings
        self._client = client

    def run(self, delta_version: int, launch_id: int) -> LaunchResult:
        try:
            client = self._client or ml_client(self.settings)
            job = client.jobs.create_or_update(retrain_job(self.settings, delta_version, launch_id))
        except Exception as exc:  # noqa: BLE001 - Azure raises many types; the launch records the reason
            return LaunchResult(FAILED, {"error": f"submission failed: {type(exc).__name__}: {exc}"})
        return LaunchResult(
            SUBMITTED, {"job": job.name, "studio_url": getattr(job, "studio_url", None)}, external_id=job.name
        )
