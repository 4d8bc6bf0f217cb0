"""The retraining policy: measure what changed since the champion was trained, decide, record.

Metrics, each against a configurable threshold:

* ``new_labels``: human labels in ``images`` now that were not in the snapshot the champion was
  trained on (its model version's ``delta_version`` tag, read through :mod:`infra.registry`); all
  human labels when there is no champion;
* ``psi`` (and ``js``, recorded): *label shift*, the class mix of the new labels against the
  champion's training labels (reason ``label_shift``; ``retrain_label_shift_threshold``). *Image
  drift* is the stream's word for its own windows (docs/DRIFT.md); it reaches this policy as a drift
  event (reason ``image_drift``);
* ``champion_accuracy``: predicted vs human label on the newly labeled images that were scored.

Every decision is one row of the ``retraining_decisions`` Delta table keyed by its trigger id, so a
replayed trigger neither adds a row nor launches twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from infra import registry
from infra.core.drift import EPSILON, psi
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES, LABEL_SOURCE_HUMAN, RETRAINING_DECISIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainPolicy:
    """The thresholds the retraining decision reads (built from settings by the handlers' service)."""

    min_new_labels: int
    label_shift_psi: float  # new labels' class mix vs the champion's training labels
    drift_score: float  # the score an image-drift or dataset-drift event must reach (the same setting)
    min_accuracy: float
    min_sample: int

    @classmethod
    def of(cls, settings: Settings) -> RetrainPolicy:
        return cls(
            min_new_labels=settings.retrain_min_new_labels,
            label_shift_psi=settings.retrain_label_shift_threshold,
            drift_score=settings.retrain_label_shift_threshold,
            min_accuracy=settings.retrain_min_accuracy,
            min_sample=settings.retrain_min_sample,
        )


@dataclass
class Metrics:
    delta_version: int
    champion_version: str | None = None
    champion_delta_version: int | None = None
    new_labels: int = 0
    psi: float | None = None
    js: float | None = None
    champion_accuracy: float | None = None
    accuracy_sample: int = 0
    dataset_drift: float | None = None
    image_drift: bool = False  # the stream's drift monitor saw the images drift (docs/DRIFT.md)
    new_distribution: dict[str, int] = field(default_factory=dict)


@dataclass
class RetrainDecision:
    decision_id: str
    trigger: str
    metrics: Metrics
    retrain: bool
    reasons: list[str]
    launch: str = "none"

    def row(self, policy: RetrainPolicy) -> dict[str, object]:
        metrics = asdict(self.metrics)
        metrics.pop("new_distribution")
        metrics.pop("image_drift")  # in ``reasons`` when it fired
        return {
            "decision_id": self.decision_id,
            "trigger": self.trigger,
            "decided_at": dt.datetime.now(dt.UTC),
            **metrics,
            "min_new_labels": policy.min_new_labels,
            "drift_threshold": policy.label_shift_psi,  # the table's column keeps its first name
            "min_accuracy": policy.min_accuracy,
            "min_sample": policy.min_sample,
            "retrain": self.retrain,
            "reasons": ",".join(self.reasons),
            "launch": self.launch,
        }


# Distribution distances -------------------------------------------------------------------------
def _probabilities(counts: Counter, classes: list[str]) -> list[float]:
    total = sum(counts.values())
    raw = [counts.get(c, 0) / total + EPSILON for c in classes]
    norm = sum(raw)
    return [p / norm for p in raw]


def jensen_shannon(base: Counter, new: Counter) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) between two class-count distributions."""
    classes = sorted(set(base) | set(new))
    p, q = _probabilities(base, classes), _probabilities(new, classes)
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(x: list[float], y: list[float]) -> float:
        return sum(a * math.log2(a / b) for a, b in zip(x, y, strict=True) if a > 0)

    return (kl(p, m) + kl(q, m)) / 2


# Champion ---------------------------------------------------------------------------------------
def champion_training_version(settings: Settings) -> tuple[str | None, int | None]:
    """``(model version, training Delta version)`` of the champion, or ``(None, None)`` without one.

    The version's tags are read through :func:`infra.registry.versions`, which owns their meaning;
    a champion whose Delta version tag is missing or not an integer gives ``(version, None)``.
    """
    if not registry.registry_exists(settings):
        return None, None
    current = next((row for row in registry.versions(settings) if registry.CHAMPION in row.aliases), None)
    if current is None:
        return None, None
    if current.delta_version is None and registry.TAG_DELTA_VERSION in current.tags:
        tag = current.tags[registry.TAG_DELTA_VERSION]
        log.warning("champion version %s has a non-integer %s tag %r", current.version, registry.TAG_DELTA_VERSION, tag)
    return current.version, current.delta_version


# Metrics ----------------------------------------------------------------------------------------
def measure(
    settings: Settings, lake: Lake, *, dataset_drift: float | None = None, image_drift: bool = False
) -> Metrics:
    """The policy's metrics for the latest ``images`` snapshot.

    Bounded reads: only the human-labeled rows (a few per labeling budget, never the whole table)
    and, at the champion's version, the label column alone; new labels are found by an Arrow join
    on ``path``, not by Python rows of every image.
    """
    lake.images()
    version = lake.version(IMAGES)
    current = _human_labels(lake, version, ["path", "label", "predicted_label"])
    champion_version, champion_delta = champion_training_version(settings)
    metrics = Metrics(
        delta_version=version,
        champion_version=champion_version,
        champion_delta_version=champion_delta,
        dataset_drift=dataset_drift,
        image_drift=image_drift,
    )
    base: Counter[str] = Counter()
    new_rows = current
    if champion_delta is not None:
        try:
            base = _label_counts(lake.read(IMAGES, version=champion_delta, columns=["label"]).column("label"))
            trained = _human_labels(lake, champion_delta, ["path", "label"])
        except Exception as exc:  # noqa: BLE001 - delta-rs raises its own error types for a vacuumed version
            log.warning("cannot read images@%s (champion's training data): %s", champion_delta, exc)
            base, trained = Counter(), None
        if trained is not None and trained.num_rows:
            new_rows = _changed_labels(current, trained)
    metrics.new_labels = new_rows.num_rows
    new = _label_counts(new_rows.column("label"))
    metrics.new_distribution = dict(new)
    if base and new:
        metrics.psi = psi(base, new)
        metrics.js = jensen_shannon(base, new)
    scored = new_rows.filter(pc.is_valid(new_rows.column("predicted_label")))
    metrics.accuracy_sample = scored.num_rows
    if scored.num_rows:
        right = pc.sum(pc.cast(pc.equal(scored.column("predicted_label"), scored.column("label")), pa.int64()))
        metrics.champion_accuracy = right.as_py() / scored.num_rows
    return metrics


def _human_labels(lake: Lake, version: int, columns: list[str]) -> pa.Table:
    """The rows of ``images@version`` a human labeled (only ``columns``), filtered by the reader."""
    human = (pc.field("label_source") == LABEL_SOURCE_HUMAN) & pc.field("label").is_valid()
    # The filter's column is read too: the legacy stack's reader filters after projecting.
    rows = lake.read(IMAGES, version=version, columns=[*columns, "label_source"], filters=human)
    return rows.drop_columns(["label_source"])


def _label_counts(labels: pa.ChunkedArray) -> Counter[str]:
    counts = pc.value_counts(labels.drop_null()) if len(labels) else []
    return Counter({item["values"].as_py(): item["counts"].as_py() for item in counts})


def _changed_labels(current: pa.Table, trained: pa.Table) -> pa.Table:
    """The rows of ``current`` whose human label the champion did not train on (new, or changed)."""
    before = trained.rename_columns(["path", "trained_label"])
    joined = current.join(before, keys="path", join_type="left outer")
    same = pc.fill_null(pc.equal(joined.column("label"), joined.column("trained_label")), False)
    return joined.filter(pc.invert(same)).drop_columns(["trained_label"])


def decide_retraining(policy: RetrainPolicy, metrics: Metrics) -> tuple[bool, list[str]]:
    """Whether to retrain, and which rules fired. Pure: thresholds come from ``policy``."""
    reasons = []
    if metrics.new_labels >= policy.min_new_labels:
        reasons.append("new_labels")
    enough = metrics.new_labels >= policy.min_sample
    if enough and metrics.psi is not None and metrics.psi >= policy.label_shift_psi:
        reasons.append("label_shift")
    if (
        metrics.accuracy_sample >= policy.min_sample
        and metrics.champion_accuracy is not None
        and metrics.champion_accuracy < policy.min_accuracy
    ):
        reasons.append("accuracy")
    if metrics.dataset_drift is not None and metrics.dataset_drift >= policy.drift_score:
        reasons.append("image_drift" if metrics.image_drift else "dataset_drift")
    # Retraining on exactly the data the champion saw cannot help, whatever fired.
    return bool(reasons) and metrics.new_labels > 0, reasons


def evaluate(
    settings: Settings,
    lake: Lake,
    *,
    decision_id: str,
    trigger: str,
    request_launch: Callable[[str, str, int], str] | None = None,
    dataset_drift: float | None = None,
    image_drift: bool = False,
) -> RetrainDecision:
    """Measure, decide, ask the launcher when retraining is due, and record the decision once."""
    metrics = measure(settings, lake, dataset_drift=dataset_drift, image_drift=image_drift)
    policy = RetrainPolicy.of(settings)
    retrain, reasons = decide_retraining(policy, metrics)
    decision = RetrainDecision(
        decision_id=decision_id, trigger=trigger, metrics=metrics, retrain=retrain, reasons=reasons
    )
    if retrain and request_launch is not None:
        decision.launch = request_launch(decision_id, ",".join(reasons), metrics.delta_version)
    rows = pa.Table.from_pylist([decision.row(policy)], schema=RETRAINING_DECISIONS.schema)
    lake.merge(RETRAINING_DECISIONS, rows)
    log.info(
        "retraining decision %s (%s): retrain=%s reasons=%s new_labels=%d psi=%s accuracy=%s launch=%s",
        decision_id,
        trigger,
        retrain,
        reasons,
        metrics.new_labels,
        metrics.psi,
        metrics.champion_accuracy,
        decision.launch,
    )
    return decision
