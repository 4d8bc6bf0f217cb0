"""The local stack's services: Azurite (blob storage) started from the project's npm install.

Processes are detached, with a pid file and a log under the state dir, so ``stack stop`` from
another shell (or the end of a test session) can end them cleanly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from infra.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class StackError(RuntimeError):
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


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); read its state where /proc exists.
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(") ", 1)[1][0] != "Z"
        except (OSError, IndexError):
            return True
    return True


@dataclass
class Service:
    """One detached local process with a pid file and a log file."""

    name: str
    settings: Settings

    @property
    def pid_file(self) -> Path:
        return self.settings.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.settings.logs_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=PROJECT_ROOT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def stop(self, timeout: float = 10.0) -> bool:
        """Terminate the service (its whole process group); True if one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and pid_alive(pid):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.1)
            if not pid_alive(pid):
                break
        self.pid_file.unlink(missing_ok=True)
        return True


def azurite_executable() -> str:
    local = PROJECT_ROOT / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found:
        return found
    require_tool("node", "Node.js 20 (e.g. 'apt-get install nodejs npm')")
    raise StackError("Azurite is not installed: run 'npm ci' in the project root (or 'make install')")


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
            executable = azurite_executable()
            require_tool("node", "Node.js 20 (e.g. 'apt-get install nodejs npm')")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            pid = self.spawn(
                [
                    executable,
                    "--blobHost", "127.0.0.1",
                    "--blobPort", str(self.settings.blob_port),
                    "--location", str(self.data_dir),
                    "--skipApiVersionCheck",
                    "--loose",
                    "--silent",
                ]
            )
            deadline = time.monotonic() + timeout
            while not self.healthy():
                if not pid_alive(pid):
                    raise StackError(f"Azurite exited during start-up; see {self.log_file}")
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
