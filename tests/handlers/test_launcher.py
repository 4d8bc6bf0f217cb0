"""Launcher: single-flight with coalescing, cooldown, a crashing trainer, recovery; the Azure ML backend."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from handlers.api.payloads import RUN_COMPLETED
from handlers.retraining.azureml import AzureMLBackend
from handlers.retraining.launcher import (
    ABANDONED,
    FAILED,
    SUBMITTED,
    SUCCEEDED,
    Launcher,
    LaunchResult,
    LaunchStatus,
    LocalBackend,
    train_command,
)
from infra.iac import RETRAINING_TAG
from infra.settings import Settings
from infra.sqlite import connect
from tests.helpers.handlers import fake_train_command, serving


def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _launcher(settings: Settings, record: Path, *extra: str, cooldown: float = 0.0) -> Launcher:
    configured = settings.model_copy(
        update={"retrain_command": fake_train_command(record, *extra), "retrain_cooldown_s": cooldown}
    )
    launcher = Launcher(configured, LocalBackend(configured))
    launcher.start()
    return launcher


def test_default_command_is_the_training_contract(settings: Settings) -> None:
    assert train_command(settings, 12) == [sys.executable, "-m", "infra.cli", "train", "--version", "12", "--json"]


def test_single_flight_coalesces_triggers(settings: Settings, tmp_path: Path) -> None:
    record = tmp_path / "runs.txt"
    launcher = _launcher(settings, record, "--sleep", "0.8")
    try:
        assert launcher.request("t1", "new_labels", 5) == "queued"
        _wait(lambda: any(x["status"] == "running" for x in launcher.launches()))
        assert launcher.request("t2", "label_shift", 6) == "coalesced"
        assert launcher.request("t3", "accuracy", 7) == "coalesced"
        assert launcher.request("t1", "new_labels", 5) == "duplicate"
        assert launcher.wait_idle(30)
    finally:
        launcher.stop()
    launches = launcher.launches()
    assert [(x["triggers"], x["delta_version"], x["status"]) for x in launches] == [
        (1, 5, SUCCEEDED),
        (2, 7, SUCCEEDED),
    ]
    assert json.loads(launches[0]["outcome"])["model_version"] == "2"
    assert record.read_text().split() == ["5", "7"]  # one run per launch, never overlapping


def test_cooldown_delays_the_next_launch(settings: Settings, tmp_path: Path) -> None:
    record = tmp_path / "runs.txt"
    # Long enough that a loaded machine (a CI run next to a Spark job) still asks within it.
    launcher = _launcher(settings, record, cooldown=4.0)
    try:
        launcher.request("a", "new_labels", 1)
        assert launcher.wait_idle(30)
        finished = time.monotonic()
        assert launcher.request("b", "new_labels", 2) == "cooldown"
        assert launcher.wait_idle(30)
        assert time.monotonic() - finished >= 2.0  # without the cooldown: at once
    finally:
        launcher.stop()
    assert record.read_text().split() == ["1", "2"]


class InstantBackend:
    name = "instant"

    def run(self, delta_version: int, launch_id: int) -> LaunchResult:
        return LaunchResult(LaunchStatus.SUCCEEDED, {"delta_version": delta_version})


class WorkerRunsAtOnce(threading.Event):
    """A wake-up on which the worker claims and finishes the launch before the waker reads anything
    more: the worst interleaving of the real thread, made certain."""

    def __init__(self, launcher: Launcher):
        super().__init__()
        self.launcher = launcher

    def set(self) -> None:
        super().set()
        claimed = self.launcher._claim()
        if isinstance(claimed, tuple):
            self.launcher._run_claimed(*claimed)


def test_the_answer_names_what_happened_even_if_the_worker_runs_at_once(settings: Settings) -> None:
    """A trigger that started launch 1 was answered "cooldown": the worker was woken before the answer was read."""
    launcher = Launcher(settings.model_copy(update={"retrain_cooldown_s": 60.0}), InstantBackend())
    launcher._wake = WorkerRunsAtOnce(launcher)
    assert launcher.request("t1", "new_labels", 5) == "queued"
    assert [(x["launch_id"], x["triggers"], x["status"]) for x in launcher.launches()] == [(1, 1, SUCCEEDED)]
    assert launcher.request("t2", "new_labels", 6) == "cooldown"  # and this one does wait
    assert [x["launch_id"] for x in launcher.launches()] == [1]


def test_crashing_trainer_is_reported_and_not_rerun(settings: Settings, tmp_path: Path) -> None:
    record = tmp_path / "runs.txt"
    launcher = _launcher(settings, record, "--crash")
    try:
        launcher.request("crash-1", "new_labels", 3)
        assert launcher.wait_idle(30)
        time.sleep(0.3)
        launches = launcher.launches()
        assert launcher.request("crash-1", "new_labels", 3) == "duplicate"
    finally:
        launcher.stop()
    assert len(launches) == 1 and launches[0]["status"] == FAILED
    outcome = json.loads(launches[0]["outcome"])
    assert "exited with code 137" in outcome["error"] and "out of memory" in outcome["stderr_tail"]
    assert Path(outcome["log"]).exists()
    assert record.read_text().split() == ["3"]


def test_launch_of_a_dead_process_is_abandoned_not_rerun(settings: Settings, tmp_path: Path) -> None:
    record = tmp_path / "runs.txt"
    first = Launcher(settings, LocalBackend(settings))  # creates the database
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    conn = connect(settings.state_dir / "handlers" / "launcher.db")
    conn.execute(
        "INSERT INTO launches (backend, delta_version, triggers, status, started_at, started_epoch, host, pid)"
        " VALUES ('local', 4, 1, 'running', 'x', 0, ?, ?)",
        (first._host, dead.pid),
    )
    conn.execute("INSERT INTO triggers VALUES ('old', 'new_labels', 4, 'x', 1)")
    conn.close()
    launcher = _launcher(settings, record)
    try:
        time.sleep(0.3)
        assert launcher.idle()
    finally:
        launcher.stop()
    assert [x["status"] for x in launcher.launches()] == [ABANDONED]
    assert not record.exists()


def test_launch_statuses_keep_their_stored_strings() -> None:
    assert [s.value for s in LaunchStatus] == ["running", "submitted", "succeeded", "failed", "abandoned"]
    # handlers/retraining/azureml.py and the tests import these names: they are the members, not copies.
    assert (FAILED, SUBMITTED, SUCCEEDED, ABANDONED) == (
        LaunchStatus.FAILED,
        LaunchStatus.SUBMITTED,
        LaunchStatus.SUCCEEDED,
        LaunchStatus.ABANDONED,
    )
    assert LaunchResult("submitted").status is LaunchStatus.SUBMITTED


def test_a_misspelt_backend_status_is_a_failed_launch(settings: Settings) -> None:
    class Misspelling:
        name = "misspelling"

        def run(self, delta_version: int, launch_id: int) -> LaunchResult:
            return LaunchResult("succeded", {"model_version": "3"})

    launcher = Launcher(settings.model_copy(update={"retrain_cooldown_s": 0.0}), Misspelling())
    launcher.start()
    try:
        launcher.request("typo", "new_labels", 1)
        assert launcher.wait_idle(20)
    finally:
        launcher.stop()
    (launch,) = launcher.launches()
    assert launch["status"] == LaunchStatus.FAILED
    assert "'succeded' is not a valid LaunchStatus" in json.loads(launch["outcome"])["error"]


class FakeJobs:
    """Stands in for ``MLClient.jobs`` (Azure cannot be reached here): records submitted jobs."""

    def __init__(self) -> None:
        self.submitted = []

    def create_or_update(self, job):
        self.submitted.append(job)
        return SimpleNamespace(name=f"job-{len(self.submitted)}", studio_url="https://ml.azure.com/x")


def test_azureml_backend_single_flight_until_run_completed(settings: Settings, publisher) -> None:
    jobs = FakeJobs()
    backend = AzureMLBackend(settings, client=SimpleNamespace(jobs=jobs))
    with serving(settings.model_copy(update={"retrain_cooldown_s": 0.0}), backend=backend) as (url, service):
        launcher = service.launcher
        launcher.request("d1", "dataset_drift", 3)
        _wait(lambda: [x["status"] for x in launcher.launches()] == [SUBMITTED])
        assert launcher.request("d2", "dataset_drift", 4) == "coalesced"
        from azure.eventgrid import EventGridEvent

        done = EventGridEvent(
            subject="/experiments/x/runs/job-1",
            event_type=RUN_COMPLETED,
            data_version="2",
            data={
                "experimentName": "lakesight-retraining",
                "runId": "job-1",
                "runType": "azureml.command",
                "runTags": {RETRAINING_TAG: "true"},
                "runProperties": {},
            },
        )
        other = EventGridEvent(
            subject="/experiments/y/runs/r",
            event_type=RUN_COMPLETED,
            data_version="2",
            data={"runId": "someone-elses", "runTags": {}},
        )
        publisher(url).send([done, other])
        assert service.wait_idle(30)
        _wait(lambda: [x["status"] for x in launcher.launches()] == [SUCCEEDED, SUBMITTED])
        assert json.loads(service.events.get(done.id)["outcome"])["launch_id"] == 1
        assert service.events.get(other.id)["status"] == "ignored"
    assert [j.inputs["delta_version"]._data for j in jobs.submitted] == [3, 4]
    assert [j.tags["launch_id"] for j in jobs.submitted] == ["1", "2"]


def test_azureml_submission_failure_is_recorded(settings: Settings) -> None:
    class Broken:
        def create_or_update(self, job):
            raise PermissionError("AuthorizationFailed")

    launcher = Launcher(settings, AzureMLBackend(settings, client=SimpleNamespace(jobs=Broken())))
    launcher.start()
    try:
        launcher.request("z", "new_labels", 1)
        assert launcher.wait_idle(20)
    finally:
        launcher.stop()
    (launch,) = launcher.launches()
    assert launch["status"] == FAILED and "AuthorizationFailed" in launch["outcome"]
