"""``lakesight bench train``: train the default model on the digits and score the digits holdout.

The digits are written with the sample-data helpers, their train split is ingested (labeled)
into a fresh lake, ``train`` runs as usual, and the registered version is scored on the
holdout images it never saw, through the registry, on raw bytes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from infra.settings import Settings
from training.pipeline import Progress, TrainOptions, train

DIGIT_CLASSES = [str(d) for d in range(10)]


def bench_settings(base: Settings, state_dir: Path) -> Settings:
    """``base`` with its own state (lake, checkpoints, MLflow) under ``state_dir``."""
    return Settings(state_dir=state_dir, spark_master=base.spark_master, spark_conf=base.spark_conf)


def bench_train(
    settings: Settings,
    options: TrainOptions | None = None,
    *,
    state_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Figures of one digits training run: holdout accuracy, seconds, training images/s, device."""
    from infra.registry import load_classifier
    from infra.sample_data import digits_images, write_images
    from streams.ingest import ingest
    from training.promotion import accuracy

    say = progress or (lambda _message: None)
    options = options or TrainOptions()
    folder = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="lakesight-bench-"))
    local = bench_settings(settings, folder / "state")
    digits = folder / "digits"
    if not (digits / "holdout").is_dir():
        say(f"writing the digits to {digits}")
        write_images(digits_images(), out_dir=digits)
    say("ingesting the train split (labeled)")
    report = ingest(local, str(digits / "train"), labeled=True, classes=DIGIT_CLASSES)
    started = time.perf_counter()
    result = train(local, options, progress=progress)
    seconds = time.perf_counter() - started

    holdout = sorted((digits / "holdout").rglob("*.png"))
    classifier, _ = load_classifier(local, result.model_version)
    predicted = list(classifier.classify([p.read_bytes() for p in holdout])["label"])
    return {
        "holdout_accuracy": round(accuracy([p.parent.name for p in holdout], predicted), 4),
        "seconds": round(seconds, 1),
        "train_seconds": round(result.train_seconds, 1),
        "train_images_per_s": round(result.train_images_per_s, 1),
        "device": result.device,
        "epochs": options.epochs,
        "model": options.model,
        "holdout_images": len(holdout),
        "ingested_images": report.inserted,
        "test_accuracy": round(result.accuracy, 4),
        "model_version": result.model_version,
        "delta_version": result.delta_version,
        "state_dir": str(folder),
    }
