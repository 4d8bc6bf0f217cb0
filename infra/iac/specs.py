"""Where the infrastructure-as-code files shipped in ``infra/iac`` are, and the one loader the runtime uses.

The files themselves are the deployable artifacts (``az deployment group create``, ``databricks bundle
deploy``, ``az ml job create``). The handlers' Azure ML backend loads the retraining job here; the
offline checks of the bundle, the Bicep files and the online endpoint are test code
(``tests/infra/iac/specs.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.errors import LakesightError
from infra.settings import SECRET_FIELDS

if TYPE_CHECKING:
    from azure.ai.ml.entities import Command

IAC_DIR = Path(__file__).resolve().parent
AZURE_DIR = IAC_DIR / "azure"
DATABRICKS_DIR = IAC_DIR / "databricks"
AZUREML_DIR = IAC_DIR / "azureml"

# The tag that marks an Azure ML run as a lakesight retraining: the job carries it, and
# handlers/retraining/runs.py acts on a RunCompleted event only when its runTags have it set to "true".
RETRAINING_TAG = "lakesight.retraining"
# Variables a retraining job must not be given: its definition is readable by everyone with access to
# the workspace. The lake's storage options can hold a service principal's secret; the GPU cluster reads
# the lake with its managed identity instead (docs/DEPLOY.md, section 4).
JOB_SECRET_VARIABLES = tuple(f"LAKESIGHT_{name.upper()}" for name in (*SECRET_FIELDS, "lake_storage_options"))


class SpecError(LakesightError, ValueError):
    """An infrastructure file is missing or does not describe a valid deployment."""


# ------------------------------------------------------------------------------------------------
# paths
def bicep_template() -> Path:
    """The Azure entry template (storage, Event Grid, Azure ML)."""
    return AZURE_DIR / "main.bicep"


def bicep_parameters() -> Path:
    """The ARM deployment parameters file for :func:`bicep_template` (holds no secret)."""
    return AZURE_DIR / "main.parameters.json"


def bicep_files() -> list[Path]:
    """Every Bicep file: the entry template first, then its modules."""
    return [bicep_template(), *sorted((AZURE_DIR / "modules").glob("*.bicep"))]


def bundle_path() -> Path:
    """The Databricks Asset Bundle's root file (``databricks bundle validate|deploy`` run beside it)."""
    return DATABRICKS_DIR / "databricks.yml"


def retrain_job_path() -> Path:
    """The Azure ML command job YAML for GPU retraining."""
    return AZUREML_DIR / "retrain-job.yml"


def online_endpoint_path() -> Path:
    """The Azure ML managed online endpoint of the model server."""
    return AZUREML_DIR / "online-endpoint.yml"


def online_deployment_path() -> Path:
    """The one online deployment definition (blue; green is it with the challenger alias)."""
    return AZUREML_DIR / "online-deployment.yml"


# ------------------------------------------------------------------------------------------------
# Azure ML
def load_retrain_job(
    *,
    delta_table: str | None = None,
    delta_version: int | None = None,
    compute: str | None = None,
    experiment_name: str | None = None,
    code: str | Path | None = None,
    launch_id: int | None = None,
    environment: Mapping[str, str] | None = None,
) -> Command:
    """Load the retraining command job with azure-ai-ml's own loader, with optional overrides.

    ``code`` is the folder uploaded as the job's snapshot; the YAML names the repository root, so a
    caller running from an installed package (not a checkout) must pass its own. ``launch_id`` (and
    ``delta_version``) become tags of the run; ``environment`` adds variables to the job's, and may
    hold no secret (:data:`JOB_SECRET_VARIABLES`). The returned job is ready for
    ``MLClient.jobs.create_or_update``; nothing is contacted here.
    """
    from azure.ai.ml import load_job
    from azure.ai.ml.entities import Command

    if leaked := sorted(set(environment or {}) & set(JOB_SECRET_VARIABLES)):
        raise SpecError(f"a retraining job's definition is readable by the workspace; not putting {leaked} in it")
    overrides = _retrain_overrides(delta_table, delta_version, compute, experiment_name, code)
    job = load_job(retrain_job_path(), params_override=overrides)
    if not isinstance(job, Command):
        raise SpecError(f"{retrain_job_path()} is a {type(job).__name__}, not a command job")
    _check_retrain_job(job)
    job.environment_variables = {**(job.environment_variables or {}), **(environment or {})}
    extra_tags = {"launch_id": launch_id, "delta_version": delta_version}
    job.tags = {**(job.tags or {}), **{k: str(v) for k, v in extra_tags.items() if v is not None}}
    return job


def _retrain_overrides(
    delta_table: str | None,
    delta_version: int | None,
    compute: str | None,
    experiment_name: str | None,
    code: str | Path | None,
) -> list[dict[str, Any]]:
    overrides: list[dict[str, Any]] = []
    if delta_table is not None:
        overrides.append({"inputs.delta_table.path": delta_table})
    if delta_version is not None:
        overrides.append({"inputs.delta_version": int(delta_version)})
    if compute is not None:
        overrides.append({"compute": compute if compute.startswith("azureml:") else f"azureml:{compute}"})
    if experiment_name is not None:
        overrides.append({"experiment_name": experiment_name})
    if code is not None:
        overrides.append({"code": str(Path(code).resolve())})
    return overrides


def _check_retrain_job(job: Command) -> None:
    for name in ("delta_table", "delta_version"):
        if name not in job.inputs or "${{inputs." + name + "}}" not in (job.command or ""):
            raise SpecError(f"retrain job must take input {name!r} and use it in its command")
    if str((job.tags or {}).get(RETRAINING_TAG, "")).lower() != "true":
        raise SpecError(
            f"retrain job must carry the tag {RETRAINING_TAG}: 'true' (handlers/retraining/runs.py acts on it)"
        )
