"""The always-on local deployment: one supervisor process keeping every service running.

``lakesight up`` starts the supervisor detached; it starts each child (Azurite, MLflow UI, Label
Studio when it is the labeling service, webhook handler, relay, scoring stream) with its log under
the state dir, restarts a child that exits (with back-off), and records what it sees in
``run/supervisor.json`` for ``lakesight status``. ``lakesight down`` stops the supervisor, which
stops its children first.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from infra.local import label_studio
from infra.local.stack import azurite_argv, mlflow_server_env
from infra.processes import SCORING_SERVICE, Service, lakesight_argv
from infra.settings import Settings
from infra.status_files import supervisor_state_path, write_status_file

log = logging.getLogger(__name__)


@dataclass
class Child:
    """A supervised process and its restart bookkeeping."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0
    last_exit: str | None = None
    next_start: float = 0.0
    backoff: float = 1.0


def default_children(settings: Settings) -> list[Child]:
    """Every service of the local deployment, in start order.

    With a tracking server of the user's own (an http(s) tracking URI, e.g. the one
    ``stack start --spark-cluster`` starts) no local MLflow server is started: its store would be
    that URI and its artifact root that server's proxy, which ``mlflow server`` cannot serve.
    """
    tracking = [] if settings.mlflow_tracking_uri.startswith(("http://", "https://")) else [_mlflow_ui(settings)]
    labeling = label_studio.supervised_argv(settings)
    return [
        Child("azurite", azurite_argv(settings)),
        *tracking,
        # Label Studio before the handler, whose worker pushes the picks into it (and waits while it starts).
        *([Child("label-studio", labeling[0], env=labeling[1])] if labeling else []),
        Child("handler", lakesight_argv("serve-events")),
        Child("relay", lakesight_argv("relay")),
        # The stream's executors size TensorFlow from the settings (score_tf_threads), which the
        # child reads like every other setting: nothing here may override them.
        Child(SCORING_SERVICE, lakesight_argv("score", "--source", "arrivals")),
    ]


def _mlflow_ui(settings: Settings) -> Child:
    return Child(
        "mlflow",
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            settings.mlflow_tracking_uri,
            "--default-artifact-root",
            settings.mlflow_artifact_root,
            "--host",
            "127.0.0.1",
            "--port",
            str(settings.mlflow_ui_port),
        ],
        env=mlflow_server_env(),
    )


class Supervisor:
    def __init__(self, settings: Settings, children: list[Child], *, poll_s: float = 1.0, max_backoff_s: float = 30.0):
        self.settings = settings
        self.children = children
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
        self.services = {c.name: Service(c.name, settings) for c in children}
        self.started_at = dt.datetime.now(dt.UTC).isoformat()

    @property
    def state_file(self) -> Path:
        return supervisor_state_path(self.settings)

    def _start(self, child: Child) -> None:
        self.services[child.name].spawn(child.argv, env=child.env)
        log.info("started %s (pid %s)", child.name, self.services[child.name].pid())

    def step(self) -> None:
        """Start children that are not running, with back-off for those that keep exiting."""
        now = time.monotonic()
        for child in self.children:
            service = self.services[child.name]
            if service.pid() is not None:
                if now > child.next_start + 60:
                    child.backoff = 1.0  # stayed up a minute: forget earlier crashes
                continue
            if now < child.next_start:
                continue
            if service.pid_file.exists():  # it was running and exited
                child.restarts += 1
                child.last_exit = dt.datetime.now(dt.UTC).isoformat()
                log.warning("%s exited; restart %d in %.0fs", child.name, child.restarts, child.backoff)
                service.pid_file.unlink(missing_ok=True)
                child.next_start = now + child.backoff
                child.backoff = min(self.max_backoff_s, child.backoff * 2)
                continue
            self._start(child)
            child.next_start = now
        self.write_state()

    def write_state(self) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": dt.datetime.now(dt.UTC).isoformat(),
            "children": [
                {
                    "name": c.name,
                    "pid": self.services[c.name].pid(),
                    "restarts": c.restarts,
                    "last_exit": c.last_exit,
                    "log": str(self.services[c.name].log_file),
                }
                for c in self.children
            ],
        }
        write_status_file(self.state_file, state)

    def stop_all(self) -> None:
        for child in reversed(self.children):
            self.services[child.name].stop()
        self.write_state()

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.step()
                stop.wait(self.poll_s)
        finally:
            self.stop_all()


def serve_forever(settings: Settings, children: list[Child] | None = None) -> None:
    """Run the supervisor in this process until SIGTERM/SIGINT."""
    from infra.registry import RegistryError, configure_mlflow

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        # Create the MLflow schema once, before the MLflow server and the other children race to.
        configure_mlflow(settings)
    except RegistryError as exc:
        log.warning("MLflow store not initialised before start: %s", exc)
    Supervisor(settings, children or default_children(settings)).run(stop)


def up(settings: Settings) -> int:
    """Start the supervisor detached (no-op when it already runs); return its pid."""
    service = Service("supervisor", settings)
    pid = service.pid()
    if pid is not None:
        return pid
    return service.spawn(lakesight_argv("supervise"))


def down(settings: Settings, timeout: float = 60.0) -> bool:
    """Stop the supervisor and, through it, every child."""
    return Service("supervisor", settings).stop(timeout=timeout)
