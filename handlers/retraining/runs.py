"""``RunCompleted`` of a retraining run: finish its launch and run the promotion check.

``lakesight train`` promotes by itself, wherever it runs, and tags the model version with its
decision. The check here makes sure a remote (Azure ML) run's version got a decision: it reports
the one already taken, or applies the registry's rule (:func:`infra.core.promotion.promotion_decision`)
to the version's recorded test accuracy when the run registered a version without deciding. A split
winner may become ``challenger`` and wait for live labels (``infra.core.promotion``).
"""

from __future__ import annotations

import logging
from typing import Any

from infra import registry
from infra.core import promotion
from infra.iac import RETRAINING_TAG
from infra.settings import Settings

log = logging.getLogger(__name__)


# RunStatusChanged statuses that end a run without a model: the launch that submitted it is failed.
FAILED_RUN_STATUSES = frozenset({"Failed", "Canceled", "NotResponding"})


def failed_status(data: dict[str, Any]) -> str | None:
    """The run's status from a RunStatusChanged event when it ended the run without success, else None."""
    status = str(data.get("runStatus") or "")
    return status if status in FAILED_RUN_STATUSES else None


def is_retraining_run(data: dict[str, Any]) -> bool:
    tags = data.get("runTags") or {}
    return isinstance(tags, dict) and str(tags.get(RETRAINING_TAG, "")).lower() == "true"


def _accuracy(version: registry.VersionRow, client: Any) -> float | None:
    """A version's test accuracy: its tag, else its run's ``test_accuracy`` (or plain ``accuracy``) metric."""
    if version.accuracy is not None:
        return version.accuracy
    if not version.run_id:
        return None
    metrics = client.get_run(version.run_id).data.metrics
    value = metrics.get(registry.TAG_ACCURACY, metrics.get("accuracy"))
    return float(value) if value is not None else None


def promotion_check(settings: Settings, run_id: str) -> dict[str, Any]:
    """Report or take the promotion decision for the model version ``run_id`` registered."""
    if not registry.registry_exists(settings):
        return {"promoted": False, "reason": "no model registry yet"}
    rows = registry.versions(settings)
    registered = [row for row in rows if row.run_id == run_id]
    if not registered:
        return {"promoted": False, "reason": f"run {run_id} registered no version of {settings.model_name}"}
    challenger = registered[0]  # newest first
    champion = next((row for row in rows if registry.CHAMPION in row.aliases), None)
    taken = challenger.tags.get(registry.TAG_DECISION)
    if taken:
        promoted = champion is not None and champion.version == challenger.version
        return {"promoted": promoted, "model_version": challenger.version, "reason": f"decided by the run: {taken}"}
    return _decide(settings, challenger, champion)


def _decide(
    settings: Settings, challenger: registry.VersionRow, champion: registry.VersionRow | None
) -> dict[str, Any]:
    mlflow_client = registry.client(settings)
    accuracy = _accuracy(challenger, mlflow_client)
    if accuracy is None:
        return {"promoted": False, "model_version": challenger.version, "reason": "the run recorded no accuracy"}
    compared = champion is not None and champion.version != challenger.version
    incumbent = _accuracy(champion, mlflow_client) if champion is not None and compared else None
    decision = promotion.promotion_decision(
        accuracy, incumbent, settings.promotion_margin, min_pairs=settings.promotion_min_pairs
    )
    champion_version = None if champion is None else champion.version
    promotion.record_promotion(
        settings,
        challenger.version,
        decision,
        accuracy=accuracy,
        champion_version=champion_version,
        champion_accuracy=incumbent,
    )
    outcome = {
        "promoted": decision.promote,
        "decision": decision.decision,
        "model_version": challenger.version,
        "accuracy": accuracy,
        "champion_version": champion_version,
        "champion_accuracy": incumbent,
        "reason": decision.reason,
    }
    log.info("promotion check for run %s: %s", challenger.run_id, outcome)
    return outcome
