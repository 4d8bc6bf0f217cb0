"""The Azure ML retraining job's command line, run here: its inputs bound as Azure ML binds them, in
bash from the code snapshot's root, with exactly the job's environment (tests/handlers/test_azureml.py,
tests/test_deploy_offline.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIP_STEP = "pip install --quiet --no-deps . && "


def rest_payload(job: Any) -> Any:
    """The job's properties as ``MLClient`` serialises them for the REST call."""
    from azure.ai.ml.entities._job.to_rest_functions import to_rest_job_object

    return to_rest_job_object(job).properties


def job_shell(payload: Any) -> tuple[str, str]:
    """(setup, run): the command with its inputs bound as Azure ML binds them, the pip step taken out
    (this venv already has the project) and split before its last step."""
    command = payload.command.replace("${{inputs.delta_table}}", payload.inputs["delta_table"].uri)
    command = command.replace("${{inputs.delta_version}}", payload.inputs["delta_version"].value)
    assert "${{" not in command and command.startswith(PIP_STEP), command
    setup, run = command.removeprefix(PIP_STEP).rsplit(" && ", 1)
    return setup, run


def run_in_job(
    script: str, env: dict[str, str], home: Path, *, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``script`` in bash from the code snapshot's root, with exactly ``env`` plus PATH and HOME."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env={**env, "PATH": path, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def only_lakesight_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``env`` this process's only ``LAKESIGHT_*`` variables (what ``Settings()`` then reads)."""
    for name in [n for n in os.environ if n.startswith("LAKESIGHT_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
