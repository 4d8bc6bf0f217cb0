"""LAKESIGHT_SCORE_TF_THREADS is the one TensorFlow-threads knob of the scoring stream, under `lakesight up`
and the demo too (the supervisor and the demo used to pass a raw LAKESIGHT_TF_THREADS=1 that won)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

from infra.local.demo import Demo
from infra.local.supervisor import default_children
from infra.processes import SCORING_SERVICE
from infra.registry import TF_THREADS_ENV
from infra.settings import Settings


def test_the_setting_reaches_the_scoring_workers_under_up_and_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.scoring.executor import _prepare_worker

    monkeypatch.setenv("LAKESIGHT_SCORE_TF_THREADS", "3")
    settings = Settings(state_dir=tmp_path / "state")
    (score,) = [c for c in default_children(settings) if c.name == SCORING_SERVICE]
    demo = Demo(settings, Console(file=open(os.devnull, "w")))  # noqa: SIM115 - closed with the test process
    for env in (score.env, demo.env):
        child_env = {**os.environ, **env}
        for name, value in child_env.items():
            if name.startswith("LAKESIGHT_"):
                monkeypatch.setenv(name, value)
        child = Settings()
        assert child.score_tf_threads == 3
        # A Spark worker inherits whatever raw variable its parent had; the setting must win there.
        monkeypatch.setenv(TF_THREADS_ENV, "1")
        _prepare_worker(child)
        assert os.environ[TF_THREADS_ENV] == "3"
