"""``lakesight bench train``: train the default model on the digits and score the digits holdout.

The CLI writes the digits and ingests their train split (labeled) into a fresh lake; here
``train`` runs as usual on that lake, and the registered version is scored on the holdout images
it never saw, through the registry, on raw bytes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from infra.settings import Settings
from training.pipeline import Progress, TrainOptions, train


def bench_train(
    local: Settings,
    options: TrainOptions | None = None,
    *,
    holdout: Path,
    ingested_images: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Figures of one training run on ``local``'s lake: holdout accuracy, seconds, training images/s, device.

    ``holdout``: a folder of ``<label>/<image>`` files the run never saw.
    """
    from infra.registry import load_classifier
    from training.evaluation import accuracy

    options = options or TrainOptions()
    started = time.perf_counter()
    result = train(local, options, progress=progress)
    seconds = time.perf_counter() - started

    images = sorted(holdout.rglob("*.png"))
    classifier, _ = load_classifier(local, result.model_version)
    predicted = list(classifier.classify([p.read_bytes() for p in images])["label"])
    return {
        "holdout_accuracy": round(accuracy([p.parent.name for p in images], predicted), 4),
        "seconds": round(seconds, 1),
        "train_seconds": round(result.train_seconds, 1),
        "train_images_per_s": round(result.train_images_per_s, 1),
        "device": result.device,
        "epochs": options.epochs,
        "model": options.model,
        "workers": options.workers,
        "strategy": options.strategy,
        "feed": options.feed,
        "holdout_images": len(images),
        "ingested_images": ingested_images,
        "test_accuracy": round(result.accuracy, 4),
        "model_version": result.model_version,
        "delta_version": result.delta_version,
        "state_dir": str(local.state_dir.parent),
    }
