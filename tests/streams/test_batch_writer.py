"""The exactly-once foreachBatch writer (``streams.batch_writer``), driven with stand-in micro-batches."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from infra.lake import Lake, MergeOutcome, Transaction, from_source
from infra.settings import Settings
from infra.tables import IMAGES, latest_per_path
from streams.batch_writer import BatchTotals, Committed, ExactlyOnceWriter
from streams.checkpoint.names import query_app_id
from tests.helpers.streams import RecordingSteps

DAY = dt.date(2026, 11, 2)


class FakeBatch:
    """What foreachBatch is given, reduced to what the writer uses; counts the Spark jobs it would run."""

    def __init__(self, table: pa.Table):
        self.table = table
        self.collected = 0

    def toArrow(self) -> pa.Table:  # PySpark's name
        self.collected += 1
        return self.table


@dataclass(frozen=True)
class Marked:
    table: pa.Table
    note: str


def _rows(*paths: str, hash_: str = "h", modified: dt.datetime | None = None) -> pa.Table:
    return pa.table(
        {
            "path": list(paths),
            "load_date": [DAY] * len(paths),
            "content_hash": [hash_] * len(paths),
            "modified_at": [modified] * len(paths),
            "error": [None] * len(paths),
        },
        schema=pa.schema(
            [
                ("path", pa.string()),
                ("load_date", pa.date32()),
                ("content_hash", pa.string()),
                ("modified_at", pa.timestamp("us", tz="UTC")),
                ("error", pa.string()),
            ]
        ),
    )


def _writer(settings: Settings, checkpoint: Path, done: list[Committed], **options: object) -> ExactlyOnceWriter:
    lake = Lake(settings)
    lake.images()  # as both jobs do before their query starts
    # Spark writes the query id when the query starts, before any foreachBatch call.
    checkpoint.mkdir(parents=True, exist_ok=True)
    if not (checkpoint / "metadata").exists():
        (checkpoint / "metadata").write_text(json.dumps({"id": f"q-{checkpoint.name}"}))
    steps = RecordingSteps(done, update=from_source(["content_hash"]), **options)  # type: ignore[arg-type]
    return ExactlyOnceWriter(lake, steps, checkpoint=str(checkpoint), totals=BatchTotals())


def test_latest_per_path_keeps_the_last_row_per_path() -> None:
    table = pa.table({"path": ["a", "b", "a", "c", "b"], "v": [1, 2, 3, 4, 5]})
    assert sorted(latest_per_path(table).to_pylist(), key=lambda r: r["v"]) == [
        {"path": "a", "v": 3},
        {"path": "c", "v": 4},
        {"path": "b", "v": 5},
    ]


def test_a_batch_is_merged_with_its_transaction_and_a_replay_skipped_before_it_runs(
    settings: Settings, tmp_path: Path
) -> None:
    done: list[Committed] = []
    writer = _writer(settings, tmp_path / "checkpoint", done)
    batch = FakeBatch(_rows("a", "b"))

    writer(batch, 0)

    lake = Lake(settings)
    assert writer.batch_done.is_set()
    assert lake.committed_version(IMAGES, query_app_id(str(tmp_path / "checkpoint"), "test")) == 0
    assert writer.app_id() == query_app_id(str(tmp_path / "checkpoint"), "test")
    assert len(done) == 1 and done[0].batch_id == 0 and done[0].outcome.inserted == 2
    assert done[0].began <= done[0].collected and done[0].merged is done[0].table  # no stage step: merged as collected
    version = lake.version(IMAGES)

    writer.batch_done.clear()
    writer(batch, 0)  # Spark replays batch 0 after a crash

    assert batch.collected == 1  # its Spark job never ran again
    assert writer.totals.skipped_batches == 1 and len(done) == 1 and writer.batch_done.is_set()
    assert lake.version(IMAGES) == version


def test_without_the_early_check_a_replay_runs_and_the_merge_skips_it(settings: Settings, tmp_path: Path) -> None:
    done: list[Committed] = []
    writer = _writer(settings, tmp_path / "checkpoint", done, skip_committed=False)
    batch = FakeBatch(_rows("a"))
    writer(batch, 0)
    writer(batch, 0)

    assert batch.collected == 2 and [c.outcome.skipped for c in done] == [False, True]
    totals = BatchTotals()
    for committed in done:
        totals.add(committed)
    assert (totals.batches, totals.inserted, totals.skipped_batches) == (2, 1, 1)
    assert Lake(settings).read(IMAGES).num_rows == 1


def test_an_empty_batch_commits_nothing(settings: Settings, tmp_path: Path) -> None:
    done: list[Committed] = []
    writer = _writer(settings, tmp_path / "checkpoint", done)
    writer(FakeBatch(_rows()), 0)
    assert done == [] and writer.batch_done.is_set()
    assert Lake(settings).committed_version(IMAGES, writer.app_id()) is None


def test_files_listed_but_not_read_get_a_row_and_are_counted(settings: Settings, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint"
    log = checkpoint / "sources" / "0"
    log.mkdir(parents=True)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    entries = [{"path": f"file:{tmp_path}/{name}", "timestamp": 1_000, "batchId": 0} for name in ("a.png", "empty.png")]
    (log / "0").write_text("v1\n" + "\n".join(json.dumps(e, separators=(",", ":")) for e in entries) + "\n")
    listed: list[int] = []
    done: list[Committed] = []
    writer = _writer(settings, checkpoint, done, unread_files=True, listed=listed.append)

    writer(FakeBatch(_rows(f"file:{tmp_path}/a.png")), 0)

    assert listed == [2]
    rows = {r["path"]: r for r in Lake(settings).read(IMAGES).to_pylist()}
    assert rows[f"file:{empty}"]["error"] == "empty file" and rows[f"file:{tmp_path}/a.png"]["error"] is None
    assert done[0].table.num_rows == 2


def test_the_step_before_the_merge_decides_what_is_merged_and_duplicates_collapse(
    settings: Settings, tmp_path: Path
) -> None:
    seen: list[Transaction] = []

    def mark(table: pa.Table, txn: Transaction) -> Marked:
        seen.append(txn)
        return Marked(table.set_column(2, "content_hash", pa.array(["marked"] * table.num_rows)), "handed")

    done: list[Committed] = []
    writer = _writer(settings, tmp_path / "checkpoint", done, dedupe=True, stage=mark)

    writer(FakeBatch(pa.concat_tables([_rows("a", hash_="old"), _rows("b"), _rows("a", hash_="new")])), 3)

    assert [(t.app_id, t.version) for t in seen] == [(writer.app_id(), 3)]
    committed = done[0]
    assert committed.staged.note == "handed" and committed.merged is committed.staged.table
    assert sorted(committed.table.column("path").to_pylist()) == ["a", "b"]  # the last "a" kept
    assert (
        dict(
            zip(
                committed.table.column("path").to_pylist(),
                committed.table.column("content_hash").to_pylist(),
                strict=True,
            )
        )["a"]
        == "new"
    )
    stored = Lake(settings).read(IMAGES, columns=["path", "content_hash"]).to_pylist()
    assert sorted((r["path"], r["content_hash"]) for r in stored) == [("a", "marked"), ("b", "marked")]


def test_one_path_twice_in_a_batch_keeps_the_latest_event_even_when_it_comes_first(
    settings: Settings, tmp_path: Path
) -> None:
    # delta#325: a MERGE source naming one target row twice. Spark's row order in a micro-batch is
    # its partitions' order, not event order: the newer record of a blob may be read first.
    done: list[Committed] = []
    writer = _writer(settings, tmp_path / "checkpoint", done, dedupe=True)
    earlier = dt.datetime(2026, 11, 2, 8, 0, tzinfo=dt.UTC)
    later = earlier + dt.timedelta(seconds=1)
    batch = pa.concat_tables(
        [_rows("a", hash_="new", modified=later), _rows("b"), _rows("a", hash_="old", modified=earlier)]
    )

    writer(FakeBatch(batch), 0)

    assert (done[0].outcome.inserted, done[0].outcome.updated) == (2, 0)
    stored = Lake(settings).read(IMAGES, columns=["path", "content_hash", "modified_at"]).to_pylist()
    assert sorted((r["path"], r["content_hash"], r["modified_at"]) for r in stored) == [
        ("a", "new", later),
        ("b", "h", None),
    ]


def test_batch_totals_count_errors_once_and_report_every_counter() -> None:
    table = pa.table({"path": ["a", "b", "c"], "error": [None, "empty file", "not an image"]})
    committed = Committed(
        batch_id=0,
        table=table,
        merged=table,
        staged=None,
        outcome=MergeOutcome(skipped=False, version=4, inserted=2, updated=1),
        began=0.0,
        collected=0.0,
        committed_at=0.0,
    )
    totals = BatchTotals()
    totals.add(committed)
    totals.add(committed)
    assert committed.errors == 2
    assert totals.as_dict() == {
        "batches": 2,
        "inserted": 4,
        "updated": 2,
        "errors": 4,
        "skipped_batches": 0,
        "seconds": 0.0,
        "table_version": None,
    }


@pytest.mark.parametrize("skip_committed", [True, False])
def test_the_transaction_app_id_is_the_checkpoints_query(
    settings: Settings, tmp_path: Path, skip_committed: bool
) -> None:
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "metadata").write_text(json.dumps({"id": "q-123"}))
    writer = _writer(settings, checkpoint, [], skip_committed=skip_committed)
    writer(FakeBatch(_rows("a")), 7)
    assert Lake(settings).committed_version(IMAGES, "test:q-123") == 7
