"""A Spark standalone cluster (2 workers) and an MLflow tracking server, started once per test session.

Started the way a user starts them, ``lakesight stack start --spark-cluster`` in its own process,
and only when a ``cluster``-marked test asks (the fixture refuses others). The test process holds
the local[2] SparkSession of the other tests, and a process has one SparkContext, so everything
that drives the cluster runs as ``lakesight`` subprocesses with :attr:`ClusterStack.env`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.local.cluster import SparkCluster, TrackingServer, running_local_cluster
from infra.settings import Settings

EXPORT_LINE = re.compile(r"^export (LAKESIGHT_[A-Z_]+)=(.*)$")
# What a spark:// executor's log says for each task it ran (Spark's Executor class, INFO).
FINISHED_TASK = re.compile(r"Executor: Finished task")


@dataclass
class ClusterStack:
    cluster: SparkCluster
    tracking: TrackingServer
    state_dir: Path
    # What 'stack start --spark-cluster' printed for users to export.
    printed_env: dict[str, str]
    blob_port: int

    @property
    def env(self) -> dict[str, str]:
        """Everything a ``lakesight`` child needs to run on the cluster (its state dir comes from the test)."""
        return {**self.printed_env, "LAKESIGHT_LAKE_ENGINE": "spark", "LAKESIGHT_BLOB_PORT": str(self.blob_port)}

    def app_dirs(self) -> set[Path]:
        """Every application folder the workers hold (``<work_dir>/app-*``), one per driver that used them."""
        return {app for work_dir in self.cluster.work_dirs for app in work_dir.glob("app-*")}


def stack_cli(*args: str, state: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "stack", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "LAKESIGHT_STATE_DIR": str(state)},
        timeout=timeout,
    )


def printed_exports(stdout: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for line in stdout.splitlines() if (m := EXPORT_LINE.match(line.strip()))}


def finished_tasks(app_dirs: set[Path]) -> dict[str, int]:
    """``{"<worker>/<app>/<executor>": tasks finished}`` read from the executors' stderr logs."""
    counts = {}
    for app in app_dirs:
        for stderr in app.glob("*/stderr"):
            key = f"{app.parent.name}/{app.name}/{stderr.parent.name}"
            counts[key] = len(FINISHED_TASK.findall(stderr.read_text(errors="replace")))
    return counts


@pytest.fixture(scope="session")
def cluster_session(session_dir: Path, azurite_port: int) -> Iterator[ClusterStack]:
    state = session_dir / "cluster-stack"
    env = {"LAKESIGHT_BLOB_PORT": str(azurite_port)}  # the session's Azurite: 'stack start' finds it running
    started = time.perf_counter()
    result = stack_cli("start", "--spark-cluster", "--workers", "2", state=state, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"\ncluster stack started in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    found = running_local_cluster(Settings(state_dir=state))
    assert found is not None, result.stdout + result.stderr
    stack = ClusterStack(found.cluster, found.tracking, state, printed_exports(result.stdout), azurite_port)
    try:
        yield stack
    finally:
        stopped = stack_cli("stop", state=state, env=env)
        assert stopped.returncode == 0, stopped.stderr[-2000:]


@pytest.fixture
def cluster_stack(request: pytest.FixtureRequest, cluster_session: ClusterStack) -> ClusterStack:
    """The session's cluster, for ``cluster``-marked tests only (starting it costs most of a minute)."""
    if request.node.get_closest_marker("cluster") is None:
        raise pytest.UsageError(f"{request.node.nodeid} uses the Spark cluster but is not marked 'cluster'")
    return cluster_session
