"""``training.bench.processes``: work spread over spawned one-thread processes, and a process that dies."""

from __future__ import annotations

import os
import signal

import pytest

from infra.errors import LakesightError
from infra.registry import TF_THREADS_ENV
from training.bench.processes import WorkerDiedError, in_processes

_STARTED: dict[str, str] = {}


def _remember(tag: str) -> None:
    _STARTED["tag"] = tag


def _describe(unit: int) -> tuple[int, int, str, str | None]:
    return unit, os.getpid(), _STARTED["tag"], os.environ.get(TF_THREADS_ENV)


def _die_on_three(unit: int) -> int:
    if unit == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
    return unit


def test_every_unit_runs_once_in_a_started_one_thread_process() -> None:
    results = list(in_processes(_describe, range(6), processes=2, start=_remember, start_args=("ready",)))
    assert sorted(unit for unit, *_ in results) == list(range(6))
    assert {pid for _, pid, _, _ in results} - {os.getpid()}  # not in this process
    assert len({pid for _, pid, _, _ in results}) <= 2
    assert {(tag, threads) for _, _, tag, threads in results} == {("ready", "1")}


def test_a_killed_worker_is_a_clear_error_not_a_hang() -> None:
    with pytest.raises(WorkerDiedError, match="killed or out of memory") as raised:
        list(in_processes(_die_on_three, range(6), processes=2, start=_remember, start_args=("x",)))
    assert isinstance(raised.value, LakesightError)
