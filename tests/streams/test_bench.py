"""``bench score``: every phase runs for real on a small load and reports consistent figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings import Settings
from streams.bench import bench_score, memory_growth


def test_memory_growth_fits_rss_per_batch_after_the_warm_up() -> None:
    flat = memory_growth([500.0] * 5 + [1000.0 + (i % 2) for i in range(100)])
    assert flat["batches"] == 105
    assert abs(flat["growth_mb_per_100_batches"]) < 5  # the warm-up jump is left out
    leaking = memory_growth([1000.0 + 2 * i for i in range(200)])
    assert leaking["growth_mb_per_100_batches"] == pytest.approx(200, rel=0.01)
    assert leaking["tree_mb_last_tenth_max"] > leaking["tree_mb_first_tenth_max"]
    assert memory_growth([1.0, 2.0]) == {"batches": 2}


def test_bench_score_runs_every_phase_on_a_small_load(spark, settings: Settings) -> None:
    figures = bench_score(
        settings, images=120, model="tiny", offered_per_s=30, latency_s=3, seed_rows=3000, merge_images=80,
        log=lambda _message: None,
    )

    assert figures["images"] == figures["rows_in_delta"] == figures["rows_with_bytes"] == 120
    assert figures["images_per_s"] > 0 and figures["raw_model_images_per_s"] > 0
    assert figures["ratio"] == pytest.approx(figures["images_per_s"] / figures["raw_model_images_per_s"], abs=1e-3)
    latency = figures["latency"]
    assert latency["images"] == latency["committed"] == 90
    assert 0 < latency["p50_s"] <= latency["p95_s"] <= latency["max_s"]
    assert latency["memory"]["batches"] == latency["batches"] >= 1 and latency["clean_source"] == "archive"
    assert len(list((Path(figures["state_dir"]) / "latency-archive").rglob("*.png"))) > 0  # scored files moved
    merge = figures["merge"]
    assert merge["seeded_rows"] == 3000 and merge["batches_each"] >= 2
    for name in ("empty", "seeded", "seeded_today"):
        assert merge[f"seconds_per_batch_{name}"] > 0 and len(merge[f"seconds_per_batch_{name}_all"]) >= 2
    assert merge["seeded_today_over_empty"] > 0
    assert latency["merge_s_first_tenth"] > 0 and latency["merge_s_last_tenth"] > 0
    assert figures["rss"]["peak_tree_mb"] >= figures["rss"]["peak_driver_mb"] > 0
