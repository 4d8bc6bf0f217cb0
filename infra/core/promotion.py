"""Promotion on live evidence: the challenger against the champion on human labels, decided by McNemar's exact test.

A challenger (a version that beat the champion on the test split, :mod:`infra.registry`) is
shadow-scored by the stream beside the champion. Each human-labeled image that both scored is a
pair: the champion of the time answered ``predicted_label``, the challenger ``shadow_label``.
Only the discordant pairs tell the two apart: ``b`` (champion right, challenger wrong) and ``c``
(the reverse). Were they equally good, ``b`` would follow Binomial(b + c, 1/2), so the exact
one-sided p-value that the challenger is worse is P(X >= b).

The rule (:func:`judge`): fewer than ``promotion_min_pairs`` discordant pairs → ``waiting``;
``p < promotion_alpha`` with ``b > c`` → ``refused`` (the challenger alias goes, the champion
stays); otherwise → ``promoted`` (the champion alias moves to the challenger, which records the
champion it replaced, so a rollback goes back to it).

:func:`assess` reads the evidence and changes nothing (the status snapshot); :func:`decide` also
applies the outcome and records it: one ``promotion_decisions`` row per change of tally or outcome
(the row's key is made of both, so a label event that changed nothing adds nothing), tags on the
challenger's model version and metrics on its run. The handlers decide after every label merge;
``lakesight models decide`` on demand.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from infra import registry
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES, LABEL_SOURCE_HUMAN, PROMOTION_DECISIONS

log = logging.getLogger(__name__)

WAITING = "waiting"
PROMOTED = "promoted"
REFUSED = "refused"
PAIR_COLUMNS = ["label", "predicted_label", "shadow_label"]


@dataclass(frozen=True)
class Tally:
    """The paired outcomes of one challenger on human-labeled images."""

    both_right: int = 0
    both_wrong: int = 0
    b: int = 0  # champion right, challenger wrong
    c: int = 0  # challenger right, champion wrong

    @property
    def pairs(self) -> int:
        """The discordant pairs: the only ones that tell the two models apart."""
        return self.b + self.c


def mcnemar_worse_p(b: int, c: int) -> float:
    """Exact one-sided McNemar p-value that the challenger is worse: P(X >= b), X ~ Binomial(b + c, 1/2).

    Integer arithmetic up to the one division, so the value is exact to the float's precision.
    """
    n = b + c
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n


def judge(tally: Tally, *, alpha: float, min_pairs: int) -> tuple[str, float, str]:
    """``(outcome, p-value, reason)`` for ``tally``: waiting, refused or promoted."""
    p = mcnemar_worse_p(tally.b, tally.c)
    if tally.pairs < min_pairs:
        return WAITING, p, f"waiting for live evidence: {tally.pairs} of {min_pairs} discordant pairs"
    figures = f"b={tally.b}, c={tally.c}, p={p:.4g}"
    if p < alpha and tally.b > tally.c:
        return REFUSED, p, f"refused: worse on live labels ({figures} < {alpha})"
    return PROMOTED, p, f"promoted: not worse on live labels ({figures}, alpha {alpha})"


def tally(pairs: pa.Table) -> Tally:
    """The tally of rows with ``label``, ``predicted_label`` and ``shadow_label`` (rows missing one are left out)."""
    complete = pc.and_(
        pc.and_(pc.is_valid(pairs.column("label")), pc.is_valid(pairs.column("predicted_label"))),
        pc.is_valid(pairs.column("shadow_label")),
    )
    rows = pairs.filter(complete)
    champion = pc.equal(rows.column("label"), rows.column("predicted_label"))
    challenger = pc.equal(rows.column("label"), rows.column("shadow_label"))

    def count(first: Any, second: Any) -> int:
        return int(pc.sum(pc.and_(first, second)).as_py() or 0)

    return Tally(
        both_right=count(champion, challenger),
        both_wrong=count(pc.invert(champion), pc.invert(challenger)),
        b=count(champion, pc.invert(challenger)),
        c=count(pc.invert(champion), challenger),
    )


def live_pairs(lake: Lake, version: str) -> pa.Table:
    """The human-labeled rows of ``images`` that ``version`` shadow-scored (empty before any was)."""
    if not lake.exists(IMAGES):
        return pa.table({name: pa.array([], pa.string()) for name in PAIR_COLUMNS})
    present = {f.name for f in lake.table(IMAGES).schema().fields}
    if "shadow_model_version" not in present:  # a table from before shadow scoring: nothing scored yet
        return pa.table({name: pa.array([], pa.string()) for name in PAIR_COLUMNS})
    wanted = (ds.field("label_source") == LABEL_SOURCE_HUMAN) & (ds.field("shadow_model_version") == version)
    return lake.read(IMAGES, columns=PAIR_COLUMNS, filters=wanted)


@dataclass(frozen=True)
class LiveDecision:
    challenger_version: str
    champion_version: str | None
    split_accuracy: float | None
    champion_split_accuracy: float | None
    tally: Tally
    p_value: float
    alpha: float
    min_pairs: int
    outcome: str
    reason: str
    run_id: str = ""  # the challenger's training run (its metrics get the evidence)
    decided_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    recorded: bool = False  # decide() wrote it now (False: the same evidence was recorded before)

    @property
    def decision_id(self) -> str:
        """The challenger, its tally and the outcome: the same evidence is the same row."""
        t = self.tally
        return f"{self.challenger_version}:{t.b}:{t.c}:{t.both_right}:{t.both_wrong}:{self.outcome}"

    def row(self) -> dict[str, Any]:
        """The ``promotion_decisions`` row."""
        t = self.tally
        return {
            "decision_id": self.decision_id,
            "decided_at": self.decided_at,
            "challenger_version": self.challenger_version,
            "champion_version": self.champion_version,
            "split_accuracy": self.split_accuracy,
            "champion_split_accuracy": self.champion_split_accuracy,
            "pairs": t.pairs,
            "b": t.b,
            "c": t.c,
            "both_right": t.both_right,
            "both_wrong": t.both_wrong,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "min_pairs": self.min_pairs,
            "outcome": self.outcome,
            "reason": self.reason,
        }

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (the CLI, the handlers' outcome, the status snapshot)."""
        return {**self.row(), "decided_at": self.decided_at.isoformat(), "recorded": self.recorded}


def _accuracy(tags: dict[str, str], key: str) -> float | None:
    try:
        return float(tags[key]) if tags.get(key) else None
    except ValueError:
        return None


def assess(settings: Settings, lake: Lake) -> LiveDecision | None:
    """The live evidence on the current challenger and what it would decide; None without a challenger.

    Reads only: the registry (none is created) and ``images``.
    """
    if not registry.registry_exists(settings):
        return None
    challenger = registry.version_by_alias(settings, registry.CHALLENGER)
    if challenger is None:
        return None
    version = str(challenger.version)
    current = registry.champion_version(settings)
    evidence = tally(live_pairs(lake, version))
    outcome, p, reason = judge(evidence, alpha=settings.promotion_alpha, min_pairs=settings.promotion_min_pairs)
    tags = dict(challenger.tags or {})
    return LiveDecision(
        challenger_version=version,
        champion_version=None if current is None else str(current.version),
        split_accuracy=_accuracy(tags, registry.TAG_ACCURACY),
        champion_split_accuracy=_accuracy(tags, registry.TAG_CHAMPION_ACCURACY),
        tally=evidence,
        p_value=p,
        alpha=settings.promotion_alpha,
        min_pairs=settings.promotion_min_pairs,
        outcome=outcome,
        reason=reason,
        run_id=challenger.run_id or "",
    )


def _recorded(lake: Lake, decision_id: str) -> bool:
    if not lake.exists(PROMOTION_DECISIONS):
        return False
    found = lake.read(PROMOTION_DECISIONS, columns=["decision_id"], filters=ds.field("decision_id") == decision_id)
    return found.num_rows > 0


def _track(settings: Settings, decision: LiveDecision) -> None:
    """The evidence as tags on the challenger's model version and metrics (and a tag) on its run."""
    t = decision.tally
    registry.set_version_tags(
        settings,
        decision.challenger_version,
        {
            registry.TAG_LIVE_B: t.b,
            registry.TAG_LIVE_C: t.c,
            registry.TAG_LIVE_P_VALUE: f"{decision.p_value:.6g}",
            registry.TAG_LIVE_DECISION: decision.outcome,
            registry.TAG_LIVE_REASON: decision.reason,
        },
    )
    if not decision.run_id:
        return
    mlflow_client = registry.client(settings)
    # The step is the number of discordant pairs: the run's charts show the evidence growing.
    metrics = {registry.TAG_LIVE_B: t.b, registry.TAG_LIVE_C: t.c, registry.TAG_LIVE_P_VALUE: decision.p_value}
    for key, value in metrics.items():
        mlflow_client.log_metric(decision.run_id, key, float(value), step=t.pairs)
    mlflow_client.set_tag(decision.run_id, registry.TAG_LIVE_DECISION, decision.outcome)


def _apply(settings: Settings, decision: LiveDecision) -> None:
    """Move the aliases for a final outcome (both writes do nothing once the challenger alias is gone)."""
    if decision.outcome == PROMOTED:
        promote_challenger(settings, decision.challenger_version)
    elif decision.outcome == REFUSED:
        refuse_challenger(settings, decision.challenger_version)


def decide(settings: Settings, lake: Lake) -> LiveDecision | None:
    """Assess the challenger, record the evidence when it changed, and apply a final outcome.

    The row and the tags are written before the aliases move, and the aliases are moved whenever
    the challenger still holds its alias: a decision cut short between the two is completed by
    the next call, never lost.
    """
    decision = assess(settings, lake)
    if decision is None:
        return None
    if not _recorded(lake, decision.decision_id):
        _track(settings, decision)
        lake.merge(PROMOTION_DECISIONS, pa.Table.from_pylist([decision.row()], schema=PROMOTION_DECISIONS.schema))
        decision = replace(decision, recorded=True)
        log.info("challenger version %s: %s", decision.challenger_version, decision.reason)
    _apply(settings, decision)
    return decision


def recent_decisions(lake: Lake, limit: int = 10) -> list[dict[str, Any]]:
    """The latest ``promotion_decisions`` rows, newest first, as plain values."""
    if not lake.exists(PROMOTION_DECISIONS):
        return []
    rows = lake.read(PROMOTION_DECISIONS).to_pylist()
    rows.sort(key=lambda r: str(r["decided_at"]), reverse=True)
    return [{k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in r.items()} for r in rows[:limit]]


# The split rule, its record, and moving the aliases ----------------------------------------------
@dataclass(frozen=True)
class PromotionDecision:
    promote: bool  # the version becomes champion now
    alias: str | None  # the alias it gets: champion, challenger, or None (rejected)
    reason: str

    @property
    def decision(self) -> str:
        """What its ``promotion_decision`` tag says: the alias it got, or ``rejected``."""
        return self.alias or registry.REJECTED


def promotion_decision(
    new_accuracy: float, champion_accuracy: float | None, margin: float, *, min_pairs: int
) -> PromotionDecision:
    """The split rule: the first model becomes champion; a later one must beat ``champion + margin``.

    Ties never win. A winner becomes champion at once when ``min_pairs`` is 0, else challenger:
    live labels decide then (``infra.core.promotion``). A loser gets no alias.
    """
    if champion_accuracy is None:
        return PromotionDecision(True, registry.CHAMPION, "no champion yet")
    compared = f"{new_accuracy:.4f} {{}} champion {champion_accuracy:.4f} by more than {margin}"
    if new_accuracy <= champion_accuracy + margin:
        return PromotionDecision(False, None, compared.format("does not beat"))
    if min_pairs == 0:
        return PromotionDecision(True, registry.CHAMPION, compared.format("beats"))
    waits = f"; challenger until live labels give {min_pairs} discordant pairs"
    return PromotionDecision(False, registry.CHALLENGER, compared.format("beats") + waits)


def record_promotion(
    settings: Settings,
    version: str | int,
    decision: PromotionDecision,
    *,
    accuracy: float,
    champion_version: str | None,
    champion_accuracy: float | None,
    dry_run: bool = False,
) -> dict[str, str]:
    """Apply ``decision`` to ``version`` (its alias, unless ``dry_run``) and tag the version with it.

    A challenger still waiting is superseded when another version takes its alias or the champion
    moves (its split comparison was with the old champion). Returns the tags written, so a caller
    can copy them onto its MLflow run.
    """
    if not dry_run and decision.alias is not None:
        waiting = registry.version_by_alias(settings, registry.CHALLENGER)
        registry.set_alias(settings, decision.alias, version)
        if waiting is not None and str(waiting.version) != str(version):
            _supersede(settings, str(waiting.version), by=str(version), alias=decision.alias)
    tags = {
        registry.TAG_ACCURACY: f"{accuracy:.6f}",
        registry.TAG_CHAMPION_ACCURACY: "" if champion_accuracy is None else f"{champion_accuracy:.6f}",
        registry.TAG_DECISION: ("would be " if dry_run else "") + decision.decision,
        registry.TAG_CHAMPION_VERSION: champion_version or "",
        registry.TAG_REASON: decision.reason,
    }
    registry.set_version_tags(settings, version, tags)
    return tags


def _supersede(settings: Settings, waiting: str, *, by: str, alias: str) -> None:
    if alias == registry.CHAMPION:  # the alias still names the old challenger: it must stop being shadow-scored
        registry.drop_alias(settings, registry.CHALLENGER, waiting)
    reason = f"version {by} became {alias} while this one waited for live evidence"
    registry.set_version_tags(
        settings, waiting, {registry.TAG_DECISION: registry.SUPERSEDED, registry.TAG_LIVE_REASON: reason}
    )


def promote_challenger(settings: Settings, version: str) -> str | None:
    """Make the waiting challenger ``version`` champion on live evidence; return the champion it replaced.

    The replaced champion is recorded on ``version`` (``champion_version``), so :func:`rollback`
    goes back to it; the challenger alias goes, so the stream stops shadow-scoring.
    """
    current = registry.champion_version(settings)
    previous = None if current is None else str(current.version)
    registry.set_alias(settings, registry.CHAMPION, version)
    registry.drop_alias(settings, registry.CHALLENGER, version)
    registry.set_version_tags(
        settings, version, {registry.TAG_DECISION: registry.CHAMPION, registry.TAG_CHAMPION_VERSION: previous or ""}
    )
    return previous


def refuse_challenger(settings: Settings, version: str) -> None:
    """Take the challenger alias from ``version``, worse on live labels; the champion stays."""
    registry.drop_alias(settings, registry.CHALLENGER, version)
    registry.set_version_tags(settings, version, {registry.TAG_DECISION: registry.REFUSED})


@dataclass(frozen=True)
class Rollback:
    from_version: str
    to_version: str
    reason: str


def rollback(settings: Settings, *, reason: str, to: str | int | None = None) -> Rollback:
    """Move ``champion`` back to ``to`` (default: the champion the current one was promoted over).

    The version rolled back from gets a ``rolled_back`` tag (time, target, reason); every process
    that follows the alias (the stream's workers, the model server) picks the target up within
    ``champion_check_s``.
    """
    if not reason.strip():
        raise registry.RegistryError("a rollback needs a reason (--reason)")
    current = registry.champion_version(settings)
    if current is None:
        raise registry.RegistryError(f"model {settings.model_name!r} has no {registry.CHAMPION!r} version to roll back")
    target = str(to) if to is not None else (current.tags or {}).get(registry.TAG_CHAMPION_VERSION, "")
    if not target:
        raise registry.RegistryError(
            f"version {current.version} records no previous champion: name one with --to VERSION"
        )
    if target == str(current.version):
        raise registry.RegistryError(f"version {target} is already the champion")
    if target not in {row.version for row in registry.versions(settings)}:
        raise registry.RegistryError(f"model {settings.model_name!r} has no version {target}")
    registry.set_alias(settings, registry.CHAMPION, target)
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    registry.set_version_tags(
        settings, current.version, {registry.TAG_ROLLED_BACK: f"{stamp} to version {target}: {reason.strip()}"}
    )
    return Rollback(str(current.version), target, reason.strip())
