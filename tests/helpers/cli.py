"""The ``lakesight`` command run the way a user runs it: its own process, settings from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def lakesight(*args: str, state: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "LAKESIGHT_STATE_DIR": str(state), "LAKESIGHT_SPARK_MASTER": "local[2]", **env}
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args], capture_output=True, text=True, env=environment, timeout=300
    )
