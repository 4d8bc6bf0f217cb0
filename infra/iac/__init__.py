"""Infrastructure as code: Azure Bicep, the Databricks Asset Bundle, the Azure ML retraining job and online endpoint.

The files live beside this module and ship with the package; :mod:`infra.iac.specs` finds, loads and
checks them offline.
"""

from infra.iac.specs import (
    LOCAL_ONLY_SPARK_CONF,
    RETRAINING_TAG,
    SpecError,
    bicep_files,
    bicep_outline,
    bicep_parameters,
    bicep_template,
    bundle_files,
    bundle_path,
    bundle_targets,
    load_bundle,
    load_databricks_job,
    load_online_deployment,
    load_online_endpoint,
    load_retrain_job,
    online_deployment_path,
    online_endpoint_path,
    retrain_job_path,
    task_order,
)

__all__ = [
    "LOCAL_ONLY_SPARK_CONF",
    "RETRAINING_TAG",
    "SpecError",
    "bicep_files",
    "bicep_outline",
    "bicep_parameters",
    "bicep_template",
    "bundle_files",
    "bundle_path",
    "bundle_targets",
    "load_bundle",
    "load_databricks_job",
    "load_online_deployment",
    "load_online_endpoint",
    "load_retrain_job",
    "online_deployment_path",
    "online_endpoint_path",
    "retrain_job_path",
    "task_order",
]
