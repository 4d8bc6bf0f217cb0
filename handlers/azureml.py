"""The ``azureml`` retraining backend: an azure-ai-ml command job on a GPU cluster.

The job runs the same ``lakesight train --version N --json`` as the local backend, from the
project's code, with the images Delta table and its version as job inputs. Submission goes
through ``MLClient``; the job's ``RunCompleted`` event later finishes the launch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from handlers.launcher import FAILED, SUBMITTED, LaunchResult
from infra.settings import Settings
from infra.tables import IMAGES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "lakesight-retraining"
RETRAINING_TAG = "lakesight.retraining"
# Azure ML's curated CUDA base image; the job installs the project on top of it.
GPU_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04:latest"
TRAIN_COMMAND = (
    "pip install --quiet '.[gpu]' && "
    "python -m infra.cli train --version ${{inputs.delta_version}} --json"
)


def build_job(settings: Settings, delta_version: int, *, launch_id: int | None = None) -> Any:
    """The command job that retrains on ``images`` at ``delta_version`` (not submitted)."""
    from azure.ai.ml import Input
    from azure.ai.ml.entities import CommandJob, Environment

    environment = Environment(image=GPU_IMAGE, description="CUDA base; the job installs the project itself")
    table_uri = settings.table_uri(IMAGES)
    return CommandJob(
        display_name=f"lakesight retrain images@{delta_version}",
        experiment_name=EXPERIMENT,
        description="Retrain the lakesight classifier on a pinned Delta version of the images table",
        code=str(PROJECT_ROOT),
        command=TRAIN_COMMAND,
        environment=environment,
        compute=settings.azureml_compute,
        inputs={
            "images_table": Input(type="uri_folder", path=table_uri, mode="direct"),
            "delta_version": delta_version,
        },
        environment_variables={
            # The job reads the table through delta-rs at the pinned version, from where it lives.
            "LAKESIGHT_LAKE_ROOT": settings.lake_root,
            "LAKESIGHT_MODEL_NAME": settings.model_name,
            "LAKESIGHT_MODE": settings.mode,
        },
        tags={RETRAINING_TAG: "true", "delta_version": str(delta_version), "launch_id": str(launch_id or "")},
        resources={"instance_count": 1},
    )


def ml_client(settings: Settings) -> Any:
    """An ``MLClient`` for the configured workspace (needs Azure credentials)."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    missing = [n for n in ("azureml_subscription_id", "azureml_resource_group", "azureml_workspace")
               if not getattr(settings, n)]
    if missing:
        raise ValueError(f"retrain_backend=azureml needs {', '.join(missing)}")
    return MLClient(DefaultAzureCredential(), settings.azureml_subscription_id, settings.azureml_resource_group,
                    settings.azureml_workspace)


class AzureMLBackend:
    """Submits :func:`build_job`; the launch stays ``submitted`` until the run's RunCompleted event."""

    name = "azureml"

    def __init__(self, settings: Settings, client: Any = None):
        self.settings = settings
        self._client = client

    def run(self, delta_version: int, launch_id: int) -> LaunchResult:
        try:
            client = self._client or ml_client(self.settings)
            job = client.jobs.create_or_update(build_job(self.settings, delta_version, launch_id=launch_id))
        except Exception as exc:  # noqa: BLE001 - Azure raises many types; the launch records the reason
            return LaunchResult(FAILED, {"error": f"submission failed: {type(exc).__name__}: {exc}"})
        return LaunchResult(SUBMITTED, {"job": job.name, "studio_url": getattr(job, "studio_url", None)},
                            external_id=job.name)
