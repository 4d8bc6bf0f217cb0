"""What a training run records in MLflow beyond params and metrics: where it came from
(git commit, Delta version), the input dataset, and evaluation artifacts."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infra.redaction import redact_text
from infra.registry import TAG_DELTA_VERSION
from training.data.feed import Snapshot

TAG_GIT_COMMIT = "git_commit"
_REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str | None:
    """The repository's HEAD commit, or None outside a git checkout (read-only)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def run_tags(snapshot: Snapshot) -> dict[str, str]:
    tags = {TAG_DELTA_VERSION: str(snapshot.delta_version), "table": redact_text(snapshot.table_uri)}
    commit = git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
        tags["mlflow.source.git.commit"] = commit
    return tags


def snapshot_params(snapshot: Snapshot) -> dict[str, Any]:
    counts = snapshot.split_counts()
    return {
        "delta_version": snapshot.delta_version,
        "table": redact_text(snapshot.table_uri),
        "rows": snapshot.rows,
        "train_rows": counts.get("train", 0),
        "validation_rows": counts.get("validation", 0),
        "test_rows": counts.get("test", 0),
        "skipped_rows": sum(snapshot.skipped.values()),
        "unlabeled_rows": snapshot.unlabeled,
        "image_size": snapshot.image_size,
        "num_classes": len(snapshot.class_names),
        "class_names": ",".join(snapshot.class_names)[:500],
    }


def log_dataset(snapshot: Snapshot) -> None:
    """Record the Delta snapshot as the run's input: table path, version, row count, digest."""
    import mlflow
    from mlflow.data.delta_dataset_source import DeltaDatasetSource
    from mlflow.data.pandas_dataset import from_pandas

    source = DeltaDatasetSource(path=snapshot.table_uri, delta_table_version=snapshot.delta_version)
    dataset = from_pandas(
        snapshot.describe(),
        source=source,
        targets="label",
        name=f"images@v{snapshot.delta_version}",
        digest=snapshot.digest(),
    )
    mlflow.log_input(dataset, context="training")
    if snapshot.skipped:
        mlflow.log_dict(dict(snapshot.skipped), "data/skipped_rows.json")


def log_evaluation(truth: Sequence[str], predicted: Sequence[str | None], class_names: Sequence[str]) -> dict[str, Any]:
    """Log a confusion-matrix PNG and a per-class report for the test split; return the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    from sklearn.metrics import classification_report, confusion_matrix

    names = list(class_names)
    shown = [p if p is not None else "(error)" for p in predicted]
    labels = names + (["(error)"] if "(error)" in shown else [])
    matrix = confusion_matrix(list(truth), shown, labels=labels)
    report = classification_report(list(truth), shown, labels=names, output_dict=True, zero_division=0)
    side = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (row, col), value in np.ndenumerate(matrix):
        if value:
            ax.text(col, row, str(value), ha="center", va="center", fontsize=8)
    ax.set_title("confusion matrix (test split)")
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as folder:
        png = Path(folder) / "confusion_matrix.png"
        fig.savefig(png, dpi=100)
        plt.close(fig)
        mlflow.log_artifact(str(png), "evaluation")
    mlflow.log_dict(report, "evaluation/per_class_report.json")
    mlflow.log_text(
        classification_report(list(truth), shown, labels=names, zero_division=0), "evaluation/per_class_report.txt"
    )
    mlflow.log_dict({"labels": labels, "matrix": matrix.tolist()}, "evaluation/confusion_matrix.json")
    return report
