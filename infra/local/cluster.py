"""A Spark standalone cluster and an MLflow tracking server on loopback, for runs that leave the driver.

``local[*]`` runs every task in the driver's JVM, so it cannot show what a real cluster needs:
executors in their own processes and work dirs, models and artifacts fetched over HTTP rather
than read from the driver's disk, a worker lost mid-stream. :class:`SparkCluster` starts a master
and N workers from the installed pyspark (its ``bin/spark-class``); :class:`TrackingServer` is an
MLflow server that proxies artifacts (``mlflow-artifacts:/``), so nothing a run logs lands on the
logging process's disk. Each process is a detached :class:`infra.processes.Service`, so
``lakesight stack stop --spark-cluster`` from another shell ends them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.local.stack import StackError, check_java, mlflow_server_env
from infra.processes import Service, free_port, log_tail, pid_alive
from infra.settings import Settings

LOOPBACK = "127.0.0.1"
# The master's and the tracking server's ports, written at start so 'stop' and 'status' (other
# processes) find the same services.
CLUSTER_FILE = "spark-cluster.json"
MASTER_SERVICE = "spark-master"
TRACKING_SERVICE = "mlflow-tracking"


def spark_home() -> Path:
    """The installed pyspark's folder: it ships ``bin/spark-class`` and the jars a standalone cluster runs."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def spark_class() -> Path:
    return spark_home() / "bin" / "spark-class"


def worker_service(index: int) -> str:
    return f"spark-worker-{index}"


def wait_for(what: str, ready: Callable[[], bool], services: list[Service], timeout: float) -> None:
    """Poll ``ready`` until true; a service that exits or a timeout is a :class:`StackError` with its log's tail."""
    deadline = time.monotonic() + timeout
    while not ready():
        for service in services:
            if service.pid() is None:
                raise StackError(service.exited(f"while waiting for {what}"))
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {s.name} ({s.log_file}):\n{log_tail(s.log_file)}" for s in services)
            raise StackError(f"{what} not ready within {timeout:.0f}s\n{tails}")
        time.sleep(0.5)


def get_json(url: str, timeout: float = 2.0) -> Any:
    """The JSON at ``url``; None when it does not answer (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class ClusterPorts:
    """What a started cluster listens on; written to the state dir for the other stack commands."""

    master_port: int
    master_ui_port: int
    tracking_port: int
    workers: int

    @classmethod
    def fresh(cls, workers: int) -> ClusterPorts:
        return cls(free_port(), free_port(), free_port(), workers)

    @classmethod
    def read(cls, settings: Settings) -> ClusterPorts | None:
        try:
            return cls(**json.loads((settings.run_dir / CLUSTER_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, settings: Settings) -> None:
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        (settings.run_dir / CLUSTER_FILE).write_text(json.dumps(self.__dict__))


class SparkCluster:
    """A standalone master and ``workers`` workers (``cores`` each, own work dirs) from the installed pyspark."""

    def __init__(
        self,
        settings: Settings,
        *,
        workers: int = 2,
        cores: int = 1,
        memory: str = "2g",
        master_port: int | None = None,
        master_ui_port: int | None = None,
    ):
        self.settings = settings
        self.workers = workers
        self.cores = cores
        self.memory = memory
        self.master_port = master_port or free_port()
        self.master_ui_port = master_ui_port or free_port()
        self.master = Service(MASTER_SERVICE, settings)
        self.worker_services = [Service(worker_service(i), settings) for i in range(workers)]

    @property
    def master_url(self) -> str:
        return f"spark://{LOOPBACK}:{self.master_port}"

    @property
    def master_json_url(self) -> str:
        return f"http://{LOOPBACK}:{self.master_ui_port}/json/"

    @property
    def root(self) -> Path:
        return self.settings.state_dir / "spark-cluster"

    @property
    def work_dirs(self) -> list[Path]:
        return [self.root / f"worker-{i}" for i in range(self.workers)]

    def env(self, work_dir: Path | None = None) -> dict[str, str]:
        # Loopback only, and executors run this interpreter (the virtualenv's packages).
        env = {
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": LOOPBACK,
            "SPARK_LOG_DIR": str(self.root / "logs"),
            "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
        }
        if work_dir is not None:
            env["SPARK_WORKER_DIR"] = str(work_dir)
        return env

    def master_argv(self) -> list[str]:
        return [
            str(spark_class()),
            "org.apache.spark.deploy.master.Master",
            "--host",
            LOOPBACK,
            "--port",
            str(self.master_port),
            "--webui-port",
            str(self.master_ui_port),
        ]

    def worker_argv(self, work_dir: Path) -> list[str]:
        return [
            str(spark_class()),
            "org.apache.spark.deploy.worker.Worker",
            self.master_url,
            "--host",
            LOOPBACK,
            "--cores",
            str(self.cores),
            "--memory",
            self.memory,
            "--work-dir",
            str(work_dir),
            "--webui-port",
            str(free_port()),
        ]

    def alive_workers(self) -> list[dict[str, Any]]:
        """The workers the master's JSON lists as ALIVE (empty while it does not answer)."""
        state = get_json(self.master_json_url) or {}
        return [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]

    def start(self, timeout: float = 90.0) -> SparkCluster:
        """Start the master, then the workers; return once all of them are ALIVE in the master's JSON."""
        check_java()
        if not spark_class().exists():
            raise StackError(f"the installed pyspark has no {spark_class()}: reinstall pyspark (make install)")
        for folder in (self.root / "logs", *self.work_dirs):
            folder.mkdir(parents=True, exist_ok=True)
        self.master.spawn(self.master_argv(), env=self.env())
        try:
            wait_for("the Spark master", lambda: get_json(self.master_json_url) is not None, [self.master], timeout)
            for index in range(self.workers):
                self.spawn_worker(index)
            self.wait_for_workers(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def spawn_worker(self, index: int) -> int:
        work_dir = self.work_dirs[index]
        return self.worker_services[index].spawn(self.worker_argv(work_dir), env=self.env(work_dir))

    def wait_for_workers(self, timeout: float = 90.0) -> None:
        """Return once all the workers are ALIVE in the master's JSON."""
        wait_for(
            f"{self.workers} ALIVE Spark workers",
            lambda: len(self.alive_workers()) >= self.workers,
            [self.master, *self.worker_services],
            timeout,
        )

    def restart_worker(self, index: int, timeout: float = 90.0) -> None:
        """Start worker ``index`` again (after :meth:`kill_worker`) and wait until every worker is ALIVE."""
        if self.worker_services[index].pid() is None:
            self.spawn_worker(index)
        self.wait_for_workers(timeout)

    def worker_pid(self, index: int) -> int | None:
        return self.worker_services[index].pid()

    def kill_worker(self, index: int) -> int:
        """SIGKILL worker ``index`` and its executors (its process group), as a lost machine; return its pid."""
        service = self.worker_services[index]
        pid = service.pid()
        if pid is None:
            raise StackError(f"{service.name} is not running")
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        return pid

    def stop(self) -> bool:
        """Stop the workers, then the master; True if any was running."""
        stopped = [service.stop() for service in reversed(self.worker_services)]
        return self.master.stop() or any(stopped)


class TrackingServer(Service):
    """``mlflow server`` on SQLite with artifact proxying: clients read and write artifacts over HTTP only."""

    def __init__(self, settings: Settings, *, port: int | None = None, database: Path | None = None):
        """``database``: an existing SQLite store to serve (default: a new one under the state dir)."""
        super().__init__(TRACKING_SERVICE, settings)
        self.port = port or free_port()
        self.database = database or self.root / "mlflow.db"

    @property
    def root(self) -> Path:
        return self.settings.state_dir / "mlflow-server"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def uri(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.database}",
            "--artifacts-destination",
            str(self.artifacts_dir),
            "--serve-artifacts",
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            # One worker process: the box is small and SQLite takes one writer anyway.
            "--workers",
            "1",
        ]

    def healthy(self) -> bool:
        return answers(f"{self.uri}/health")

    def start(self, timeout: float = 120.0) -> TrackingServer:
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.spawn(self.argv(), env=mlflow_server_env())
        try:
            wait_for("the MLflow tracking server", self.healthy, [self], timeout)
        except BaseException:
            self.stop()
            raise
        return self


def cluster_env(cluster: SparkCluster, tracking: TrackingServer) -> dict[str, str]:
    """The ``LAKESIGHT_*`` variables that point lakesight's commands at the cluster and the tracking server."""
    return {
        "LAKESIGHT_SPARK_MASTER": cluster.master_url,
        "LAKESIGHT_MLFLOW_TRACKING_URI": tracking.uri,
        # The lake, checkpoints and images are this machine's folders, which every loopback worker reads.
        "LAKESIGHT_ALLOW_LOCAL_PATHS_ON_CLUSTER": "true",
    }


@dataclass
class LocalCluster:
    """A started cluster and tracking server, as ``stack start --spark-cluster`` leaves them."""

    cluster: SparkCluster
    tracking: TrackingServer

    @property
    def env(self) -> dict[str, str]:
        return cluster_env(self.cluster, self.tracking)

    def stop(self) -> bool:
        stopped = self.cluster.stop()
        return self.tracking.stop() or stopped


def _services(settings: Settings, ports: ClusterPorts) -> LocalCluster:
    cluster = SparkCluster(
        settings, workers=ports.workers, master_port=ports.master_port, master_ui_port=ports.master_ui_port
    )
    return LocalCluster(cluster, TrackingServer(settings, port=ports.tracking_port))


def start_local_cluster(settings: Settings, *, workers: int = 2) -> LocalCluster:
    """Start (or find running) the cluster and tracking server of ``settings.state_dir``."""
    running = running_local_cluster(settings)
    if running is not None and running.tracking.healthy() and len(running.cluster.alive_workers()) >= workers:
        return running
    if running is not None:
        running.stop()
    ports = ClusterPorts.fresh(workers)
    started = _services(settings, ports)
    started.tracking.start()
    try:
        started.cluster.start()
    except BaseException:
        started.tracking.stop()
        raise
    ports.write(settings)
    return started


def running_local_cluster(settings: Settings) -> LocalCluster | None:
    """The cluster ``start_local_cluster`` left for this state dir, if its ports were written."""
    ports = ClusterPorts.read(settings)
    return None if ports is None else _services(settings, ports)


def stop_local_cluster(settings: Settings) -> bool:
    found = running_local_cluster(settings)
    (settings.run_dir / CLUSTER_FILE).unlink(missing_ok=True)
    return found is not None and found.stop()


def cluster_status(settings: Settings) -> list[dict[str, object]]:
    """One row per cluster process, like :func:`infra.local.stack.stack_status`."""
    found = running_local_cluster(settings)
    if found is None:
        return []
    alive = len(found.cluster.alive_workers())
    rows: list[dict[str, object]] = [
        {
            "service": MASTER_SERVICE,
            "pid": found.cluster.master.pid(),
            "healthy": alive >= found.cluster.workers,
            "address": f"{found.cluster.master_url} ({alive} of {found.cluster.workers} workers alive)",
            "log": str(found.cluster.master.log_file),
        }
    ]
    for index, service in enumerate(found.cluster.worker_services):
        rows.append(
            {
                "service": service.name,
                "pid": service.pid(),
                "healthy": service.pid() is not None,
                "address": str(found.cluster.work_dirs[index]),
                "log": str(service.log_file),
            }
        )
    rows.append(
        {
            "service": TRACKING_SERVICE,
            "pid": found.tracking.pid(),
            "healthy": found.tracking.healthy(),
            "address": found.tracking.uri,
            "log": str(found.tracking.log_file),
        }
    )
    return rows
