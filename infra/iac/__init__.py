"""Infrastructure as code: Azure Bicep, Databricks Jobs JSON and the Azure ML retraining job.

The files live beside this module and ship with the package; :mod:`infra.iac.specs` finds, loads and
checks them offline.
"""

from infra.iac.specs import (
    SpecError,
    bicep_files,
    bicep_outline,
    bicep_parameters,
    bicep_template,
    databricks_job_path,
    load_databricks_job,
    load_retrain_job,
    retrain_job_path,
    task_order,
)

__all__ = [
    "SpecError",
    "bicep_files",
    "bicep_outline",
    "bicep_parameters",
    "bicep_template",
    "databricks_job_path",
    "load_databricks_job",
    "load_retrain_job",
    "retrain_job_path",
    "task_order",
]
