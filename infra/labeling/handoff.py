"""Labeling hand-off: unsure images go to the labeling container with a JSONL manifest per batch.

Used by the scoring stream (each micro-batch, inside foreachBatch) and by the model server for
unsure online images (``LAKESIGHT_ONLINE_TO_LABELING``): one hand-off, one ledger, one budget.

The ``labeling_requests`` ledger (Delta, one row per image ever sent, partitioned by request
date) is the record of what was sent: it makes "never send twice" a cheap lookup and the daily
budget one partition count. The hand-off runs in foreachBatch *before* the ``images`` MERGE and
is idempotent under replay:

* selection is deterministic (sampling by a hash of the path, most unsure first);
* blob and manifest names are deterministic, so a replay overwrites, never duplicates;
* the ledger write carries ``(app_id, batch_id)``: a replayed batch whose ledger write already
  committed reuses that selection instead of choosing again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from infra.hashing import stable_fraction
from infra.lake import Lake, Transaction
from infra.settings import Settings
from infra.tables import LABELING_REQUESTS, TS


class Uploader(Protocol):
    """What the hand-off needs of blob storage (``infra.blob.BlobStore``; tests pass their own)."""

    def upload(self, container: str, name: str, data: bytes, *, content_type: str | None = None) -> str: ...


@dataclass(frozen=True)
class HandOff:
    table: pa.Table  # the batch with sent_to_labeling_at set on the rows sent
    sent: int = 0
    manifest_url: str | None = None
    replayed: bool = False


def sampled(path: str, fraction: float) -> bool:
    """Whether ``path`` falls in the sampled ``fraction`` (a stable hash: same answer on replay)."""
    return fraction >= 1 or stable_fraction(path) < fraction


def labeling_blob_name(path: str, day: dt.date) -> str:
    """Deterministic, safe blob name for the copy of ``path`` (the same on replay)."""
    digest = hashlib.sha1(path.encode()).hexdigest()[:16]
    base = posixpath.basename(path.rstrip("/")) or "image"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in base)[:100]
    return f"images/{day.isoformat()}/{digest}-{safe}"


def manifest_blob_name(app_id: str, batch_id: int, day: dt.date) -> str:
    query = app_id.split(":", 1)[-1]
    return f"manifests/{day.isoformat()}/{query}-batch-{batch_id:08d}.jsonl"


def _candidates(table: pa.Table, settings: Settings) -> list[int]:
    unsure = pc.and_(
        pc.and_(pc.is_null(table.column("error")), pc.is_valid(table.column("content"))),
        pc.less(table.column("confidence"), settings.confidence_threshold),
    )
    rows = [i for i, flag in enumerate(unsure.to_pylist()) if flag]
    paths = table.column("path").to_pylist()
    return [i for i in rows if sampled(paths[i], settings.labeling_fraction)]


def _ledger(lake: Lake, paths: list[str]) -> pa.Table:
    if not lake.exists(LABELING_REQUESTS) or not paths:
        return LABELING_REQUESTS.schema.empty_table()
    # Filtered in memory: the ledger holds at most the daily budget per day, and pushing an
    # ``isin`` down fails on delta-rs's string_view statistics.
    columns = ["path", "sent_at", "app_id", "batch_id"]
    ledger = LABELING_REQUESTS.conform(lake.read(LABELING_REQUESTS, columns=columns))
    return ledger.filter(pc.is_in(ledger.column("path"), value_set=pa.array(paths, type=pa.string())))


def sent_today(lake: Lake, day: dt.date) -> int:
    """How many images were sent for labeling on ``day`` (UTC)."""
    if not lake.exists(LABELING_REQUESTS):
        return 0
    return lake.read(LABELING_REQUESTS, columns=["path"], filters=pc.field("request_date") == day).num_rows


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
    """Send this batch's unsure, sampled, never-sent images for labeling within the daily budget."""
    if settings.labeling_fraction <= 0 or settings.labeling_daily_budget <= 0 or table.num_rows == 0:
        return HandOff(table)
    rows = _candidates(table, settings)
    if not rows:
        return HandOff(table)
    paths = table.column("path").to_pylist()
    committed = lake.committed_version(LABELING_REQUESTS, app_id) if lake.exists(LABELING_REQUESTS) else None
    if committed is not None and committed >= batch_id:
        # Replay: this batch's ledger write already committed; reuse its selection.
        ledger = _ledger(lake, [paths[i] for i in rows])
        mine = ledger.filter(
            pc.and_(pc.equal(ledger.column("app_id"), app_id), pc.equal(ledger.column("batch_id"), batch_id))
        )
        sent_at = dict(zip(mine.column("path").to_pylist(), mine.column("sent_at").to_pylist(), strict=True))
        return HandOff(_mark(table, sent_at), sent=0, replayed=True)

    now = now or dt.datetime.now(dt.UTC)
    day = now.date()
    # The budget first: once the day's is spent (the steady state under load) one partition
    # count answers, and the whole ledger is not read for every batch.
    remaining = settings.labeling_daily_budget - sent_today(lake, day)
    if remaining <= 0:
        return HandOff(table)
    already = set(_ledger(lake, [paths[i] for i in rows]).column("path").to_pylist())
    fresh = [i for i in rows if paths[i] not in already]
    if not fresh:
        return HandOff(table)
    confidence = table.column("confidence").to_pylist()
    chosen = sorted(fresh, key=lambda i: (confidence[i], paths[i]))[:remaining]
    return _send(settings, lake, table, chosen, app_id=app_id, batch_id=batch_id, now=now, store=store)


def _send(
    settings: Settings,
    lake: Lake,
    table: pa.Table,
    chosen: list[int],
    *,
    app_id: str,
    batch_id: int,
    now: dt.datetime,
    store: Uploader | None,
) -> HandOff:
    from infra.blob import BlobStore

    blobs: Uploader = store if store is not None else BlobStore(settings)
    container = settings.labeling_container
    day = now.date()
    picked = table.take(pa.array(chosen, type=pa.int64())).to_pylist()
    names = [labeling_blob_name(row["path"], day) for row in picked]
    with ThreadPoolExecutor(max_workers=settings.blob_fetch_threads) as pool:
        urls = list(
            pool.map(
                lambda pair: blobs.upload(container, pair[0], pair[1]["content"], content_type=_content_type(pair[0])),
                zip(names, picked, strict=True),
            )
        )
    manifest_name = manifest_blob_name(app_id, batch_id, day)
    lines = [
        json.dumps(
            {
                "image_url": url,
                "source_url": row["path"],
                "content_hash": row["content_hash"],
                "predicted_label": row["predicted_label"],
                "confidence": row["confidence"],
                "class_names": row["class_names"],
                "model_name": row["model_name"],
                "model_version": row["model_version"],
                "requested_at": now.isoformat(),
            },
            separators=(",", ":"),
        )
        for url, row in zip(urls, picked, strict=True)
    ]
    manifest_url = blobs.upload(
        container, manifest_name, ("\n".join(lines) + "\n").encode(), content_type="application/x-ndjson"
    )
    ledger_rows = pa.table(
        {
            "path": [row["path"] for row in picked],
            "request_date": [day] * len(picked),
            "sent_at": [now] * len(picked),
            "image_url": urls,
            "manifest_url": [manifest_url] * len(picked),
            "predicted_label": [row["predicted_label"] for row in picked],
            "confidence": [row["confidence"] for row in picked],
            "model_version": [row["model_version"] for row in picked],
            "app_id": [app_id] * len(picked),
            "batch_id": [batch_id] * len(picked),
        }
    )
    lake.merge(LABELING_REQUESTS, ledger_rows, txn=Transaction(app_id, batch_id))
    sent_at = {row["path"]: now for row in picked}
    return HandOff(_mark(table, sent_at), sent=len(picked), manifest_url=manifest_url)


def _content_type(name: str) -> str:
    from infra.blob import guess_content_type

    return guess_content_type(name)
