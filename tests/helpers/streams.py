"""Builders for the streams tests: the tiny champion's classes, scoring settings, images, rows, records
(checked ones, hand-written ones, and the frame the blob fetch receives)."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa

from infra.arrivals import ARRIVAL_RECORD_DDL, ArrivalRecord
from infra.blob import BlobStore
from infra.lake import Lake, Transaction
from infra.local.sample_data import ShapeKnobs, shape_images, write_images
from infra.settings import Settings
from infra.tables import IMAGES, TableSpec

# Re-exported: the streams tests take the shared champion's constants from here.
from streams.batch_writer import BatchSteps, Committed, Staged
from tests.helpers.models import CLASSES as CLASSES
from tests.helpers.models import IMAGE_SIZE as IMAGE_SIZE
from tests.helpers.models import with_model as with_model
from tests.helpers.waiting import WAIT_S, wait_until


def scoring_settings(tmp_path: Path, **fields: object) -> Settings:
    """Settings for a scoring test: quick champion checks and triggers, labeling off."""
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    return Settings(
        state_dir=state,
        spark_master="local[2]",
        champion_check_s=0.5,
        labeling_daily_budget=0,
        score_trigger_s=0.5,
        **fields,
    )


def merge_engines(lake: Lake, table: TableSpec = IMAGES) -> set[str]:
    """Which engines committed the MERGEs of ``table`` (``delta-rs`` / ``spark``), from the commit info."""
    engines = set()
    for entry in lake.history(table):
        if entry["operation"] == "MERGE":
            engines.add("spark" if entry.get("engineInfo", "").startswith("Apache-Spark") else "delta-rs")
    return engines


def shapes(folder: Path, count: int, *, seed: int = 0, prefix: str = "shape") -> list[Path]:
    """``count`` 24x24 shape PNGs written under ``folder``, sorted by path."""
    knobs = ShapeKnobs(count=count, size=24, seed=seed, prefix=prefix, holdout_fraction=0)
    write_images(shape_images(knobs), out_dir=folder)
    return sorted(folder.rglob(f"{prefix}-*.png"))


def rows_by_name(settings: Settings) -> dict[str, dict]:
    """The ``images`` rows keyed by their file name."""
    table = Lake(settings).read(IMAGES).to_pylist()
    return {Path(r["path"]).name: r for r in table}


def wait_for_rows(settings: Settings, count: int, timeout: float = WAIT_S) -> None:
    """Wait until ``images`` holds at least ``count`` rows (a running stream committed them)."""
    lake = Lake(settings)
    wait_until(
        lambda: lake.exists(IMAGES) and lake.read(IMAGES, columns=["path"]).num_rows >= count,
        f"{count} rows in images",
        timeout=timeout,
    )


def arrival_record(settings: Settings, store: BlobStore, name: str, data: bytes, *, at: str) -> ArrivalRecord:
    """The arrival record the handlers would write for blob ``name`` of the images container."""
    container = settings.images_container
    return ArrivalRecord(
        url=store.url(container, name),
        container=container,
        name=name,
        etag="0x1",
        content_type="image/png",
        content_length=len(data),
        event_time=at,
        event_id=f"ev-{name}",
    )


def hand_written_record(url: str, container: str | None, name: str | None, *, at: str, etag: str = "0x1") -> dict:
    """An arrival record as anyone with write access to the arrivals folder could write it: unchecked."""
    return {
        "url": url,
        "container": container,
        "name": name,
        "etag": etag,
        "content_type": "image/png",
        "content_length": 1,
        "event_time": at,
        "event_id": f"ev-{uuid.uuid4().hex[:8]}",
        "sequencer": "",
    }


def arrival_frame(records: list[dict]) -> pd.DataFrame:
    """The pandas frame Spark's JSON source hands ``streams.scoring.fetch`` for these records."""
    frame = pd.DataFrame(records, columns=[c.split()[0] for c in ARRIVAL_RECORD_DDL.split(", ")])
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    return frame


@contextlib.contextmanager
def scoring_in_background(settings: Settings, **options: object) -> Iterator[dict[str, object]]:
    """``run_scoring(settings, **options)`` in a thread until the block ends; its report lands in
    the yielded dict under ``"report"``. Leaving the block asks the stream to stop and waits for it."""
    from streams.scoring.query import run_scoring

    stop = threading.Event()
    result: dict[str, object] = {}
    worker = threading.Thread(
        target=lambda: result.setdefault("report", run_scoring(settings, stop_event=stop, **options)),  # type: ignore[arg-type]
        daemon=True,
    )
    worker.start()
    try:
        yield result
    finally:
        stop.set()
        worker.join(60)
    assert not worker.is_alive(), "the scoring stream did not stop within 60 s"


class RecordingSteps(BatchSteps):
    """A job's :class:`~streams.batch_writer.BatchSteps` for writer tests: MERGEs into ``images``,
    updates ``update``, hands every committed batch to ``done``; the writer's flags as keywords."""

    kind = "test"
    spec = IMAGES

    def __init__(
        self,
        done: list[Committed] | Callable[[Committed], None],
        *,
        update: dict[str, str] | None = None,
        listed: Callable[[int], None] | None = None,
        stage: Callable[[pa.Table, Transaction], Staged] | None = None,
        **flags: bool,
    ):
        self._done = done.append if isinstance(done, list) else done
        self.update = update
        self._listed = listed
        self._stage = stage
        self.counts_listed = listed is not None
        for name, value in flags.items():
            setattr(self, name, value)

    def listed(self, files: int) -> None:
        if self._listed is not None:
            self._listed(files)

    def stage(self, table: pa.Table, txn: Transaction) -> Staged:
        return self._stage(table, txn) if self._stage is not None else super().stage(table, txn)

    def after_commit(self, batch: Committed) -> None:
        self._done(batch)
