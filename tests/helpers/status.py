"""Builders for the status tests: a registry the way training leaves it, and the stream status file
the way a running, and a killed, scoring stream leaves it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra import registry
from infra.core import promotion
from infra.settings import Settings
from infra.status_files import read_stream_status

ROOT = Path(__file__).resolve().parents[2]


def batch_fields(batch_id: int = 0, *, rows: int = 10, errors: int = 0, sent: int = 0, **fields: Any) -> dict[str, Any]:
    """The fields of a ``streams.scoring.progress.BatchRecord`` (a committed batch); ``fields`` override."""
    return {
        "batch_id": batch_id,
        "rows": rows,
        "errors": errors,
        "inserted": rows,
        "updated": 0,
        "sent_to_labeling": sent,
        "model_version": "1",
        "executors_s": 0.5,
        "pool_s": None,
        "driver_s": 0.1,
        "merge_s": 0.05,
        "compact_s": None,
        "rows_per_s": 200.0,
        "table_version": batch_id + 1,
        "committed_at": 1_700_000_000.0,
        **fields,
    }


def promote_versions(settings: Settings, accuracies: list[float], *, min_pairs: int = 0) -> str | None:
    """Register one version per accuracy in the real MLflow registry, each with a run, and promote
    each as training does (``promotion_decision`` + ``record_promotion``: alias and tags); returns
    the champion. ``min_pairs`` 0 (the default here) promotes on the split alone; more makes a
    split winner the challenger.

    The versions point at an empty folder: status reads only the registry, never the artifacts.
    """
    client = registry.client(settings)
    if not registry.versions(settings):
        client.create_registered_model(settings.model_name)
    source = Path(settings.mlflow_artifact_root) / "empty-model"
    source.mkdir(parents=True, exist_ok=True)
    experiment = registry.ensure_experiment(settings, "status-tests")
    for accuracy in accuracies:
        run = client.create_run(experiment)
        version = client.create_model_version(settings.model_name, source=str(source), run_id=run.info.run_id).version
        current = registry.champion_version(settings)
        champion_accuracy = float(current.tags[registry.TAG_ACCURACY]) if current is not None else None
        decision = promotion.promotion_decision(
            accuracy, champion_accuracy, settings.promotion_margin, min_pairs=min_pairs
        )
        promotion.record_promotion(
            settings,
            version,
            decision,
            accuracy=accuracy,
            champion_version=current.version if current is not None else None,
            champion_accuracy=champion_accuracy,
        )
        registry.set_version_tags(settings, version, {registry.TAG_DELTA_VERSION: 3})
    current = registry.champion_version(settings)
    return None if current is None else str(current.version)


@contextmanager
def stream_process(settings: Settings, **batch: Any) -> Iterator[subprocess.Popen[str]]:
    """A child process that writes the status file as a running scoring stream does (the stream's
    own ``ScoreStatus``: running, one committed batch, its heartbeat on) until the block ends;
    then it is SIGKILLed, like a crash, and reaped, so its pid is gone from the process table."""
    code = textwrap.dedent(
        f"""
        import time
        from infra.settings import Settings
        from streams.scoring.progress import BatchRecord, ScoreStatus

        status = ScoreStatus(Settings(state_dir={str(settings.state_dir)!r}), source="arrivals:/a", query_name="q")
        status.update(state="running")
        status.batch(BatchRecord(**{batch_fields(**batch)!r}))
        with status.heartbeat():
            print("ready", flush=True)
            time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready", child.wait(60)
        yield child
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(60)
        if child.stdout is not None:
            child.stdout.close()


def status_left_by_a_killed_stream(settings: Settings, **batch: Any) -> dict[str, Any]:
    """The status file a killed scoring stream leaves behind: it still says ``running``."""
    with stream_process(settings, **batch) as child:
        pid = child.pid
    status = read_stream_status(settings)
    assert status is not None and status["state"] == "running" and status["pid"] == pid, status
    return status


def shadow_scored(settings: Settings, rows: list[tuple[str, str, str]], *, version: str, prefix: str = "live") -> None:
    """``images`` rows the way the stream and a label merge leave them: each (human label, the champion's
    prediction, the challenger ``version``'s shadow prediction)."""
    import datetime as dt

    import pyarrow as pa

    from infra.lake import Lake
    from infra.tables import IMAGES, LABEL_SOURCE_HUMAN

    n = len(rows)
    Lake(settings).merge(
        IMAGES,
        pa.table(
            {
                "path": [f"file:/{prefix}/{i}.png" for i in range(n)],
                "load_date": [dt.date(2026, 11, 22)] * n,
                "label": [r[0] for r in rows],
                "label_source": [LABEL_SOURCE_HUMAN] * n,
                "predicted_label": [r[1] for r in rows],
                "shadow_label": [r[2] for r in rows],
                "shadow_model_version": [version] * n,
            }
        ),
    )
