"""The local stack's services: Azurite (blob storage) started from the project's npm install.

Each runs as a detached :class:`infra.processes.Service`, so ``stack stop`` from another shell (or
the end of a test session) can end it cleanly.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from infra.errors import LakesightError
from infra.processes import PROJECT_ROOT, Service, pid_alive, port_open
from infra.settings import Settings


def mlflow_server_env() -> dict[str, str]:
    """The environment of an ``mlflow server`` lakesight starts.

    Its interpreter's bin goes first on PATH (mlflow execs its web server by name, as from an
    activated venv). Its job runner is off: MLflow 3 starts a pool of job-consumer processes
    (~240 MB each, measured seven) for GenAI features lakesight does not use.
    """
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    return {"PATH": path, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class StackError(LakesightError, RuntimeError):
    """A local service cannot be started, with a one-line reason saying what to do."""


def require_tool(name: str, what: str) -> str:
    """Path of executable ``name``, or a :class:`StackError` saying what to install."""
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name} not found on PATH: install {what}")
    return found


def check_java() -> str:
    """Spark needs a JVM: return ``java``'s path or explain what to install."""
    return require_tool("java", "Java 17 (e.g. 'apt-get install openjdk-17-jre-headless')")


def azurite_executable() -> str:
    local = PROJECT_ROOT / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found:
        return found
    require_tool("node", "Node.js 20 (e.g. 'apt-get install nodejs npm')")
    raise StackError("Azurite is not installed: run 'npm ci' in the project root (or 'make install')")


def azurite_argv(settings: Settings) -> list[str]:
    """The Azurite blob service on loopback, keeping its data under the state dir."""
    return [
        azurite_executable(),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(settings.blob_port),
        "--location",
        str(settings.state_dir / "azurite"),
        "--skipApiVersionCheck",
        "--loose",
        "--silent",
    ]


class Azurite(Service):
    def __init__(self, settings: Settings):
        super().__init__("azurite", settings)

    @property
    def data_dir(self) -> Path:
        return self.settings.state_dir / "azurite"

    def healthy(self) -> bool:
        return port_open("127.0.0.1", self.settings.blob_port)

    def start(self, timeout: float = 30.0) -> int:
        """Start Azurite unless it already answers; create the containers; return its pid."""
        if self.healthy():
            pid = self.pid() or 0
        else:
            require_tool("node", "Node.js 20 (e.g. 'apt-get install nodejs npm')")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            pid = self.spawn(azurite_argv(self.settings))
            deadline = time.monotonic() + timeout
            while not self.healthy():
                if not pid_alive(pid):
                    raise StackError(self.exited("during start-up"))
                if time.monotonic() > deadline:
                    self.stop()
                    raise StackError(f"Azurite did not answer within {timeout:.0f}s; see {self.log_file}")
                time.sleep(0.2)
        from infra.blob import BlobStore

        BlobStore(self.settings).ensure_containers()
        return pid


def stack_status(settings: Settings) -> list[dict[str, object]]:
    azurite = Azurite(settings)
    return [
        {
            "service": "azurite",
            "pid": azurite.pid(),
            "healthy": azurite.healthy(),
            "address": f"http://127.0.0.1:{settings.blob_port}",
            "log": str(azurite.log_file),
        }
    ]
