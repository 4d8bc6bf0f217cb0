"""Labeling hand-off: the images worth a label go to the labeling container with a JSONL manifest.

Used by the scoring stream (each micro-batch, inside foreachBatch) and by the model server for
unsure online images (``LAKESIGHT_ONLINE_TO_LABELING``): one hand-off, one ledger, one budget.

An unsure image (confidence under the threshold, sampled, never sent) becomes a *candidate*.
Candidates wait in ``labeling_candidates`` until their window (``labeling_window_s``) closes;
then they compete: the strategy (``infra.core.labeling.strategies``) chooses as many as the window
may spend, which is its share of the daily budget plus what earlier windows of the day left
(the pacing of docs/LABELING.md). Every candidate gets an outcome: sent, near_duplicate,
class_capped or not_chosen. With ``labeling_window_s=0`` each micro-batch is its own window,
within the daily budget alone.

The ``labeling_requests`` ledger (Delta, one row per image ever sent, partitioned by the budget
day) is the record of what was sent: it makes "never send twice" a cheap lookup and a day's
spend one partition count. The hand-off runs in foreachBatch *before* the ``images`` MERGE and is
idempotent under replay:

* selection is deterministic (ties broken by path, the random strategy by a hash of the path);
* blob and manifest names are deterministic, so a replay overwrites, never duplicates;
* the ledger and queue writes carry ``(app_id, batch_id)``: a replayed batch whose ledger write
  already committed reuses that selection instead of choosing again; outcome and ``images``
  marks are MERGEs that only fill what is still empty, so repeating them changes nothing.

A window's close writes, in order: the queue (candidates), the blobs and manifest, the ledger, the
candidates' outcomes, the ``images`` marks of picks from earlier batches (the caller's ``images``
MERGE comes last). A kill before the ledger commit is replayed as a fresh choice; a kill after it
is finished by the replay from the ledger (:func:`_replayed`), so the candidates and their outcomes
always agree with what was sent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import posixpath
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infra.core.labeling import phases, pixels, strategies
from infra.hashing import stable_fraction
from infra.lake import Lake, Transaction
from infra.settings import Settings
from infra.tables import IMAGES, LABELING_CANDIDATES, LABELING_REQUESTS, TS

log = logging.getLogger(__name__)

DAY_S = 86400
# Near-duplicates are looked for among the images sent in this many recent days.
KNOWN_DAYS = 30
_QUEUE = "/queue"  # the candidates table's transaction id: ``<app_id>/queue``
# Per lake root: the window start of the last look for closed windows. A window can only close
# at a window boundary, so one look per window (per process) finds every closed one.
_last_look: dict[str, dt.datetime] = {}
_fallback_said: set[str] = set()


class Uploader(Protocol):
    """What the hand-off needs of blob storage (``infra.blob.BlobStore``; tests pass their own)."""

    def upload(self, container: str, name: str, data: bytes, *, content_type: str | None = None) -> str: ...


@dataclass(frozen=True)
class HandOff:
    table: pa.Table  # the batch with sent_to_labeling_at set on its rows that were sent
    sent: int = 0
    manifest_url: str | None = None
    replayed: bool = False
    queued: int = 0  # candidates this call added to a window still open
    outcomes: dict[str, int] = field(default_factory=dict)  # of the candidates decided by this call
    fallback: str | None = None  # why the configured strategy was not the one applied


def sampled(path: str, fraction: float) -> bool:
    """Whether ``path`` falls in the sampled ``fraction`` (a stable hash: same answer on replay)."""
    return fraction >= 1 or stable_fraction(path) < fraction


def labeling_blob_name(path: str, day: dt.date, content_hash: str | None = None) -> str:
    """Deterministic, safe blob name for the copy of these bytes of ``path`` (the same on replay;
    new bytes of the path get a copy of their own, so a copy's URL names one content)."""
    digest = task_id(path, content_hash)[:16]
    base = posixpath.basename(path.rstrip("/")) or "image"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in base)[:100]
    return f"images/{day.isoformat()}/{digest}-{safe}"


def task_id(path: str, content_hash: str | None) -> str:
    """The hand-off's id for sending these bytes of ``path``: in the ledger and the manifest, so a
    labeling service can name the image by it (a re-sent image with new bytes gets a new id)."""
    return hashlib.sha256(f"{path}\n{content_hash or ''}".encode()).hexdigest()[:24]


def manifest_blob_name(app_id: str, batch_id: int, day: dt.date) -> str:
    query = app_id.split(":", 1)[-1]
    return f"manifests/{day.isoformat()}/{query}-batch-{batch_id:08d}.jsonl"


# Pacing -------------------------------------------------------------------------------------------
def window_start(now: dt.datetime, window_s: int) -> dt.datetime:
    """Start of the labeling window holding ``now`` (``now`` itself when windows are off)."""
    if window_s <= 0:
        return now
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = int((now - midnight).total_seconds())
    return midnight + dt.timedelta(seconds=elapsed - elapsed % window_s)


def paced_allowance(settings: Settings, start: dt.datetime, sent_that_day: int) -> int:
    """What the window starting at ``start`` may send: the day's budget through its end, less what was sent.

    Window ``i`` of ``n`` in a day may have sent ``budget * (i + 1) // n`` by its end, so an
    unspent share carries over to later windows and the first hour cannot spend the whole day.
    """
    budget = settings.labeling_daily_budget
    window_s = settings.labeling_window_s
    if window_s <= 0:
        return max(budget - sent_that_day, 0)
    per_day = DAY_S // window_s
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    index = int((start - midnight).total_seconds()) // window_s
    return max(budget * (index + 1) // per_day - sent_that_day, 0)


def class_limits(settings: Settings, classes: list[str], sent_by_class: Counter[str]) -> dict[str, int] | None:
    """Picks each of ``classes`` may still take today: its share of the daily budget less what it was sent."""
    if settings.labeling_max_class_share >= 1 or settings.labeling_strategy == strategies.THRESHOLD:
        return None  # the threshold strategy is the first-come order of old: nothing capped
    cap = math.ceil(settings.labeling_max_class_share * settings.labeling_daily_budget)
    return {name: max(cap - sent_by_class.get(name, 0), 0) for name in classes}


# The ledger ---------------------------------------------------------------------------------------
# A batch whose ledger rows a replay sets aside, to see the ledger as that batch first saw it.
Batch = tuple[str, int]


def _ledger_rows(lake: Lake, columns: list[str], filters: Any = None, *, ignore: Batch | None = None) -> pa.Table:
    """Ledger ``columns`` (all rows, or those ``filters`` keeps), less the rows batch ``ignore`` wrote."""
    if not lake.exists(LABELING_REQUESTS):
        return LABELING_REQUESTS.schema.empty_table().select(columns)
    wanted = list(dict.fromkeys([*columns, "app_id", "batch_id"])) if ignore else columns
    rows = LABELING_REQUESTS.conform(lake.read(LABELING_REQUESTS, columns=wanted, filters=filters))
    return _without_batch(rows, ignore).select(columns)


def _without_batch(rows: pa.Table, ignore: Batch | None) -> pa.Table:
    """``rows`` less those batch ``ignore`` wrote (a replayed batch sets its own ledger rows aside)."""
    if ignore is None:
        return rows
    theirs = pc.and_(pc.equal(rows.column("app_id"), ignore[0]), pc.equal(rows.column("batch_id"), ignore[1]))
    return rows.filter(pc.invert(pc.fill_null(theirs, False)))


def _sent_on(lake: Lake, day: dt.date, *, ignore: Batch | None = None) -> pa.Table:
    return _ledger_rows(lake, ["path", "predicted_label"], pc.field("request_date") == day, ignore=ignore)


def _ledger(lake: Lake, paths: list[str], *, ignore: Batch | None = None) -> pa.Table:
    """The ledger rows of ``paths`` (read by key), less those batch ``ignore`` wrote."""
    columns = ["path", "content_hash", "request_date", "sent_at", "app_id", "batch_id"]
    return _without_batch(LABELING_REQUESTS.conform(lake.lookup(LABELING_REQUESTS, "path", paths, columns)), ignore)


def _sent_bytes(lake: Lake, paths: list[str], *, ignore: Batch | None = None) -> set[tuple[str, str | None]]:
    """``(path, content hash)`` of the images among ``paths`` that were sent with those bytes:
    an image is sent once per content, so new bytes under a sent path may be sent again."""
    ledger = _ledger(lake, paths, ignore=ignore)
    return set(zip(ledger.column("path").to_pylist(), ledger.column("content_hash").to_pylist(), strict=True))


def _pairs(table: pa.Table) -> list[tuple[str, str | None]]:
    return list(zip(table.column("path").to_pylist(), table.column("content_hash").to_pylist(), strict=True))


_KNOWN_COLUMNS = ["path", "content_hash", "embedding", "model_version", "thumbnail", "sent_at"]
# A cold window's 1-NN purity needs tens of labeled images: the labels of this many of the newest
# picks with embeddings are read (a keyed read of every path of 30 days would grow with the budget).
LABELS_READ = 1000


def _recent(lake: Lake, today: dt.date, *, ignore: Batch | None = None) -> list[dict[str, Any]]:
    """The images sent lately (what a new pick must not repeat), as ledger rows of ``_KNOWN_COLUMNS``
    and, for the newest ``LABELS_READ`` with embeddings, the human ``label`` where it came back (a
    cold window measures its features by them)."""
    since = today - dt.timedelta(days=KNOWN_DAYS)
    rows = _ledger_rows(lake, _KNOWN_COLUMNS, pc.field("request_date") >= since, ignore=ignore).to_pylist()
    newest = sorted(
        (r for r in rows if r.get("embedding")),
        key=lambda r: (r["sent_at"] is not None, r["sent_at"] or 0),
        reverse=True,
    )[:LABELS_READ]
    found = lake.lookup(IMAGES, "path", [r["path"] for r in newest], ["path", "label"])
    labels = dict(zip(found.column("path").to_pylist(), found.column("label").to_pylist(), strict=True))
    for row in rows:
        row["label"] = labels.get(row["path"])
    return rows


def _known(sent: list[dict[str, Any]], version: str | None) -> strategies.Known:
    """What ``sent`` (ledger rows and picks) tells a new pick: hashes and thumbnails of every model
    version, embeddings only of ``version``'s (another network's vectors are not comparable)."""
    hashes = frozenset(r["content_hash"] for r in sent if r.get("content_hash"))
    thumbnails = tuple(r["thumbnail"] for r in sent if r.get("thumbnail"))
    comparable = [r for r in sent if r.get("embedding") and r.get("model_version") == version]
    vectors = [r["embedding"] for r in comparable]
    if version is None or len({len(v) for v in vectors}) != 1:  # none comparable: hashes and pixels only
        return strategies.Known(content_hashes=hashes, thumbnails=thumbnails)
    labels = tuple(r.get("label") for r in comparable)
    return strategies.Known(np.asarray(vectors, dtype=np.float32), hashes, thumbnails, labels)


# Candidates ---------------------------------------------------------------------------------------
def _eligible(table: pa.Table, settings: Settings) -> list[int]:
    """Rows that may be sent: scored and readable, and either unsure and sampled or in the exploration sample."""
    scored = pc.and_(
        pc.and_(pc.is_null(table.column("error")), pc.is_valid(table.column("content"))),
        pc.is_valid(table.column("probabilities")),
    )
    rows = [i for i, flag in enumerate(scored.to_pylist()) if flag]
    paths = table.column("path").to_pylist()
    confidences = table.column("confidence").to_pylist()
    return [i for i in rows if _unsure(settings, paths[i], confidences[i]) or _explorable(settings, paths[i])]


def _unsure(settings: Settings, path: str, confidence: float | None) -> bool:
    """An unsure image the strategy may choose: under the confidence threshold, in the sample."""
    return (
        confidence is not None
        and confidence < settings.confidence_threshold
        and sampled(path, settings.labeling_fraction)
    )


def explore_key(path: str) -> float:
    """An image's place in the exploration draw: the lowest keys of a window are drawn."""
    return stable_fraction(f"explore:{path}")


def _explorable(settings: Settings, path: str) -> bool:
    """In the exploration draw's pool: a stable hash sample of every scored image, sure or unsure."""
    return settings.labeling_explore_share > 0 and explore_key(path) < settings.labeling_explore_sample


def _as_candidates(table: pa.Table, rows: list[int], settings: Settings, now: dt.datetime) -> pa.Table:
    """The rows as ``labeling_candidates`` entries of the window holding ``now``."""
    picked = table.take(pa.array(rows, type=pa.int64()))
    start = window_start(now, settings.labeling_window_s)
    n = picked.num_rows
    columns = {name: picked.column(name) for name in picked.column_names if name in LABELING_CANDIDATES.schema.names}
    columns.update(
        {
            "window_date": pa.array([start.date()] * n, pa.date32()),
            "window_start": pa.array([start] * n, TS),
            "queued_at": pa.array([now] * n, TS),
        }
    )
    if "embedding" not in columns:
        columns["embedding"] = pa.nulls(n, LABELING_CANDIDATES.schema.field("embedding").type)
    columns["thumbnail"] = pa.array([pixels.thumbnail(c) for c in picked.column("content").to_pylist()], pa.binary())
    return LABELING_CANDIDATES.conform(pa.table(columns))


def _closed_windows(lake: Lake, settings: Settings, now: dt.datetime, *, look_again: bool = False) -> pa.Table:
    """Waiting candidates whose window has closed, with their bytes (once per window per process,
    unless ``look_again``)."""
    current = window_start(now, settings.labeling_window_s)
    root = str(lake.root)
    if (_last_look.get(root) == current and not look_again) or not lake.exists(LABELING_CANDIDATES):
        return LABELING_CANDIDATES.schema.empty_table()
    # Waiting candidates older than KNOWN_DAYS (a stream stopped for a month) are left undecided.
    recent = pc.field("window_date") >= now.date() - dt.timedelta(days=KNOWN_DAYS)
    waiting = lake.read(
        LABELING_CANDIDATES, columns=["window_date", "window_start"], filters=recent & pc.field("outcome").is_null()
    )
    due = waiting.filter(pc.less(waiting.column("window_start"), pa.scalar(current, TS)))
    if due.num_rows == 0:
        _last_look[root] = current
        return LABELING_CANDIDATES.schema.empty_table()
    days = pc.unique(due.column("window_date")).to_pylist()
    rows = lake.read(LABELING_CANDIDATES, filters=pc.field("window_date").isin(days) & pc.field("outcome").is_null())
    return _first_per_path(rows.filter(pc.less(rows.column("window_start"), pa.scalar(current, TS))))


def _first_per_path(rows: pa.Table) -> pa.Table:
    """One row per path (a path re-scored in the same window was queued twice)."""
    paths = rows.column("path").to_pylist()
    first: dict[str, int] = {}
    for i, path in enumerate(paths):
        first.setdefault(path, i)
    return rows.take(pa.array(sorted(first.values()), type=pa.int64()))


# Deciding -----------------------------------------------------------------------------------------
@dataclass
class _Decision:
    picks: list[dict[str, Any]] = field(default_factory=list)  # candidate rows, with strategy/score/rank/day
    outcomes: dict[str, str] = field(default_factory=dict)  # path -> outcome
    fallback: str | None = None


def _decide(
    settings: Settings, lake: Lake, due: pa.Table, now: dt.datetime, *, ignore: Batch | None = None
) -> _Decision:
    """Choose among ``due``, window by window (oldest first), each within its paced allowance.

    ``ignore``: a replayed batch, whose own ledger rows are set aside so that the choice is the one
    it made before its kill.
    """
    decision = _Decision()
    # A candidate an interrupted earlier call already sent keeps that outcome, and is not sent again.
    sent_before = _sent_bytes(lake, due.column("path").to_pylist(), ignore=ignore)
    pending = [pair not in sent_before for pair in _pairs(due)]
    decision.outcomes.update({pair[0]: strategies.SENT for pair in _pairs(due) if pair in sent_before})
    due = due.filter(pa.array(pending, pa.bool_()))
    recent = _recent(lake, now.date(), ignore=ignore)
    live = prequential_accuracy(lake, now.date()) if settings.labeling_strategy == strategies.MARGIN_DIVERSITY else None
    spent: dict[dt.date, pa.Table] = {}
    starts = sorted(set(due.column("window_start").to_pylist()))
    for start in starts:
        group = due.filter(pc.equal(due.column("window_start"), pa.scalar(start, TS)))
        day = start.date()
        if day not in spent:
            spent[day] = _sent_on(lake, day, ignore=ignore)
        earlier = [p for p in decision.picks if p["request_date"] == day]
        sent_by_class = Counter(
            spent[day].column("predicted_label").to_pylist() + [p["predicted_label"] for p in earlier]
        )
        classes = sorted({name for names in group.column("class_names").to_pylist() if names for name in names})
        limits = class_limits(settings, classes, sent_by_class)
        allowance = paced_allowance(settings, start, spent[day].num_rows + len(earlier))
        version = _window_version(group)
        known = _known(recent + decision.picks, version)
        picks, outcomes, fallback = _choose(settings, group, allowance, known, limits, version, live)
        for pick in picks:
            pick["request_date"] = day
        decision.picks.extend(picks)
        decision.outcomes.update(outcomes)
        decision.fallback = decision.fallback or fallback
    return decision


def _window_version(group: pa.Table) -> str | None:
    """The model version whose embeddings a window's diversity compares: the one most of its rows have."""
    versions = [
        v
        for v, e in zip(group.column("model_version").to_pylist(), group.column("embedding").to_pylist(), strict=True)
        if e
    ]
    return Counter(versions).most_common(1)[0][0] if versions else None


def _choose(
    settings: Settings,
    group: pa.Table,
    allowance: int,
    known: strategies.Known,
    limits: dict[str, int] | None,
    version: str | None,
    live: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, str], str | None]:
    rows = group.to_pylist()
    for row in rows:
        if row.get("model_version") != version:
            row["embedding"] = None  # another network's vector: not comparable with this window's
        if row.get("thumbnail") is None:  # queued before thumbnails were kept
            row["thumbnail"] = pixels.thumbnail(row.get("content"))
    explored, rows = _explore(settings, rows, allowance, known)
    allowance -= len(explored)
    known = _with_explored(known, explored)
    usable = _with_embeddings_if_any(rows)
    if not usable:  # the exploration share took every candidate of the window
        outcomes = {r["path"]: strategies.NOT_CHOSEN for r in rows} | {r["path"]: strategies.SENT for r in explored}
        return list(explored), outcomes, None
    phase = _phase(settings, usable, version, live)
    candidates = strategies.Candidates(
        keys=[r["path"] for r in usable],
        probabilities=np.asarray([r["probabilities"] for r in usable], dtype=np.float64).reshape(len(usable), -1),
        predicted=[r["predicted_label"] for r in usable],
        embeddings=_embedding_matrix(usable),
        content_hashes=[r["content_hash"] for r in usable],
        thumbnails=[r["thumbnail"] for r in usable],
    )
    selection = strategies.select(
        candidates,
        allowance,
        strategy=settings.labeling_strategy,
        known=known,
        min_distance=settings.labeling_min_distance,
        class_limits=None if phase == phases.COLD else limits,  # the cap applies only when warm
        duplicate_fraction=settings.labeling_duplicate_fraction,
        phase=phase,
    )
    outcomes = {r["path"]: strategies.NOT_CHOSEN for r in rows}
    outcomes.update({r["path"]: strategies.SENT for r in explored})
    outcomes.update({usable[i]["path"]: strategies.NEAR_DUPLICATE for i in selection.near_duplicates})
    outcomes.update({usable[i]["path"]: strategies.CLASS_CAPPED for i in selection.class_capped})
    picks = list(explored)
    for pick in selection.picks:
        row = dict(usable[pick.index])
        row.update(strategy=selection.strategy, score=pick.score, rank=len(explored) + pick.rank)
        outcomes[row["path"]] = strategies.SENT
        picks.append(row)
    return picks, outcomes, selection.fallback


def _phase(
    settings: Settings, rows: list[dict[str, Any]], version: str | None, live: dict[str, Any] | None
) -> str | None:
    """Cold or warm for ``margin_diversity`` (other strategies: none), from the model's live accuracy
    (when it is this window's model version's) and the window's predicted classes."""
    if live is None or not rows:
        return None
    own = live.get("model_version") == version and version is not None
    classes = max((len(r.get("class_names") or []) for r in rows), default=0)
    state, why = phases.phase(
        live.get("accuracy") if own else None,
        live.get("labels", 0) if own else 0,
        classes,
        [r.get("predicted_label") or "" for r in rows],
        settings.labeling_warm_floor,
        measured=settings.labeling_explore_share > 0,  # without the share no label will ever measure it
    )
    if state == phases.COLD:
        log.info("labeling: cold window (%s): typicality or stratified random", why)
    return state


def explore_count(settings: Settings, allowance: int, salt: str) -> int:
    """How many of ``allowance`` the exploration draw takes: the share, its fraction rounded up or
    down by a stable hash of ``salt`` (the window), so that small allowances explore at the share on average."""
    wanted = allowance * settings.labeling_explore_share
    whole = math.floor(wanted)
    return min(allowance, whole + (1 if stable_fraction(f"explore-round:{salt}") < wanted - whole else 0))


def _explore(
    settings: Settings, rows: list[dict[str, Any]], allowance: int, known: strategies.Known
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The window's exploration picks (the lowest explore keys of its whole sample, copies of
    known images skipped), and the unsure rows left for the strategy."""
    salt = str(rows[0]["window_start"]) if rows else ""
    count = explore_count(settings, allowance, salt)
    pool = sorted(
        (r for r in rows if _explorable(settings, r["path"])), key=lambda r: (explore_key(r["path"]), r["path"])
    )
    copies = _copies_in(pool, known, settings)
    explored = [
        {**row, "strategy": strategies.EXPLORE, "score": 1.0 - explore_key(row["path"])}
        for n, row in enumerate(pool)
        if n not in copies
    ][:count]
    for rank, row in enumerate(explored, start=1):
        row["rank"] = rank
    taken = {r["path"] for r in explored}
    left = [r for r in rows if r["path"] not in taken and _unsure(settings, r["path"], r.get("confidence"))]
    return explored, left


def _copies_in(pool: list[dict[str, Any]], known: strategies.Known, settings: Settings) -> set[int]:
    """Positions in ``pool`` that repeat a known image or an earlier one of ``pool`` (by hash or pixels)."""
    seen = set(known.content_hashes)
    copies = set()
    for n, row in enumerate(pool):
        digest = row.get("content_hash")
        if digest and digest in seen:
            copies.add(n)
        elif digest:
            seen.add(digest)
    as_candidates = strategies.Candidates(
        keys=[r["path"] for r in pool],
        probabilities=np.zeros((len(pool), 1)),
        predicted=[""] * len(pool),
        thumbnails=[r.get("thumbnail") for r in pool],
    )
    return copies | strategies.pixel_duplicates(
        as_candidates, list(range(len(pool))), known, settings.labeling_duplicate_fraction
    )


def _with_explored(known: strategies.Known, explored: list[dict[str, Any]]) -> strategies.Known:
    """``known`` and the exploration picks: the strategy must not choose copies of them."""
    if not explored:
        return known
    return strategies.Known(
        known.embeddings,
        known.content_hashes | {r["content_hash"] for r in explored if r.get("content_hash")},
        known.thumbnails + tuple(r["thumbnail"] for r in explored if r.get("thumbnail")),
    )


def _with_embeddings_if_any(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with an embedding, when any has one: an image without one is never picked beside them."""
    with_vectors = [r for r in rows if r.get("embedding")]
    return with_vectors if with_vectors else rows


def _embedding_matrix(rows: list[dict[str, Any]]) -> np.ndarray | None:
    vectors: list[list[float]] = [r.get("embedding") or [] for r in rows]
    if not vectors or any(not v for v in vectors) or len({len(v) for v in vectors}) != 1:
        return None
    return np.asarray(vectors, dtype=np.float32)


# The hand-off -------------------------------------------------------------------------------------
def hand_off(
    settings: Settings,
    lake: Lake,
    table: pa.Table,
    *,
    app_id: str,
    batch_id: int,
    now: dt.datetime | None = None,
    store: Uploader | None = None,
) -> HandOff:
    """Queue this batch's candidates, and send the chosen ones of every window that has closed."""
    if settings.labeling_fraction <= 0 or settings.labeling_daily_budget <= 0 or table.num_rows == 0:
        return HandOff(table)
    committed = lake.committed_version(LABELING_REQUESTS, app_id) if lake.exists(LABELING_REQUESTS) else None
    if committed is not None and committed >= batch_id:
        return _replayed(settings, lake, table, app_id=app_id, batch_id=batch_id)
    now = now or dt.datetime.now(dt.UTC)
    due, queued = _queue_and_due(settings, lake, table, now, app_id=app_id, batch_id=batch_id)
    if due.num_rows == 0:
        return HandOff(table, queued=queued)
    decision = _decide(settings, lake, due, now)
    _say_fallback_once(lake, decision.fallback)
    sent = _send(settings, lake, decision.picks, app_id=app_id, batch_id=batch_id, now=now, store=store)
    _record_outcomes(settings, lake, due, decision, now, app_id=app_id, batch_id=batch_id)
    _last_look[str(lake.root)] = window_start(now, settings.labeling_window_s)
    marked = _mark_sent(lake, table, decision.picks, now)
    return HandOff(
        marked,
        sent=len(decision.picks),
        manifest_url=sent,
        queued=queued,
        outcomes=dict(Counter(decision.outcomes.values())),
        fallback=decision.fallback,
    )


def _queue_and_due(
    settings: Settings,
    lake: Lake,
    table: pa.Table,
    now: dt.datetime,
    *,
    app_id: str,
    batch_id: int,
    ignore: Batch | None = None,
) -> tuple[pa.Table, int]:
    """Queue the batch's candidates (a replay's queue write is skipped by its transaction); the
    candidates due for a decision now, and how many were queued for a window still open."""
    rows = _eligible(table, settings)
    pairs = _pairs(table)
    already = _sent_bytes(lake, [pairs[i][0] for i in rows], ignore=ignore) if rows else set()
    queue = _as_candidates(table, [i for i in rows if pairs[i] not in already], settings, now)
    if settings.labeling_window_s <= 0:
        return queue, 0
    lake.append(LABELING_CANDIDATES, queue, txn=Transaction(app_id + _QUEUE, batch_id))
    return _closed_windows(lake, settings, now, look_again=ignore is not None), queue.num_rows


def _replayed(settings: Settings, lake: Lake, table: pa.Table, *, app_id: str, batch_id: int) -> HandOff:
    """This batch's ledger write already committed: finish the writes after it, choose nothing new.

    The ledger is the record of what was sent. The choice is made again as the batch first made it
    (at its ``sent_at``, its own ledger rows set aside), to give the other candidates of its windows
    their outcomes; then the ledger overrides it: its rows are ``sent``, nothing else is. Outcomes
    and ``images`` marks only fill what is still empty, so a replay after a complete close changes
    nothing.
    """
    ledger = _ledger_rows(lake, ["path", "request_date", "sent_at", "app_id", "batch_id"])
    mine = ledger.filter(
        pc.and_(pc.equal(ledger.column("app_id"), app_id), pc.equal(ledger.column("batch_id"), batch_id))
    )
    if mine.num_rows == 0:
        return HandOff(table, sent=0, replayed=True)
    now = min(mine.column("sent_at").to_pylist())
    this_batch = (app_id, batch_id)
    due, _ = _queue_and_due(settings, lake, table, now, app_id=app_id, batch_id=batch_id, ignore=this_batch)
    sent = set(mine.column("path").to_pylist())
    if due.num_rows:
        decision = _decide(settings, lake, due, now, ignore=this_batch)
        decision.picks = [p for p in decision.picks if p["path"] in sent]
        decision.outcomes = {
            path: strategies.SENT if path in sent else _unsent(outcome) for path, outcome in decision.outcomes.items()
        }
        decision.outcomes.update(dict.fromkeys(sent & set(due.column("path").to_pylist()), strategies.SENT))
        _record_outcomes(settings, lake, due, decision, now, app_id=app_id, batch_id=batch_id)
    marked = _mark_sent(lake, table, _sent_rows(lake, table, mine), now)
    return HandOff(marked, sent=0, replayed=True)


def _unsent(outcome: str) -> str:
    """A replayed choice that the ledger does not hold was never sent: not chosen."""
    return strategies.NOT_CHOSEN if outcome == strategies.SENT else outcome


def _sent_rows(lake: Lake, table: pa.Table, mine: pa.Table) -> list[dict[str, Any]]:
    """The images a batch sent, with the ``load_date`` that ``images`` keys them by."""
    here = set(table.column("path").to_pylist())
    paths = mine.column("path").to_pylist()
    rows: list[dict[str, Any]] = [{"path": p, "load_date": None} for p in paths if p in here]
    elsewhere = [p for p in paths if p not in here]
    if elsewhere and lake.exists(LABELING_CANDIDATES):
        days = pc.unique(mine.column("request_date")).to_pylist()
        queued = lake.read(
            LABELING_CANDIDATES, columns=["path", "load_date"], filters=pc.field("window_date").isin(days)
        )
        queued = _first_per_path(queued.filter(pc.is_in(queued.column("path"), pa.array(elsewhere, pa.string()))))
        rows.extend(queued.to_pylist())
    return rows


def _say_fallback_once(lake: Lake, fallback: str | None) -> None:
    if fallback and str(lake.root) not in _fallback_said:
        _fallback_said.add(str(lake.root))
        log.warning("labeling: %s", fallback)


def _record_outcomes(
    settings: Settings,
    lake: Lake,
    due: pa.Table,
    decision: _Decision,
    now: dt.datetime,
    *,
    app_id: str,
    batch_id: int,
) -> None:
    """Each decided candidate's outcome; its bytes are dropped (the sent ones are in the labeling container)."""
    decided = due.drop_columns(["content"]).append_column("content", pa.nulls(due.num_rows, pa.binary()))
    decided = decided.set_column(
        decided.column_names.index("outcome"),
        "outcome",
        pa.array([decision.outcomes.get(p) for p in due.column("path").to_pylist()], pa.string()),
    )
    decided = decided.set_column(
        decided.column_names.index("decided_at"), "decided_at", pa.array([now] * due.num_rows, TS)
    )
    if settings.labeling_window_s <= 0:
        lake.append(LABELING_CANDIDATES, decided, txn=Transaction(app_id + _QUEUE, batch_id))
        return
    lake.merge(
        LABELING_CANDIDATES,
        decided,
        update={"outcome": "s.outcome", "decided_at": "s.decided_at", "content": "s.content"},
        when="t.outcome IS NULL",
        insert=False,
    )
    _compact_windows(lake, pc.unique(due.column("window_date")).to_pylist())


def _compact_windows(lake: Lake, days: list[dt.date]) -> None:
    """One file per closed day instead of one per micro-batch: later looks read few files."""
    try:
        lake.compact(LABELING_CANDIDATES, "window_date", days)
    except Exception as exc:  # noqa: BLE001 - a concurrent writer wins; the next close compacts
        log.info("labeling candidates not compacted this time: %s", exc)


def _mark_sent(lake: Lake, table: pa.Table, picks: list[dict[str, Any]], now: dt.datetime) -> pa.Table:
    """The batch with its sent rows marked; rows sent from earlier batches are marked in ``images`` now."""
    here = set(table.column("path").to_pylist())
    earlier = [p for p in picks if p["path"] not in here and p.get("load_date") is not None]
    if earlier:
        lake.merge(
            IMAGES,
            pa.table(
                {
                    "path": [p["path"] for p in earlier],
                    "load_date": pa.array([p["load_date"] for p in earlier], pa.date32()),
                    "sent_to_labeling_at": pa.array([now] * len(earlier), TS),
                }
            ),
            update={"sent_to_labeling_at": "s.sent_to_labeling_at"},
            when="t.sent_to_labeling_at IS NULL",
            insert=False,
        )
    return _mark(table, {p["path"]: now for p in picks if p["path"] in here})


def _mark(table: pa.Table, sent_at: dict[str, dt.datetime]) -> pa.Table:
    if not sent_at:
        return table
    values = [sent_at.get(p) for p in table.column("path").to_pylist()]
    column = pa.array(values, type=TS)
    if "sent_to_labeling_at" in table.column_names:
        old = table.column("sent_to_labeling_at").cast(TS)
        column = pc.coalesce(old, column)
        return table.set_column(table.column_names.index("sent_to_labeling_at"), "sent_to_labeling_at", column)
    return table.append_column(pa.field("sent_to_labeling_at", TS), column)


def _send(
    settings: Settings,
    lake: Lake,
    picks: list[dict[str, Any]],
    *,
    app_id: str,
    batch_id: int,
    now: dt.datetime,
    store: Uploader | None,
) -> str | None:
    """Upload the picks and their manifest, then record them in the ledger; the manifest's URL."""
    if not picks:
        return None
    from infra.blob import BlobStore

    blobs: Uploader = store if store is not None else BlobStore(settings)
    container = settings.labeling_container
    day = now.date()
    names = [labeling_blob_name(row["path"], day, row.get("content_hash")) for row in picks]
    with ThreadPoolExecutor(max_workers=settings.blob_fetch_threads) as pool:
        urls = list(
            pool.map(
                lambda pair: blobs.upload(container, pair[0], pair[1]["content"], content_type=_content_type(pair[0])),
                zip(names, picks, strict=True),
            )
        )
    manifest_url = blobs.upload(
        container,
        manifest_blob_name(app_id, batch_id, day),
        _manifest(picks, urls, now),
        content_type="application/x-ndjson",
    )
    ledger_rows = pa.table(
        {
            "path": [row["path"] for row in picks],
            "request_date": pa.array([row["request_date"] for row in picks], pa.date32()),
            "sent_at": [now] * len(picks),
            "image_url": urls,
            "manifest_url": [manifest_url] * len(picks),
            "app_id": [app_id] * len(picks),
            "batch_id": [batch_id] * len(picks),
            **{
                name: [row.get(name) for row in picks]
                for name in ("predicted_label", "confidence", "model_version", "strategy", "score", "rank")
            },
            "content_hash": [row.get("content_hash") for row in picks],
            "embedding": pa.array([row.get("embedding") for row in picks], pa.list_(pa.float32())),
            "task_id": [task_id(row["path"], row.get("content_hash")) for row in picks],
            "image_name": [posixpath.basename(name) for name in names],
            "thumbnail": pa.array([row.get("thumbnail") for row in picks], pa.binary()),
        }
    )
    lake.merge(LABELING_REQUESTS, ledger_rows, txn=Transaction(app_id, batch_id))
    return manifest_url


def _manifest(picks: list[dict[str, Any]], urls: list[str], now: dt.datetime) -> bytes:
    lines = [
        json.dumps(
            {
                "image_url": url,
                "task_id": task_id(row["path"], row.get("content_hash")),
                "source_url": row["path"],
                "content_hash": row["content_hash"],
                "predicted_label": row["predicted_label"],
                "confidence": row["confidence"],
                "class_names": row["class_names"],
                "model_name": row["model_name"],
                "model_version": row["model_version"],
                "requested_at": now.isoformat(),
                "strategy": row["strategy"],
                "score": row["score"],
                "rank": row["rank"],
            },
            separators=(",", ":"),
        )
        for url, row in zip(urls, picks, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode()


def prequential_accuracy(lake: Lake, today: dt.date) -> dict[str, Any]:
    """The serving model's live accuracy: its predictions on the exploration picks whose labels came back.

    The exploration draw is a uniform sample of every scored image, so this estimates the accuracy
    on the stream itself (the strategy's picks, chosen for being hard, would not). Over the last
    ``KNOWN_DAYS``, for the newest model version with returned labels.
    """
    since = today - dt.timedelta(days=KNOWN_DAYS)
    # The strategy is filtered in memory: a string comparison pushed down fails on delta-rs's string_view.
    recent = _ledger_rows(
        lake, ["path", "predicted_label", "model_version", "sent_at", "strategy"], pc.field("request_date") >= since
    ).to_pylist()
    explored = [r for r in recent if r["strategy"] == strategies.EXPLORE]
    found: dict[str, Any] = {"model_version": None, "accuracy": None, "labels": 0, "explored": len(explored)}
    if not explored or not lake.exists(IMAGES):
        return found
    labeled = lake.read(
        IMAGES,
        columns=["path", "label"],
        filters=(pc.field("load_date") >= since - dt.timedelta(days=KNOWN_DAYS)) & pc.field("label").is_valid(),
    )
    labels = dict(zip(labeled.column("path").to_pylist(), labeled.column("label").to_pylist(), strict=True))
    returned = [r for r in explored if r["path"] in labels]
    if not returned:
        return found
    newest = max(returned, key=lambda r: r["sent_at"])["model_version"]
    mine = [r for r in returned if r["model_version"] == newest]
    right = sum(1 for r in mine if r["predicted_label"] == labels[r["path"]])
    return {**found, "model_version": newest, "accuracy": right / len(mine), "labels": len(mine)}


def queue_state(settings: Settings, lake: Lake, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """The labeling queue for the status page: waiting, sent today, budget left now, what was skipped."""
    now = now or dt.datetime.now(dt.UTC)
    today = now.date()
    sent = _sent_on(lake, today).num_rows
    state: dict[str, Any] = {
        "strategy": settings.labeling_strategy,
        "window_s": settings.labeling_window_s,
        "daily_budget": settings.labeling_daily_budget,
        "sent_today": sent,
        "budget_left_now": paced_allowance(settings, window_start(now, settings.labeling_window_s), sent),
        "waiting": 0,
        "decided_today": {},
    }
    if lake.exists(LABELING_CANDIDATES):
        recent = lake.read(
            LABELING_CANDIDATES,
            columns=["outcome", "decided_at"],
            filters=pc.field("window_date") >= today - dt.timedelta(days=1),
        )
        state["waiting"] = int(pc.sum(pc.is_null(recent.column("outcome"))).as_py() or 0)
        decided = [
            outcome
            for outcome, at in zip(
                recent.column("outcome").to_pylist(), recent.column("decided_at").to_pylist(), strict=True
            )
            if outcome is not None and at is not None and at.date() == today
        ]
        state["decided_today"] = dict(sorted(Counter(decided).items()))
    state["near_duplicates_skipped_today"] = state["decided_today"].get(strategies.NEAR_DUPLICATE, 0)
    state["explore_share"] = settings.labeling_explore_share
    state["prequential"] = prequential_accuracy(lake, today)
    return state


def _content_type(name: str) -> str:
    from infra.blob_names import guess_content_type

    return guess_content_type(name)
