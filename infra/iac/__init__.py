"""Infrastructure as code: Azure Bicep, the Databricks Asset Bundle and the Azure ML retraining job.

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
    load_retrain_job,
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
    "load_retrain_job",
    "retrain_job_path",
    "task_order",
]
