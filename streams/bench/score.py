"""``lakesight bench score``: throughput, raw-model ratio, latency under steady load, MERGE cost, memory.

Phases, all in one process and one SparkSession (so the Python workers stay warm):

1. warm-up over a few images (starts Spark, loads TensorFlow and the model in the workers);
2. throughput: an ``availableNow`` pass over N 64x64 shape PNGs, bytes stored in Delta;
3. latency and memory: the continuous query runs while a writer thread drops files atomically at
   a steady rate; latency = MERGE commit time - file modification time; the RSS of the process
   tree after each batch shows whether memory grows with the number of batches (run it long
   with ``--latency-seconds`` for a soak);
4. MERGE cost: the same batches into an empty ``images`` and into one seeded with many rows
   spread over load-date partitions;
5. the physical limit on the same images (``streams.bench.limits``): R1, forward only, and R3,
   read + decode + forward in one single-threaded process per core; the stream's steady state
   (after its first commit, from the per-batch records) is reported as a ratio to R3;
6. first batch after a lull: the continuous query idles ``lull_s`` (Spark reaps Python workers idle
   for a minute), then one image arrives; arrival to commit;
7. the photo profile: phases 2 and 5 again on 640×480 JPEGs, where decode and resize dominate.

With a challenger to register (``bench score --shadow``), the throughput pass is run again right
after phase 2, with shadow scoring off and on in turn (docs/PROMOTION.md): images/s off and on,
and their ratio against :data:`SHADOW_TARGET`. The challenger alias is dropped before the other phases.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import statistics
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from infra.settings import Settings
from streams.bench.limits import forward_only, read_decode_forward

CLASSES = ["circle", "square", "triangle", "cross"]
IMAGE_SIZE = 64
MEMORY_ROLES = ("driver", "jvm", "workers", "tree")
# Shadow scoring at fraction 1.0 scores every image twice; the stream should keep at least this
# share of its throughput (issue 17's target).
SHADOW_TARGET = 0.55
# How long the lull phase waits for one image's commit before it gives up.
LULL_TIMEOUT_S = 300.0


class Recorder:
    """Floats in a buffer allocated (and touched) up front, so recording them during a soak does not
    itself grow the process being measured (a Python list of floats adds ~40 bytes per value).
    """

    def __init__(self, capacity: int):
        self._values = np.full(max(1, capacity), np.nan)
        self._count = 0

    def add(self, value: float) -> None:
        if self._count < len(self._values):  # a full buffer drops the rest instead of growing
            self._values[self._count] = value
            self._count += 1

    def __len__(self) -> int:
        return self._count

    @property
    def values(self) -> list[float]:
        return self._values[: self._count].tolist()


class RssSampler:
    """Samples the RSS of this process and its children (JVM, Python workers) in the background.

    ``latest`` holds the last sample per role: ``driver`` (this process), ``jvm``, ``workers``
    (every other child: Spark's Python daemon and workers) and ``tree`` (all of them).
    """

    def __init__(self, every: float = 0.5):
        import psutil

        self._me = psutil.Process()
        self._every = every
        self._stop = threading.Event()
        self.driver = array("d")  # 8 bytes a sample: a long soak samples ~30,000 times an hour
        self.tree = array("d")
        self.latest: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(self._every):
            self._sample()

    def _sample(self) -> None:
        import psutil

        roles = {"driver": 0, "jvm": 0, "workers": 0}
        try:
            roles["driver"] = self._me.memory_info().rss
            for child in self._me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # a worker may exit meanwhile
                    roles["jvm" if child.name() == "java" else "workers"] += child.memory_info().rss
        except psutil.Error:
            return
        roles["tree"] = sum(roles.values())
        self.latest = {role: value / 2**20 for role, value in roles.items()}
        self.driver.append(self.latest["driver"])
        self.tree.append(self.latest["tree"])

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # a phase shorter than one interval still gets a sample at each end

    def summary(self) -> dict[str, Any]:
        if not self.tree:
            return {}
        quarter = max(1, len(self.tree) // 4)
        return {
            "peak_driver_mb": round(max(self.driver), 1),
            "peak_tree_mb": round(max(self.tree), 1),
            "tree_mb_first_quarter_max": round(max(self.tree[:quarter]), 1),
            "tree_mb_last_quarter_max": round(max(self.tree[-quarter:]), 1),
            "samples": len(self.tree),
        }


def _stream_threads() -> int:
    """The driver's threads, less lakesight's own services' (``lakesight-*``: in a test session another
    test's handler lanes come and go while the stream runs)."""
    return sum(1 for thread in threading.enumerate() if not thread.name.startswith("lakesight-"))


def _appender(into: list[float], figure: Callable[[Any], float]) -> Callable[[Any], None]:
    """An ``on_batch`` callback that appends one figure of every batch to ``into``."""
    return lambda result: into.append(figure(result))


def _both(*callbacks: Callable[[Any], None]) -> Callable[[Any], None]:
    def call(result: Any) -> None:
        for callback in callbacks:
            callback(result)

    return call


def _write_shapes(folder: Path, count: int, seed: int) -> list[Path]:
    from infra.local.sample_data import ShapeKnobs, shape_images, write_images

    write_images(shape_images(ShapeKnobs(count=count, size=IMAGE_SIZE, seed=seed, holdout_fraction=0)), out_dir=folder)
    return sorted(folder.rglob("*.png"))


def _write_photos(folder: Path, count: int) -> list[Path]:
    from infra.local.sample_data import photo_images, write_images

    write_images(photo_images(count, seed=0), out_dir=folder)
    return sorted(folder.rglob("*.jpg"))


def _variant(base: Settings, name: str) -> Settings:
    """``base`` with its own lake and checkpoints (same MLflow registry)."""
    root = base.state_dir / name
    return base.model_copy(update={"lake_root": str(root / "lake"), "checkpoint_root": str(root / "checkpoints")})


def seed_images(settings: Settings, rows: int, *, days: int = 200) -> None:
    """Write ``rows`` scored-looking rows without bytes across ``days`` load-date partitions (fast)."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from infra.lake import Lake
    from infra.tables import IMAGES, IMAGES_PARTITION, IMAGES_SCHEMA, conform

    lake = Lake(settings)
    lake.images()
    today = dt.datetime.now(dt.UTC).date()
    index = np.arange(rows)
    dates = [today - dt.timedelta(days=int(d)) for d in index % days]
    now = dt.datetime.now(dt.UTC)
    table = pa.table(
        {
            "path": [f"seed://images/{i:08d}.png" for i in index],
            "load_date": pa.array(dates, type=pa.date32()),
            "content_hash": [f"{i:064x}" for i in index],
            "size_bytes": pa.array(np.full(rows, 700, dtype=np.int64)),
            "predicted_label": pa.array([CLASSES[i % 4] for i in index]),
            "confidence": pa.array(np.full(rows, 0.9)),
            "model_version": pa.array(["0"] * rows),
            "scored_at": pa.array([now] * rows, type=pa.timestamp("us", tz="UTC")),
        }
    )
    write_deltalake(lake.uri(IMAGES), conform(table, IMAGES_SCHEMA), mode="append", partition_by=IMAGES_PARTITION)


def _growth(series: list[float]) -> dict[str, Any]:
    tenth = max(1, len(series) // 10)
    half = series[len(series) // 2 :]

    def per_100(values: list[float]) -> float:
        return round(float(np.polyfit(np.arange(len(values)), np.asarray(values), 1)[0]) * 100, 2)

    return {
        "mb_first_tenth_max": round(max(series[:tenth]), 1),
        "mb_last_tenth_max": round(max(series[-tenth:]), 1),
        "mb_max": round(max(series), 1),
        "growth_mb_per_100_batches": per_100(series),
        "growth_mb_per_100_batches_second_half": per_100(half) if len(half) >= 3 else None,
    }


def memory_growth(per_batch: dict[str, list[float]]) -> dict[str, Any]:
    """Whether the stream's memory grows with the number of batches: a line fitted to RSS per batch.

    One fit per role (driver, JVM, Python workers, whole tree), over all settled batches and over
    their second half (memory that levels off has a second-half slope near zero). The first tenth
    of the batches is left out (TensorFlow and the Python workers settle).
    """
    batches = min((len(series) for series in per_batch.values()), default=0)
    out: dict[str, Any] = {"batches": batches}
    for role in MEMORY_ROLES:
        settled = per_batch.get(role, [])[batches // 10 : batches]
        if len(settled) >= 3:
            out[role] = _growth(settled)
    return out


def jvm_heap_after_gc_mb(spark: Any) -> float:
    """Heap the JVM still holds after a full collection: its live data, unlike its RSS.

    The JVM's RSS grows until the heap reaches ``-Xmx`` whatever the live data does, so growth of
    the live heap between two points is what would show a leak there (local mode: driver and
    executors share this JVM).
    """
    jvm = spark._jvm
    jvm.java.lang.System.gc()
    usage = jvm.java.lang.management.ManagementFactory.getMemoryMXBean().getHeapMemoryUsage()
    return round(usage.getUsed() / 2**20, 1)


def _content_bytes(table: Any) -> int:
    """Bytes of image content in ``table`` (the values, not the column's offsets)."""
    import pyarrow.compute as pc

    return int(pc.sum(pc.binary_length(table.column("content"))).as_py() or 0)


def _median_of(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values), q)), 3)


def _offer_files(
    payloads: list[tuple[str, bytes]], incoming: Path, staging: Path, offered_per_s: float, started: threading.Event
) -> None:
    """The latency phase's load: ``payloads`` dropped into ``incoming`` at a steady rate once the query runs."""
    started.wait(120)
    time.sleep(3.0)  # the query's first (empty) trigger is planned before the load starts
    begin = time.monotonic()
    for index, (name, data) in enumerate(payloads):
        target = begin + index / offered_per_s
        pause = target - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        temp = staging / Path(name).name
        temp.write_bytes(data)
        os.replace(temp, incoming / Path(name).name)  # atomic: the source never sees half a file


def _latency_phase(
    settings: Settings, root: Path, *, offered_per_s: float, seconds: float, clean_source: str = "archive"
) -> dict[str, Any]:
    from infra.local.sample_data import ShapeKnobs, shape_images
    from infra.spark import get_spark
    from streams.scoring.query import run_scoring

    # An always-on folder stream should move what it has scored away (see docs/STREAMING.md):
    # otherwise every trigger lists everything that ever arrived.
    settings = settings.model_copy(
        update={"score_clean_source": clean_source, "score_archive_dir": str(root / "latency-archive")}
    )

    count = int(offered_per_s * seconds)
    payloads = list(shape_images(ShapeKnobs(count=count, size=IMAGE_SIZE, seed=11, holdout_fraction=0, prefix="lat")))
    incoming, staging = root / "latency", root / "latency-staging"
    incoming.mkdir(parents=True)
    staging.mkdir(parents=True)
    # Every image commits in a batch of at least one image: ``count`` bounds the images and the batches.
    latencies, merges = Recorder(count), Recorder(count)
    rss_per_batch = {role: Recorder(count) for role in MEMORY_ROLES}
    stop = threading.Event()
    started = threading.Event()
    rss = RssSampler(every=0.25)

    def on_batch(result: Any) -> None:
        merges.add(result.outcome.seconds)
        for modified in result.table.column("modified_at").to_pylist():
            if modified is not None:
                latencies.add(result.committed_at - modified.timestamp())
        sample = rss.latest
        if sample:
            for role, recorder in rss_per_batch.items():
                recorder.add(sample[role])

    writer_thread = threading.Thread(
        target=_offer_files, args=(payloads, incoming, staging, offered_per_s, started), daemon=True
    )
    writer_thread.start()
    result: dict[str, Any] = {}

    def run() -> None:
        result["report"] = run_scoring(
            settings,
            source=incoming,
            stop_event=stop,
            on_batch=on_batch,
            on_start=lambda _q: started.set(),
            handle_signals=False,
        )

    runner = threading.Thread(target=run, daemon=True)
    live_heap_before = jvm_heap_after_gc_mb(get_spark(settings))
    threads_before = _stream_threads()
    with rss:
        runner.start()
        writer_thread.join()
        deadline = time.monotonic() + 120
        while len(latencies) < count and time.monotonic() < deadline and runner.is_alive():
            time.sleep(0.2)
        stop.set()
        runner.join(120)
    live_heap_after = jvm_heap_after_gc_mb(get_spark(settings))
    threads_after = _stream_threads() - (writer_thread.is_alive() + runner.is_alive())
    report = result.get("report")
    return {
        "offered_per_s": offered_per_s,
        "images": count,
        "committed": len(latencies),
        "trigger_s": settings.score_trigger_s,
        "p50_s": _percentile(latencies.values, 50),
        "p95_s": _percentile(latencies.values, 95),
        "max_s": round(max(latencies.values), 3) if len(latencies) else None,
        "batches": report.batches if report else None,
        "memory": memory_growth({role: recorder.values for role, recorder in rss_per_batch.items()}),
        "jvm_heap_after_gc_mb": {"before": live_heap_before, "after": live_heap_after},
        # Python threads in the driver before the stream and after it stopped: a query per fresh
        # checkpoint must not leave one behind (infra.spark.CallbackConnections).
        "driver_python_threads": {"before": threads_before, "after": threads_after},
        "merge_s_first_tenth": _median_of(merges.values[: max(1, len(merges) // 10)]),
        "merge_s_last_tenth": _median_of(merges.values[-max(1, len(merges) // 10) :]),
        "compact_every": settings.score_compact_every,
        "clean_source": clean_source,
        "checkpoint_max_files": settings.score_checkpoint_max_files,
        "checkpoints_retired": report.checkpoints_retired if report else None,
    }


def _merge_phase(base: Settings, images: list[Path], root: Path, seed_rows: int) -> dict[str, Any]:
    from streams.scoring.query import run_scoring

    folder = root / "merge-images"
    folder.mkdir(parents=True)
    for path in images:
        os.link(path, folder / path.name)
    # Smaller batches than the throughput run: several samples per table, medians reported.
    small = base.model_copy(
        update={"score_max_files_per_trigger": max(1, len(images) // 4), "score_max_bytes_per_trigger": 0}
    )
    empty = _variant(small, "merge-empty")
    seeded = _variant(small, "merge-seeded")
    # The harder case: every seeded row in today's partition, the one the stream writes to.
    same_day = _variant(small, "merge-seeded-today")
    started = time.perf_counter()
    seed_images(seeded, seed_rows)
    seed_seconds = time.perf_counter() - started
    seed_images(same_day, seed_rows, days=1)
    figures: dict[str, Any] = {"batch_files": small.score_max_files_per_trigger, "batches_each": 0}
    for name, settings in (("empty", empty), ("seeded", seeded), ("seeded_today", same_day)):
        merges: list[float] = []
        run_scoring(
            settings,
            source=folder,
            once=True,
            handle_signals=False,
            on_batch=_appender(merges, lambda result: result.outcome.seconds),
        )
        figures[f"seconds_per_batch_{name}"] = round(statistics.median(merges), 4)
        figures[f"seconds_per_batch_{name}_all"] = [round(m, 3) for m in merges]
        figures["batches_each"] = len(merges)
    figures["seeded_rows"] = seed_rows
    figures["seed_seconds"] = round(seed_seconds, 1)
    empty_s = figures["seconds_per_batch_empty"]
    for name in ("seeded", "seeded_today"):
        figures[f"{name}_over_empty"] = round(figures[f"seconds_per_batch_{name}"] / empty_s, 2)
    return figures


def shadow_phase(
    base: Settings,
    source: Path,
    warmup: Path,
    *,
    add_challenger: Callable[[Settings], str],
    fraction: float = 1.0,
    rounds: int = 3,
) -> dict[str, Any]:
    """The throughput pass over ``source`` with shadow scoring off and on, alternately, ``rounds`` times.

    ``add_challenger`` registers a version as ``challenger`` in ``base``'s registry and returns it;
    the workers load it on a pass over ``warmup`` first, as the warm-up did for the champion. "Off"
    is ``shadow_fraction`` 0, where the stream does not even look the challenger up, as with none.
    Each round's ratio compares two passes run one after the other, so load from elsewhere on the
    machine moves both; the median round is reported. The alias is dropped afterwards, so later
    phases score without shadow.
    """
    from infra.registry import CHALLENGER, drop_alias
    from streams.scoring.query import run_scoring

    version = add_challenger(base)
    time.sleep(base.champion_check_s)  # the workers looked the alias up during phase 2: let that expire
    on_base, off_base = (base.model_copy(update={"shadow_fraction": f}) for f in (fraction, 0.0))
    run_scoring(_variant(on_base, "shadow-warmup"), source=warmup, once=True, handle_signals=False)
    passes: dict[str, list[Any]] = {"off": [], "on": []}
    try:
        for index in range(rounds):
            for name, settings in (("off", off_base), ("on", on_base)):
                variant = _variant(settings, f"shadow-{name}-{index}")
                report = run_scoring(variant, source=source, once=True, handle_signals=False)
                passes[name].append((report, variant))
    finally:
        drop_alias(base, CHALLENGER, version)
    return _shadow_figures(passes, version, fraction)


def _shadow_figures(passes: dict[str, list[Any]], version: str, fraction: float) -> dict[str, Any]:
    from infra.lake import Lake
    from infra.tables import IMAGES

    rates = {name: [report.rows / report.seconds for report, _ in runs] for name, runs in passes.items()}
    ratios = [on / off for off, on in zip(rates["off"], rates["on"], strict=True)]
    last_on = passes["on"][-1][1]
    shadowed = Lake(last_on).read(IMAGES, columns=["shadow_model_version"]).column("shadow_model_version")
    ratio = round(statistics.median(ratios), 3)
    return {
        "fraction": fraction,
        "challenger_version": version,
        "rounds": len(ratios),
        "images": passes["on"][-1][0].rows,
        "shadow_rows": shadowed.to_pylist().count(version),
        "off_images_per_s": round(statistics.median(rates["off"]), 1),
        "on_images_per_s": round(statistics.median(rates["on"]), 1),
        "off_images_per_s_all": [round(r, 1) for r in rates["off"]],
        "on_images_per_s_all": [round(r, 1) for r in rates["on"]],
        "ratios": [round(r, 3) for r in ratios],
        "ratio": ratio,
        "target": SHADOW_TARGET,
        "meets_target": ratio >= SHADOW_TARGET,
    }


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its children alive now: driver, JVM, workers."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker may exit meanwhile
            total += sum(child.cpu_times()[:2])
    return total


def _mean_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.mean(known), 3) if known else None


def steady_state(records: list[Any]) -> dict[str, Any]:
    """Images/s after the first commit, from the per-batch records: the rows of every later batch over
    the time from the first commit to the last, and where a batch's time went on average."""
    if len(records) < 2:  # one batch: no steady state to speak of
        return {"batches": 0, "images_per_s": None}
    later = records[1:]
    span = later[-1].committed_at - records[0].committed_at
    return {
        "batches": len(later),
        "images_per_s": round(sum(r.rows for r in later) / span, 1),
        "seconds_per_batch": round(span / len(later), 3),
        "executors_s_per_batch": round(statistics.mean(r.executors_s for r in later), 3),
        "pool_s_per_batch": _mean_or_none([r.pool_s for r in later]),
        "driver_s_per_batch": round(statistics.mean(r.driver_s for r in later), 3),
        "merge_s_per_batch": round(statistics.mean(r.merge_s for r in later), 3),
    }


def throughput_pass(settings: Settings, source: Path, on_batch: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """One ``availableNow`` pass over ``source``: launch to last commit, the steady state, CPU per image."""
    from streams.scoring.query import run_scoring

    records: list[Any] = []
    cpu_before = _cpu_seconds()
    report = run_scoring(
        settings,
        source=source,
        once=True,
        handle_signals=False,
        on_batch=_both(_appender(records, lambda result: result.record), *([on_batch] if on_batch else [])),
    )
    cpu = _cpu_seconds() - cpu_before
    return {
        "report": report,
        "images": report.rows,
        "images_per_s": round(report.rows / report.seconds, 1),
        "steady": steady_state(records),
        "cpu_s_per_1000_images": round(cpu / max(report.rows, 1) * 1000, 2),
    }


def profile_figures(stream: dict[str, Any], r1: dict[str, Any], r3: dict[str, Any]) -> dict[str, Any]:
    """One image profile's figures: the stream against R1 and R3 on the same images."""
    steady = stream["steady"]["images_per_s"]
    return {
        "images": stream["images"],
        "images_per_s": stream["images_per_s"],
        "steady_images_per_s": steady,
        "r1_images_per_s": r1["images_per_s"],
        "r3_images_per_s": r3["images_per_s"],
        "ratio_to_r3": round(steady / r3["images_per_s"], 3) if steady else None,
        "ratio_to_r3_launch_to_last": round(stream["images_per_s"] / r3["images_per_s"], 3),
        "ratio_to_r1": round(stream["images_per_s"] / r1["images_per_s"], 3),
        "steady": stream["steady"],
        "cpu_s_per_1000_images": stream["cpu_s_per_1000_images"],
        "r3": r3,
    }


def _lull_phase(settings: Settings, root: Path, *, lull_s: float) -> dict[str, Any]:
    """The continuous query scores one image, idles ``lull_s``, then gets one more: its arrival to commit."""
    from infra.local.sample_data import ShapeKnobs, shape_images
    from streams.scoring.query import run_scoring

    incoming, staging = root / "lull", root / "lull-staging"
    incoming.mkdir(parents=True)
    staging.mkdir(parents=True)
    payloads = list(shape_images(ShapeKnobs(count=2, size=IMAGE_SIZE, seed=13, holdout_fraction=0, prefix="lull")))
    committed: list[float] = []
    arrived = threading.Condition()
    started = threading.Event()
    stop = threading.Event()

    def on_batch(result: Any) -> None:
        with arrived:
            committed.extend(
                result.committed_at - m.timestamp() for m in result.table.column("modified_at").to_pylist()
            )
            arrived.notify_all()

    def drop(index: int) -> None:
        name, data = payloads[index]
        temp = staging / Path(name).name
        temp.write_bytes(data)
        os.replace(temp, incoming / Path(name).name)
        with arrived:
            if not arrived.wait_for(lambda: len(committed) > index, timeout=LULL_TIMEOUT_S):
                raise RuntimeError(
                    f"image {index + 1} of the lull phase was not committed within {LULL_TIMEOUT_S:.0f}s"
                )

    runner = threading.Thread(
        target=run_scoring,
        kwargs={
            "settings": settings,
            "source": incoming,
            "stop_event": stop,
            "on_batch": on_batch,
            "on_start": lambda _q: started.set(),
            "handle_signals": False,
        },
        daemon=True,
    )
    runner.start()
    try:
        started.wait(LULL_TIMEOUT_S)
        drop(0)
        time.sleep(lull_s)  # the lull itself is what is measured against
        drop(1)
    finally:
        stop.set()
        runner.join(LULL_TIMEOUT_S)
    return {"lull_s": lull_s, "warm_s": round(committed[0], 3), "after_lull_s": round(committed[1], 3)}


# The shares of delta-rs's images/s the spark engine on local[2] should keep: issue 15's, then
# issue 32's (docs/DEPLOY.md, "The lake engine"); each is reported.
ENGINE_TARGETS = (0.5, 0.7)
# MERGE cost from an empty table to one of 200k rows, on either engine.
MERGE_GROWTH_TARGET = 1.5


def bench_engines(base: Settings, engines: list[str], **options: Any) -> dict[str, Any]:
    """:func:`bench_score` once per lake engine, each in its own state folder (same registry), and the
    figures side by side against the targets."""
    from infra.spark import get_spark

    if "spark" in engines:  # the one session of this process must carry the spark engine's jars
        get_spark(base.model_copy(update={"lake_engine": "spark"}), "lakesight-bench")
    root = base.state_dir.parent
    runs = {}
    for engine in engines:
        state = root / engine / "state"
        state.mkdir(parents=True, exist_ok=True)
        runs[engine] = bench_score(base.model_copy(update={"lake_engine": engine, "state_dir": state}), **options)
    return {"engines": runs, "side_by_side": engine_comparison(runs)}


def engine_comparison(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline figures of each engine's run, and whether they meet the targets."""
    rows = {
        engine: {
            "images_per_s": run["images_per_s"],
            "ratio_to_raw_model": run["ratio"],
            "p95_latency_s": run["p95_latency_s"],
            "merge_s_per_batch_empty": run["merge"]["seconds_per_batch_empty"],
            "merge_s_per_batch_seeded": run["merge"]["seconds_per_batch_seeded"],
            "merge_seeded_over_empty": run["merge"]["seeded_over_empty"],
            "seeded_rows": run["merge"]["seeded_rows"],
            "driver_peak_rss_mb": run["rss"].get("peak_driver_mb"),
            "driver_collected_mb_per_batch_max": run["driver_collected_mb_per_batch_max"],
            "driver_image_mb_per_batch_max": run["driver_image_mb_per_batch_max"],
        }
        for engine, run in runs.items()
    }
    targets: dict[str, Any] = {
        f"{engine}_merge_growth_within_{MERGE_GROWTH_TARGET}x": row["merge_seeded_over_empty"] <= MERGE_GROWTH_TARGET
        for engine, row in rows.items()
    }
    if {"spark", "delta-rs"} <= rows.keys():
        ratio = rows["spark"]["images_per_s"] / rows["delta-rs"]["images_per_s"]
        targets["spark_over_delta_rs_images_per_s"] = round(ratio, 3)
        for share in ENGINE_TARGETS:
            targets[f"spark_at_least_{share}x"] = ratio >= share
    return {"engines": rows, "targets": targets}


def bench_state(settings: Settings) -> Settings:
    """A fresh state folder for one benchmark run under ``settings.state_dir``, with its tuning.

    The caller registers the model to benchmark there (as champion) before :func:`bench_score`.
    """
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    root = (settings.state_dir / "bench" / f"score-{stamp}").absolute()
    return Settings(
        state_dir=root / "state",
        spark_master=settings.spark_master,
        spark_conf=settings.spark_conf,
        lake_engine=settings.lake_engine,
        allow_local_paths_on_cluster=settings.allow_local_paths_on_cluster,
        labeling_daily_budget=0,  # the hand-off is measured by tests, not here (no blob store needed)
        score_trigger_s=settings.score_trigger_s,
        score_max_files_per_trigger=settings.score_max_files_per_trigger,
        score_max_bytes_per_trigger=settings.score_max_bytes_per_trigger,
        score_checkpoint_max_files=settings.score_checkpoint_max_files,
        champion_check_s=settings.champion_check_s,
    )


def bench_score(
    base: Settings,
    *,
    model: dict[str, Any],
    images: int = 20000,
    offered_per_s: float = 100.0,
    latency_s: float = 20.0,
    seed_rows: int = 200_000,
    merge_images: int = 4000,
    clean_source: str = "archive",
    log: Callable[[str], None] = print,
    add_challenger: Callable[[Settings], str] | None = None,
    shadow_fraction: float = 1.0,
    shadow_rounds: int = 3,
    photos: int = 2000,
    lull_s: float = 90.0,
) -> dict[str, Any]:
    """Run every phase in ``base`` (from :func:`bench_state`, champion registered); return the figures.

    ``model`` describes the registered champion for the report (kind, version). With
    ``add_challenger``, the throughput pass also runs with shadow scoring (:func:`shadow_phase`).
    """
    from infra.lake import Lake
    from infra.tables import IMAGES
    from streams.scoring.query import run_scoring

    root = base.state_dir.parent
    load_before = os.getloadavg()
    log(f"writing {images} PNGs")
    started = time.perf_counter()
    files = _write_shapes(root / "images", images, seed=0)
    write_seconds = time.perf_counter() - started
    log("warm-up (Spark, TensorFlow in the workers)")
    _write_shapes(root / "warmup", 200, seed=99)
    run_scoring(_variant(base, "warmup"), source=root / "warmup", once=True, handle_signals=False)

    log(f"throughput phase ({base.lake_engine} engine)")
    throughput = _variant(base, "throughput")
    collected: list[float] = []  # Arrow bytes the driver held per micro-batch
    image_bytes: list[float] = []  # of which image content
    with RssSampler() as rss:
        png_stream = throughput_pass(
            throughput,
            root / "images",
            _both(
                _appender(collected, lambda result: result.table.nbytes / 2**20),
                _appender(image_bytes, lambda result: _content_bytes(result.table) / 2**20),
            ),
        )
    report = png_stream["report"]
    rows = Lake(throughput).read(IMAGES, columns=["path", "content", "model_version"])
    stored = sum(1 for c in rows.column("content").to_pylist() if c)
    shadow = None
    if add_challenger is not None:
        log(f"throughput phase with shadow scoring at fraction {shadow_fraction}")
        shadow = shadow_phase(
            base,
            root / "images",
            root / "warmup",
            add_challenger=add_challenger,
            fraction=shadow_fraction,
            rounds=shadow_rounds,
        )
    log("latency phase")
    latency = _latency_phase(
        _variant(base, "latency"), root, offered_per_s=offered_per_s, seconds=latency_s, clean_source=clean_source
    )
    log("merge phase")
    merge = _merge_phase(base, files[:merge_images], root, seed_rows)
    log("the physical limit: R1 (forward only) and R3 (read + decode + forward, a process per core)")
    raw = forward_only(base, files, sample=min(len(files), 4000))
    png = profile_figures(png_stream, raw, read_decode_forward(base, files))
    photo = None
    if photos:
        log(f"photo profile: {photos} JPEGs of 640x480")
        photo_files = _write_photos(root / "photos", photos)
        photo_stream = throughput_pass(_variant(base, "photos"), root / "photos")
        photo_raw = forward_only(base, photo_files, sample=min(len(photo_files), 4000))
        photo = profile_figures(photo_stream, photo_raw, read_decode_forward(base, photo_files))
    lull = None
    if lull_s > 0:
        log(f"lull phase: the continuous query idles {lull_s:.0f}s, then one image arrives")
        lull = _lull_phase(_variant(base, "lull"), root, lull_s=lull_s)
    images_per_s = report.rows / report.seconds
    return {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": {**model, "image_size": IMAGE_SIZE, "classes": len(CLASSES)},
        "cores": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "images": report.rows,
        "rows_in_delta": rows.num_rows,
        "rows_with_bytes": stored,
        "batches": report.batches,
        "seconds": round(report.seconds, 2),
        "images_per_s": round(images_per_s, 1),
        "raw_model_images_per_s": raw["images_per_s"],
        "raw_model_sample": raw["images"],
        "ratio": round(images_per_s / raw["images_per_s"], 3),
        "png": png,
        "photo": photo,
        "latency_p95_s": latency["p95_s"],
        "latency_offered_per_s": offered_per_s,
        "first_batch_after_lull_s": lull["after_lull_s"] if lull else None,
        "lull": lull,
        "merge_seconds_per_batch_throughput_run": report.merge_seconds_mean,
        "lake_engine": base.lake_engine,
        "spark_master": base.spark_master,
        "driver_collected_mb_per_batch_max": round(max(collected), 3) if collected else None,
        "driver_image_mb_per_batch_max": round(max(image_bytes), 3) if image_bytes else None,
        "shadow": shadow,
        "latency": latency,
        "p50_latency_s": latency["p50_s"],
        "p95_latency_s": latency["p95_s"],
        "merge": merge,
        "rss": rss.summary(),
        "memory_over_batches": latency["memory"],
        "png_write_seconds": round(write_seconds, 1),
        "state_dir": str(root),
    }
