"""Local processes: detached services with pid and log files, ports, and the ``lakesight`` command line.

Every place that starts a ``lakesight`` subcommand as a child process builds its argv with
:func:`lakesight_argv`, so the CLI's command names have one owner; service names that other
packages look up (the scoring stream's pid file) are constants here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The supervisor's name for the continuous scoring stream; the handlers look for its pid file
# to decide whether an idle-time scoring pass is needed.
SCORING_SERVICE = "score"
# How much of a log an error message quotes: enough for a traceback's last frames and its message.
LOG_TAIL_BYTES = 2000


def lakesight_argv(*args: str) -> list[str]:
    """argv running ``lakesight ARGS`` with this interpreter (no PATH lookup needed)."""
    return [sys.executable, "-m", "infra.cli", *args]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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


def log_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    """The last ``limit`` bytes of the log at ``path``, from a line start when it was cut."""
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - limit))
            data = file.read()
    except OSError as exc:
        return f"(no log: {exc.strerror or exc})"
    if size > limit and b"\n" in data:
        data = data.split(b"\n", 1)[1]
    return data.decode(errors="replace")


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

    def exited(self, when: str) -> str:
        """Why a command failed when this service stopped ``when``: a first line with the last line
        of its log (most often the error), then the end of that log."""
        tail = log_tail(self.log_file)
        last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "(its log is empty)")
        return f"{self.name} exited {when}: {last}\nthe end of {self.log_file}:\n{tail}"

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
