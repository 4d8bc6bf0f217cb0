"""``bench score``: every phase (shadow scoring on vs off too) runs for real on a small load and reports consistent
figures."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from infra.settings import Settings
from streams.bench.score import (
    CLASSES,
    IMAGE_SIZE,
    SHADOW_TARGET,
    Recorder,
    RssSampler,
    _variant,
    _write_shapes,
    bench_engines,
    bench_score,
    bench_state,
    memory_growth,
    shadow_phase,
    steady_state,
)
from training.bench.toy_models import register_champion, register_version, tiny_cnn


def test_a_phase_shorter_than_one_sampling_interval_still_has_its_memory_measured() -> None:
    # With the pool a small pass ends within one interval: the summary used to be empty.
    with RssSampler(every=3600) as sampler:
        pass
    assert sampler.summary()["peak_tree_mb"] >= sampler.summary()["peak_driver_mb"] > 0


def _samples(driver: list[float], workers: list[float]) -> dict[str, list[float]]:
    tree = [d + 600.0 + w for d, w in zip(driver, workers, strict=True)]
    return {"driver": driver, "jvm": [600.0] * len(driver), "workers": workers, "tree": tree}


def test_memory_growth_fits_rss_per_batch_and_role_after_the_warm_up() -> None:
    flat = [1000.0 + (i % 2) for i in range(100)]
    leaking = [1000.0 + 2 * i for i in range(100)]
    growth = memory_growth(_samples([500.0] * 5 + flat, [300.0] * 5 + leaking[:5] + leaking[:95]))

    assert growth["batches"] == 105
    assert abs(growth["driver"]["growth_mb_per_100_batches"]) < 5  # the warm-up jump is left out
    assert growth["jvm"]["growth_mb_per_100_batches"] == 0
    assert growth["workers"]["growth_mb_per_100_batches"] == pytest.approx(200, rel=0.05)
    assert growth["tree"]["growth_mb_per_100_batches"] == pytest.approx(200, rel=0.05)
    assert growth["workers"]["mb_last_tenth_max"] > growth["workers"]["mb_first_tenth_max"]


def test_memory_that_levels_off_has_a_flat_second_half() -> None:
    levelling = [1000.0 + min(i, 100) for i in range(300)]
    growth = memory_growth(_samples(levelling, levelling))

    assert growth["driver"]["growth_mb_per_100_batches"] > 10
    assert growth["driver"]["growth_mb_per_100_batches_second_half"] == pytest.approx(0, abs=1e-6)
    assert memory_growth(_samples([1.0, 2.0], [1.0, 2.0])) == {"batches": 2}


def test_recorder_keeps_values_in_order_and_drops_what_exceeds_its_capacity() -> None:
    recorder = Recorder(3)
    assert len(recorder) == 0 and recorder.values == []
    for value in (0.5, 1.5, 2.5, 3.5):
        recorder.add(value)
    assert len(recorder) == 3 and recorder.values == [0.5, 1.5, 2.5]


def test_the_steady_state_counts_the_batches_after_the_first_commit() -> None:
    records = [
        SimpleNamespace(rows=rows, committed_at=at, executors_s=1.0, pool_s=None, driver_s=0.2, merge_s=0.1)
        for rows, at in ((500, 10.0), (1000, 11.0), (1000, 12.5), (400, 13.0))
    ]
    steady = steady_state(records)
    assert steady["batches"] == 3 and steady["images_per_s"] == 800.0  # 2,400 rows from t=10 to t=13
    assert steady["seconds_per_batch"] == 1.0 and steady["merge_s_per_batch"] == 0.1
    assert steady_state(records[:1]) == {"batches": 0, "images_per_s": None}


@pytest.mark.spark
@pytest.mark.slow
def test_bench_score_runs_every_phase_on_a_small_load(spark, settings: Settings) -> None:
    # A one-file checkpoint limit: every batch but the last is followed by a fresh checkpoint, under load.
    base = bench_state(settings.model_copy(update={"score_checkpoint_max_files": 1}))
    version = register_champion(base, tiny_cnn(IMAGE_SIZE, len(CLASSES)), class_names=CLASSES, image_size=IMAGE_SIZE)
    figures = bench_score(
        base,
        model={"kind": "tiny", "version": version},
        images=120,
        offered_per_s=30,
        latency_s=3,
        seed_rows=3000,
        merge_images=80,
        photos=24,
        lull_s=2,
        log=lambda _message: None,
    )
    assert figures["model"]["version"] == version and figures["model"]["kind"] == "tiny"

    assert figures["images"] == figures["rows_in_delta"] == figures["rows_with_bytes"] == 120
    assert figures["images_per_s"] > 0 and figures["raw_model_images_per_s"] > 0
    assert figures["ratio"] == pytest.approx(figures["images_per_s"] / figures["raw_model_images_per_s"], abs=1e-3)
    latency = figures["latency"]
    assert latency["images"] == latency["committed"] == 90
    assert latency["checkpoint_max_files"] == 1 and latency["checkpoints_retired"] >= 1
    assert 0 < latency["p50_s"] <= latency["p95_s"] <= latency["max_s"]
    assert latency["memory"]["batches"] == latency["batches"] >= 1 and latency["clean_source"] == "archive"
    assert latency["jvm_heap_after_gc_mb"]["before"] > 0 and latency["jvm_heap_after_gc_mb"]["after"] > 0
    if latency["batches"] >= 30:  # enough settled batches for a fit
        assert latency["memory"]["workers"]["mb_max"] > 0 and latency["memory"]["jvm"]["mb_max"] > 0
    assert len(list((Path(figures["state_dir"]) / "latency-archive").rglob("*.png"))) > 0  # scored files moved
    merge = figures["merge"]
    assert merge["seeded_rows"] == 3000 and merge["batches_each"] >= 2
    for name in ("empty", "seeded", "seeded_today"):
        assert merge[f"seconds_per_batch_{name}"] > 0 and len(merge[f"seconds_per_batch_{name}_all"]) >= 2
    assert merge["seeded_today_over_empty"] > 0
    assert latency["merge_s_first_tenth"] > 0 and latency["merge_s_last_tenth"] > 0
    assert figures["rss"]["peak_tree_mb"] >= figures["rss"]["peak_driver_mb"] > 0
    for name, images in (("png", 120), ("photo", 24)):
        profile = figures[name]
        assert profile["images"] == images and profile["r3"]["images"] == images and profile["r3"]["processes"] >= 1
        assert profile["r1_images_per_s"] > 0 and profile["r3_images_per_s"] > 0
        assert profile["ratio_to_r3_launch_to_last"] == pytest.approx(
            profile["images_per_s"] / profile["r3_images_per_s"], abs=1e-3
        )
        assert profile["cpu_s_per_1000_images"] > 0
        if profile["steady"]["batches"]:  # more than one batch: a steady state to report
            assert profile["ratio_to_r3"] == pytest.approx(
                profile["steady_images_per_s"] / profile["r3_images_per_s"], abs=1e-3
            )
    assert figures["png"]["images_per_s"] == figures["images_per_s"]
    assert figures["latency_p95_s"] == latency["p95_s"] and figures["latency_offered_per_s"] == 30
    lull = figures["lull"]
    assert (
        lull["lull_s"] == 2 and lull["warm_s"] > 0 and 0 < lull["after_lull_s"] == figures["first_batch_after_lull_s"]
    )
    # A query stopped before its first batch used to leave its py4j connection's thread behind.
    assert latency["driver_python_threads"]["after"] <= latency["driver_python_threads"]["before"]


@pytest.mark.spark
@pytest.mark.slow
def test_the_shadow_phase_reports_images_per_s_with_shadow_off_and_on(spark, settings: Settings) -> None:
    from infra import registry
    from streams.scoring.query import run_scoring

    base = bench_state(settings.model_copy(update={"champion_check_s": 0.5}))
    register_champion(base, tiny_cnn(IMAGE_SIZE, len(CLASSES)), class_names=CLASSES, image_size=IMAGE_SIZE)
    root = base.state_dir.parent
    _write_shapes(root / "images", 30, seed=0)
    _write_shapes(root / "warmup", 6, seed=99)
    run_scoring(_variant(base, "warm"), source=root / "warmup", once=True, handle_signals=False)  # as bench_score

    def add_challenger(target: Settings) -> str:
        model = tiny_cnn(IMAGE_SIZE, len(CLASSES), seed=1)
        return register_version(target, model, class_names=CLASSES, image_size=IMAGE_SIZE, alias=registry.CHALLENGER)

    figures = shadow_phase(base, root / "images", root / "warmup", add_challenger=add_challenger, rounds=2)

    assert figures["images"] == figures["shadow_rows"] == 30  # every image scored twice
    assert figures["challenger_version"] == "2" and figures["fraction"] == 1.0 and figures["rounds"] == 2
    assert len(figures["off_images_per_s_all"]) == len(figures["on_images_per_s_all"]) == len(figures["ratios"]) == 2
    assert all(rate > 0 for rate in figures["off_images_per_s_all"] + figures["on_images_per_s_all"])
    on, off = figures["on_images_per_s_all"], figures["off_images_per_s_all"]
    assert figures["ratios"] == pytest.approx([on[0] / off[0], on[1] / off[1]], rel=0.01)
    assert figures["ratio"] == pytest.approx(sum(figures["ratios"]) / 2, abs=0.001)  # the median of two
    assert figures["target"] == SHADOW_TARGET and figures["meets_target"] == (figures["ratio"] >= SHADOW_TARGET)
    assert registry.version_by_alias(base, registry.CHALLENGER) is None  # later phases score without shadow


@pytest.mark.spark
@pytest.mark.slow
def test_both_engines_run_side_by_side_and_score_next_to_the_driver(spark, settings: Settings) -> None:
    base = bench_state(settings)
    version = register_champion(base, tiny_cnn(IMAGE_SIZE, len(CLASSES)), class_names=CLASSES, image_size=IMAGE_SIZE)
    figures = bench_engines(
        base,
        ["delta-rs", "spark"],
        model={"kind": "tiny", "version": version},
        images=100,
        offered_per_s=20,
        latency_s=2,
        seed_rows=2000,
        merge_images=40,
        photos=0,
        lull_s=0,
        log=lambda _message: None,
    )
    runs = figures["engines"]
    for engine, run in runs.items():
        assert run["lake_engine"] == engine
        assert run["images"] == run["rows_in_delta"] == run["rows_with_bytes"] == 100
        assert run["latency"]["committed"] == run["latency"]["images"] == 40
    side = figures["side_by_side"]
    # A local master and a local folder: with either engine the stream's own processes score, so the
    # driver holds each batch's PNGs (the executors' path, which holds none, is test_query's).
    for engine in ("spark", "delta-rs"):
        assert side["engines"][engine]["driver_image_mb_per_batch_max"] > 0.01
    ratio = side["targets"]["spark_over_delta_rs_images_per_s"]
    assert ratio == pytest.approx(runs["spark"]["images_per_s"] / runs["delta-rs"]["images_per_s"], abs=1e-3)
    assert side["targets"]["spark_at_least_0.5x"] == (ratio >= 0.5)
    assert side["targets"]["spark_at_least_0.7x"] == (ratio >= 0.7)
