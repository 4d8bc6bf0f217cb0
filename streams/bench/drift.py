"""``lakesight bench drift``: false alarms on the training distribution, windows to detect shifted images.

Windows of generated shapes are scored by the registered champion (through ``infra.core.model_cache``,
as the stream's workers do) and fed to the stream's own :class:`DriftMonitor`, one window per
micro-batch, so the figures are those of the code the stream runs. The champion must have learnt
the shapes generator's default images (``training.bench.toy_models.train_shapes_champion``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from infra.core import model_cache
from infra.lake import Lake
from infra.local.sample_data import ShapeKnobs, shape_images
from infra.settings import Settings
from infra.tables import DRIFT_REPORTS
from streams.scoring.drift import DriftMonitor

SIZE = 32


@dataclass(frozen=True)
class Scenario:
    name: str
    knobs: dict[str, Any]


SHIFTS = (
    Scenario("darker", {"brightness": 0.6}),
    Scenario("brighter", {"brightness": 1.6}),
    Scenario("rotated", {"rotation": 45.0}),
    Scenario("gradient_background", {"background": "gradient"}),
)


def window_table(settings: Settings, knobs: ShapeKnobs, *, batch: int) -> pa.Table:
    """One window's images scored by the champion, as the stream's batch table has them."""
    items = list(shape_images(knobs))
    classifier, version = model_cache.current_classifier(settings)
    result = classifier.classify([data for _, data in items])
    return pa.table(
        {
            "path": [f"bench:/{batch}/{name}" for name, _ in items],
            "confidence": pa.array(result["confidence"].tolist(), pa.float64()),
            "predicted_label": result["label"].tolist(),
            "model_version": [version] * len(items),
            "embedding": pa.array(
                [None if v is None else v.tolist() for v in result["embedding"]], pa.list_(pa.float32())
            ),
        }
    )


def bench_drift(
    settings: Settings,
    *,
    windows: int = 20,
    images: int = 100,
    shift_windows: int = 3,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """The benchmark's JSON figures: false alarms, windows to detect each shift, cost per window."""
    settings = settings.model_copy(
        update={
            "drift_window_batches": 1,
            "drift_min_images": min(images, settings.drift_min_images),
            "drift_events": False,
        }
    )
    lake = Lake(settings)
    started = time.perf_counter()
    costs: list[float] = []
    log(f"{windows} windows of {images} images from the training distribution")
    alarms = _run(settings, lake, "same", {}, windows, images, costs)
    shifts: dict[str, dict[str, Any]] = {}
    for scenario in SHIFTS:
        log(f"{shift_windows} windows of {images} {scenario.name} images")
        flagged = _run(settings, lake, scenario.name, scenario.knobs, shift_windows, images, costs)
        shifts[scenario.name] = {
            "knobs": scenario.knobs,
            "windows_to_detect": next((i + 1 for i, drifted in enumerate(flagged) if drifted), None),
            "drifted_windows": sum(flagged),
        }
    return {
        "windows": windows,
        "images_per_window": images,
        "false_alarms": sum(alarms),
        "shifts": shifts,
        "thresholds": {"psi": settings.drift_psi_threshold, "alpha": settings.drift_alpha},
        "assess_seconds_per_window": {
            "mean": round(statistics.fmean(costs), 4),
            "max": round(max(costs), 4),
        },
        "targets": {"false_alarms_at_most": 1, "windows_to_detect_at_most": 3},
        "meets_targets": sum(alarms) <= 1
        and all(s["windows_to_detect"] is not None and s["windows_to_detect"] <= 3 for s in shifts.values()),
        "reports_written": lake.read(DRIFT_REPORTS, columns=["report_id"]).num_rows,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _run(
    settings: Settings,
    lake: Lake,
    name: str,
    knobs: dict[str, Any],
    windows: int,
    images: int,
    costs: list[float],
) -> list[bool]:
    """Whether each of ``windows`` windows of ``knobs`` images was found drifted."""
    monitor = DriftMonitor(settings, lake)
    flagged = []
    for index in range(windows):
        shapes = ShapeKnobs(count=images, size=SIZE, seed=1000 + index, holdout_fraction=0, prefix=name, **knobs)
        table = window_table(settings, shapes, batch=index)
        began = time.perf_counter()
        report = monitor.after_batch(table, app_id=f"bench:{name}", batch_id=index)
        costs.append(time.perf_counter() - began)
        flagged.append(bool(report and report["drifted"]))
    return flagged
