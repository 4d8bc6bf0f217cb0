"""Compaction of the partitions the scoring stream wrote (``streams.scoring.compaction``)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES
from streams.scoring.compaction import Compactor


def test_compactor_runs_every_n_batches_over_the_dates_it_saw(settings: Settings) -> None:
    lake = Lake(settings)
    day = dt.date(2026, 11, 2)
    compactor = Compactor(lake, every=3)
    results = []
    for batch in range(6):
        lake.merge(IMAGES, pa.table({"path": [f"x{batch}"], "load_date": [day], "content_hash": ["h"]}))
        results.append(compactor.after_batch([day]))
    assert results[:2] == [None, None] and results[3:5] == [None, None]
    assert results[2]["files_removed"] == 3 and results[5]["files_removed"] == 4  # earlier output + 3 new
    assert len(lake.table(IMAGES).file_uris()) == 1 and lake.read(IMAGES).num_rows == 6
    assert Compactor(lake, every=0).after_batch([day]) is None
    # A failing compaction is logged and retried later, never raised into the stream.
    broken = Compactor(Lake(settings.model_copy(update={"lake_root": str(settings.state_dir / "no-lake")})), every=1)
    assert broken.after_batch([day]) is None and broken.dates == {day}
