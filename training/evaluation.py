"""Champion / challenger evaluation on the held-out split.

:func:`promote` evaluates the new version and the current champion on the same held-out rows,
both loaded through the registry as the raw-bytes classifiers the stream uses, then applies the
registry's rule (:func:`infra.core.promotion.promotion_decision`, written by
:func:`infra.core.promotion.record_promotion`), or only reports it on a dry run. A split winner becomes
``challenger`` while ``promotion_min_pairs`` > 0: live labels then decide (``infra.core.promotion``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from infra import registry
from infra.core import promotion
from infra.settings import Settings

log = logging.getLogger(__name__)


def accuracy(truth: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Share of rows predicted right (an unreadable row counts as wrong)."""
    if not truth:
        raise ValueError("no rows to evaluate on")
    return sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth)


@dataclass
class Evaluation:
    version: str
    accuracy: float
    predicted: list[str | None]


def evaluate_version(
    settings: Settings, version: str | int, contents: Sequence[bytes], truth: Sequence[str]
) -> Evaluation:
    """Accuracy of registered ``version`` on raw image bytes, through the registry."""
    classifier, resolved = registry.load_classifier(settings, version)
    predicted = list(classifier.classify(list(contents))["label"])
    return Evaluation(resolved, accuracy(truth, predicted), predicted)


@dataclass
class PromotionResult:
    version: str
    promoted: bool
    alias: str | None  # champion or challenger; None when rejected, or on a dry run (nothing was changed)
    accuracy: float
    champion_version: str | None
    champion_accuracy: float | None
    reason: str
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def promote(
    settings: Settings,
    version: str | int,
    contents: Sequence[bytes],
    truth: Sequence[str],
    *,
    new: Evaluation | None = None,
    dry_run: bool = False,
) -> PromotionResult:
    """Evaluate ``version`` and the champion on the same rows; move the aliases unless ``dry_run``.

    The decision and both scores are set as tags on the model version and, inside an active
    MLflow run, on the run.
    """
    import mlflow

    version = str(version)
    new = new or evaluate_version(settings, version, contents, truth)
    current = registry.champion_version(settings)
    champion_version = str(current.version) if current is not None and str(current.version) != version else None
    champion_accuracy = None
    if champion_version is not None:
        champion_accuracy = evaluate_version(settings, champion_version, contents, truth).accuracy
    decision = promotion.promotion_decision(
        new.accuracy, champion_accuracy, settings.promotion_margin, min_pairs=settings.promotion_min_pairs
    )
    tags = promotion.record_promotion(
        settings,
        version,
        decision,
        accuracy=new.accuracy,
        champion_version=champion_version,
        champion_accuracy=champion_accuracy,
        dry_run=dry_run,
    )
    label = tags[registry.TAG_DECISION]
    if mlflow.active_run() is not None:
        mlflow.set_tags(tags)
        metrics = {registry.TAG_ACCURACY: new.accuracy}
        if champion_accuracy is not None:
            metrics[registry.TAG_CHAMPION_ACCURACY] = champion_accuracy
        mlflow.log_metrics(metrics)
    log.info("model version %s: %s (%s)", version, label, decision.reason)
    return PromotionResult(
        version=version,
        promoted=decision.promote and not dry_run,
        alias=None if dry_run else decision.alias,
        accuracy=new.accuracy,
        champion_version=champion_version,
        champion_accuracy=champion_accuracy,
        reason=decision.reason,
        dry_run=dry_run,
    )
