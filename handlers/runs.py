"""``RunCompleted`` of a retraining run: finish its launch and run the promotion check.

``lakesight train`` promotes by itself, wherever it runs, and tags the model version with its
decision. The check here makes sure a remote (Azure ML) run's version got a decision: it reports
the one already taken, or applies training's own rule (:func:`training.promotion.decide`) to the
version's recorded test accuracy when the run registered a version without deciding.
"""

from __future__ import annotations

import logging
from typing import Any

from handlers.azureml import RETRAINING_TAG
from handlers.policy import registry_exists
from infra import registry
from infra.settings import Settings

log = logging.getLogger(__name__)


def is_retraining_run(data: dict[str, Any]) -> bool:
    tags = data.get("runTags") or {}
    return isinstance(tags, dict) and str(tags.get(RETRAINING_TAG, "")).lower() == "true"


def _accuracy(version: Any, client: Any) -> float | None:
    """A version's test accuracy: its tag, else its run's ``test_accuracy``/``accuracy`` metric."""
    tag = (version.tags or {}).get(registry.TAG_ACCURACY)
    if tag:
        return float(tag)
    if not version.run_id:
        return None
    metrics = client.get_run(version.run_id).data.metrics
    value = metrics.get("test_accuracy", metrics.get("accuracy"))
    return float(value) if value is not None else None


def promotion_check(settings: Settings, run_id: str) -> dict[str, Any]:
    """Report or take the promotion decision for the model version ``run_id`` registered."""
    from training.promotion import decide

    if not registry_exists(settings):
        return {"promoted": False, "reason": "no model registry yet"}
    client = registry.client(settings)
    versions = [v for v in client.search_model_versions(f"name='{settings.model_name}'") if v.run_id == run_id]
    if not versions:
        return {"promoted": False, "reason": f"run {run_id} registered no version of {settings.model_name}"}
    challenger = max(versions, key=lambda v: int(v.version))
    version = str(challenger.version)
    taken = (challenger.tags or {}).get(registry.TAG_DECISION)
    if taken:
        current = registry.champion(settings)
        promoted = current is not None and str(current.version) == version
        return {"promoted": promoted, "model_version": version, "reason": f"decided by the run: {taken}"}
    current = registry.champion(settings)
    incumbent = None if current is None or str(current.version) == version else _accuracy(current, client)
    accuracy = _accuracy(challenger, client)
    if accuracy is None:
        return {"promoted": False, "model_version": version, "reason": "the run recorded no accuracy"}
    decision = decide(accuracy, incumbent, settings.promotion_margin)
    registry.set_alias(settings, decision.alias, version)
    registry.set_version_tags(settings, version, {registry.TAG_DECISION: decision.alias,
                                                  "promotion_reason": decision.reason})
    outcome = {"promoted": decision.promote, "model_version": version, "accuracy": accuracy,
               "champion_version": None if current is None else str(current.version),
               "champion_accuracy": incumbent, "reason": decision.reason}
    log.info("promotion check for run %s: %s", run_id, outcome)
    return outcome
