"""``RunCompleted`` of a retraining run: finish its launch and run the promotion check.

The local backend's ``lakesight train`` promotes by itself; a remote (Azure ML) run reports back
through this event, and the check here compares the run's registered model version with the
champion using the same rule: accuracy at least the champion's plus ``promotion_margin``.
"""

from __future__ import annotations

import logging
from typing import Any

from handlers.azureml import RETRAINING_TAG
from handlers.policy import CHAMPION_ALIAS, champion, registry_exists
from infra.settings import Settings

log = logging.getLogger(__name__)


def is_retraining_run(data: dict[str, Any]) -> bool:
    tags = data.get("runTags") or {}
    return isinstance(tags, dict) and str(tags.get(RETRAINING_TAG, "")).lower() == "true"


def _accuracy(client: Any, run_id: str | None) -> float | None:
    if not run_id:
        return None
    metrics = client.get_run(run_id).data.metrics
    value = metrics.get("accuracy", metrics.get("val_accuracy"))
    return float(value) if value is not None else None


def should_promote(challenger: float | None, incumbent: float | None, margin: float) -> bool:
    """Promotion rule: a challenger with an accuracy beats no champion, else needs ``margin`` more."""
    if challenger is None:
        return False
    return incumbent is None or challenger >= incumbent + margin


def promotion_check(settings: Settings, run_id: str) -> dict[str, Any]:
    """Promote the model version registered by ``run_id`` when it beats the champion."""
    if not registry_exists(settings):
        return {"promoted": False, "reason": "no model registry yet"}
    from mlflow import MlflowClient

    uri = settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = [v for v in client.search_model_versions(f"name='{settings.model_name}'") if v.run_id == run_id]
    if not versions:
        return {"promoted": False, "reason": f"run {run_id} registered no version of {settings.model_name}"}
    challenger = max(versions, key=lambda v: int(v.version))
    champion_version, _ = champion(settings)
    incumbent = None
    if champion_version is not None:
        incumbent = _accuracy(client, client.get_model_version(settings.model_name, champion_version).run_id)
    accuracy = _accuracy(client, run_id)
    promoted = should_promote(accuracy, incumbent, settings.promotion_margin)
    if promoted:
        client.set_registered_model_alias(settings.model_name, CHAMPION_ALIAS, challenger.version)
    outcome = {"promoted": promoted, "model_version": str(challenger.version), "accuracy": accuracy,
               "champion_version": champion_version, "champion_accuracy": incumbent}
    log.info("promotion check for run %s: %s", run_id, outcome)
    return outcome
