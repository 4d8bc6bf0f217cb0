"""Label Studio, the labeling service on the laptop: started from its own virtualenv (``make
labelstudio``), bound to loopback, its data (SQLite, uploads) under the state folder.

It answers ``GET /health`` some 30 s after start on a small machine and does not always stop on
SIGTERM: :meth:`infra.processes.Service.stop` ends its process group with SIGKILL after a wait.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from infra.local.stack import StackError
from infra.processes import PROJECT_ROOT, Service, pid_alive
from infra.settings import Settings

HEALTH_PATH = "/health"
# Label Studio refuses webhook (and import) URLs on reserved networks, loopback included; its
# webhooks go to the handler on this machine's loopback. Loopback is let through; private, link-local
# (cloud metadata) and shared ranges stay blocked.
BANNED_SUBNETS = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,169.254.0.0/16,100.64.0.0/10,0.0.0.0/8,fc00::/7,fe80::/10"


def label_studio_executable(settings: Settings) -> Path:
    venv = Path(settings.label_studio_venv) if settings.label_studio_venv else PROJECT_ROOT / ".venv-labelstudio"
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
        return f"http://127.0.0.1:{self.settings.label_studio_port}"

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
            "--username",
            self.settings.label_studio_email,
            "--password",
            self.settings.label_studio_secret(),
        ]

    def env(self) -> dict[str, str]:
        return {
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
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

    def start(self, timeout: float = 240.0) -> int:
        """Start Label Studio unless it already answers; wait for its health check; return its pid."""
        if self.healthy():
            return self.pid() or 0
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pid = self.spawn(self.argv(), env=self.env())
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if not pid_alive(pid):
                raise StackError(f"Label Studio exited during start-up; see {self.log_file}")
            if time.monotonic() > deadline:
                self.stop()
                raise StackError(f"Label Studio did not answer within {timeout:.0f}s; see {self.log_file}")
            time.sleep(1.0)
        return pid
