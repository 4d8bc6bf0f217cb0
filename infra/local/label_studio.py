"""Label Studio, the labeling service on the laptop: started from its own virtualenv (``make
labelstudio``), bound to loopback, its data (SQLite, uploads) under the state folder.

It answers ``GET /health`` some 30 s after start on a small machine and does not always stop on
SIGTERM: :meth:`infra.processes.Service.stop` ends its process group with SIGKILL after a wait.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx

from infra.core.labeling.label_studio import LABEL_STUDIO, label_studio_url, label_studio_venv, labeling_service
from infra.local.stack import StackError
from infra.processes import Service, pid_alive
from infra.settings import Settings

log = logging.getLogger(__name__)

HEALTH_PATH = "/health"
# Label Studio refuses webhook (and import) URLs on reserved networks, loopback included; its
# webhooks go to the handler on this machine's loopback. Loopback is let through; private, link-local
# (cloud metadata) and shared ranges stay blocked.
BANNED_SUBNETS = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,169.254.0.0/16,100.64.0.0/10,0.0.0.0/8,fc00::/7,fe80::/10"


def label_studio_executable(settings: Settings) -> Path:
    venv = label_studio_venv(settings)
    executable = venv / "bin" / "label-studio"
    if not executable.exists():
        raise StackError(f"Label Studio is not installed at {venv}: run 'make labelstudio' (or 'make install')")
    return executable


class LabelStudio(Service):
    """One Label Studio process: an admin user from the settings, loopback only, data in the state folder."""

    def __init__(self, settings: Settings):
        super().__init__("label-studio", settings)

    @property
    def data_dir(self) -> Path:
        return self.settings.state_dir / "label-studio"

    @property
    def url(self) -> str:
        return label_studio_url(self.settings)

    def argv(self) -> list[str]:
        return [
            str(label_studio_executable(self.settings)),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--host",
            self.url,
            "--port",
            str(self.settings.label_studio_port),
            "--data-dir",
            str(self.data_dir),
        ]

    def env(self) -> dict[str, str]:
        return {
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            # The admin it creates at first start; the password in the environment, not the command
            # line, which every user of the machine can read (ps).
            "LABEL_STUDIO_USERNAME": self.settings.label_studio_email,
            "LABEL_STUDIO_PASSWORD": self.settings.label_studio_secret(),
            # Only the admin lakesight creates signs in: no open sign-up page on the laptop.
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "USE_DEFAULT_BANNED_SUBNETS": "false",
            "USER_ADDITIONAL_BANNED_SUBNETS": BANNED_SUBNETS,
        }

    def healthy(self) -> bool:
        try:
            answer = httpx.get(self.url + HEALTH_PATH, timeout=2)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and answer.json().get("status") == "UP"

    def launch(self) -> int:
        """Spawn Label Studio without waiting for it (see :meth:`wait_healthy`); its pid."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.spawn(self.argv(), env=self.env())

    def wait_healthy(self, pid: int, timeout: float = 240.0) -> None:
        """Wait for its health check; :class:`StackError` (and the process stopped) when it exits or
        does not answer within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if not pid_alive(pid):
                raise StackError(self.exited("during start-up"))
            if time.monotonic() > deadline:
                self.stop()
                raise StackError(f"Label Studio did not answer within {timeout:.0f}s; see {self.log_file}")
            time.sleep(1.0)

    def start(self, timeout: float = 240.0) -> int:
        """Start Label Studio unless it already answers; wait for its health check; return its pid."""
        if self.healthy():
            return self.pid() or 0
        pid = self.launch()
        self.wait_healthy(pid, timeout)
        return pid


def wanted(settings: Settings) -> bool:
    """Whether the local stack runs Label Studio (``LAKESIGHT_LABELING_SERVICE``, docs/LABELING.md)."""
    return labeling_service(settings) == LABEL_STUDIO


def supervised_argv(settings: Settings) -> tuple[list[str], dict[str, str]] | None:
    """Label Studio's command and environment for the supervisor of ``lakesight up``, or None
    (with one line saying why) where it is wanted but not installed: the rest of the stack runs."""
    if not wanted(settings):
        return None
    service = LabelStudio(settings)
    try:
        return service.argv(), service.env()
    except StackError as exc:
        log.warning("Label Studio not started (the stream scores and picks stay queued): %s", exc)
        return None


def start_quietly(settings: Settings, timeout: float = 240.0) -> str:
    """``stack start``'s Label Studio: one line saying what happened, never an exception, since the
    stream and the handler run without it (the picks wait in the ledger)."""
    if not wanted(settings):
        return f"Label Studio not started (labeling service: {labeling_service(settings)})"
    service = LabelStudio(settings)
    started = time.monotonic()
    try:
        pid = service.start(timeout=timeout)
    except StackError as exc:
        # The first line names the error; the log file holds the rest.
        first = str(exc).splitlines()[0]
        where = f"; log: {service.log_file}" if service.log_file.exists() else ""
        return f"Label Studio not started (the stream scores; picks stay queued until it runs): {first}{where}"
    return f"label studio running (pid {pid}) at {service.url} ({time.monotonic() - started:.0f}s to start)"


def status_row(settings: Settings) -> dict[str, object]:
    service = LabelStudio(settings)
    return {
        "service": "label-studio",
        "pid": service.pid(),
        "healthy": service.healthy(),
        "address": service.url,
        "log": str(service.log_file),
    }
