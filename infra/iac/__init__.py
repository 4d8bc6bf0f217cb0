"""Infrastructure as code: Azure Bicep, the Databricks Asset Bundle, the Azure ML retraining job and online endpoint.

The files live beside this module and ship with the package; :mod:`infra.iac.specs` finds them and
loads the retraining job (the offline checks are test code, ``tests/infra/iac/specs.py``).
"""

from infra.iac.specs import (
    JOB_SECRET_VARIABLES,
    RETRAINING_TAG,
    SpecError,
    bicep_files,
    bicep_parameters,
    bicep_template,
    bundle_path,
    load_retrain_job,
    online_deployment_path,
    online_endpoint_path,
    retrain_job_path,
)

__all__ = [
    "JOB_SECRET_VARIABLES",
    "RETRAINING_TAG",
    "SpecError",
    "bicep_files",
    "bicep_parameters",
    "bicep_template",
    "bundle_path",
    "load_retrain_job",
    "online_deployment_path",
    "online_endpoint_path",
    "retrain_job_path",
]
