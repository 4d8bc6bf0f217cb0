"""One scoring micro-batch's hand-off in its own process, as a stream's driver runs it.

Faults are injected the way they happen to a driver: a folder of the lake it cannot write (the
process dies at that write, with everything before it committed and nothing after it done), then
the batch is replayed by a fresh process. Root writes into a read-only folder, so under root the
folder is made immutable instead (``chattr +i``; the test is skipped where that is not allowed).

Run as ``python -m tests.helpers.hand_off_process <job.json>`` (what :func:`run_hand_off` does).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pytest

from infra.settings import SECRET_FIELDS, Settings

ROOT = Path(__file__).resolve().parents[2]


def run_hand_off(
    settings: Settings, table: pa.Table, *, batch_id: int, now: dt.datetime
) -> subprocess.CompletedProcess[str]:
    """The hand-off and the ``images`` MERGE of one batch in a child process; its exit status and output."""
    job = settings.state_dir / f"job-{batch_id}-{now:%H%M%S}"
    job.parent.mkdir(parents=True, exist_ok=True)
    feather.write_feather(table, str(job) + ".arrow")
    fields = settings.model_dump(mode="json", exclude=set(SECRET_FIELDS))
    job.with_suffix(".json").write_text(
        json.dumps({"settings": fields, "table": str(job) + ".arrow", "batch_id": batch_id, "now": now.isoformat()})
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "tests.helpers.hand_off_process", str(job.with_suffix(".json"))],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` unwritable (its files stay readable) until the block ends, for root as well."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"root cannot make {folder} unwritable here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def _main(job_path: str) -> None:
    from infra.core.labeling import hand_off
    from infra.lake import Lake
    from infra.tables import IMAGES

    job = json.loads(Path(job_path).read_text())
    settings = Settings(**job["settings"])
    lake = Lake(settings)
    table = feather.read_table(job["table"])
    handed = hand_off(
        settings, lake, table, app_id="score:q", batch_id=job["batch_id"], now=dt.datetime.fromisoformat(job["now"])
    )
    lake.merge(IMAGES, handed.table)
    print(json.dumps({"sent": handed.sent, "replayed": handed.replayed}))


if __name__ == "__main__":
    _main(sys.argv[1])
