"""Label Studio in the local stack: 'stack start' says in one line what became of it, and the rest
of the stack runs without it; the handler's worker says once that it cannot reach it and keeps trying."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from handlers.intake.label_studio_sync import LabelStudioSync
from infra.local.label_studio import LabelStudio, start_quietly, status_row
from infra.processes import free_port
from infra.settings import Settings
from tests.helpers.waiting import wait_until


def test_stack_start_says_in_one_line_why_label_studio_did_not_start(tmp_path: Path) -> None:
    missing = Settings(state_dir=tmp_path, labeling_service="label-studio", label_studio_venv=str(tmp_path / "no-venv"))
    line = start_quietly(missing)
    assert "\n" not in line
    assert line.startswith("Label Studio not started (the stream scores; picks stay queued until it runs)")
    assert "make labelstudio" in line
    folder = Settings(state_dir=tmp_path, labeling_service="container")
    assert start_quietly(folder) == "Label Studio not started (labeling service: container)"


def test_a_label_studio_install_that_dies_at_start_is_named_with_its_error(tmp_path: Path) -> None:
    # A broken install, as a fresh venv with sentry-sdk 3.0 was: the executable exits at once.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    executable = venv / "bin" / "label-studio"
    executable.write_text(
        "#!/bin/sh\n"
        "echo 'Traceback (most recent call last):'\n"
        "echo \"TypeError: Unknown option 'send_default_pii'\"\n"
        "exit 1\n"
    )
    executable.chmod(0o755)
    settings = Settings(
        state_dir=tmp_path / "state",
        labeling_service="label-studio",
        label_studio_venv=str(venv),
        label_studio_port=free_port(),
    )

    line = start_quietly(settings, timeout=60)

    assert "\n" not in line
    assert "label-studio exited during start-up: TypeError: Unknown option 'send_default_pii'" in line
    assert line.endswith(f"log: {LabelStudio(settings).log_file}")


@pytest.mark.slow
def test_stack_start_finds_a_running_label_studio_and_status_shows_it(label_studio: LabelStudio) -> None:
    settings = label_studio.settings.model_copy(update={"labeling_service": "label-studio"})
    assert start_quietly(settings).startswith("label studio running")
    row = status_row(settings)
    assert row["service"] == "label-studio" and row["healthy"] is True and row["address"] == label_studio.url


def test_an_unreachable_label_studio_is_one_warning_and_the_worker_keeps_trying(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        state_dir=tmp_path, labeling_service="label-studio", label_studio_port=free_port(), label_studio_sync_s=0.1
    )
    worker = LabelStudioSync(settings)
    caplog.set_level(logging.WARNING, logger="handlers.intake.label_studio_sync")
    worker.start()
    try:
        wait_until(lambda: worker.stats["failed_rounds"] >= 3, "three failed rounds")
    finally:
        worker.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # the same failure again is not a new line
    assert "Label Studio sync failed (picks stay queued" in warnings[0] and "unreachable" in warnings[0]
