"""``python -m training.legacy.check``: what the legacy virtualenv holds, as one JSON line; exit 1
with the reason when it is not the stack docs/LEGACY.md describes (``make install-legacy`` runs it)."""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

EXPECTED = {"tensorflow-cpu": "2.15.", "tf-keras": "2.15.", "horovod": "0.28.1", "petastorm": "0.13.1"}
MAJOR_BELOW = {"numpy": 2, "pyarrow": 15}


def legacy_stack() -> dict[str, Any]:
    """Package versions and how Horovod was built (controllers and framework extensions)."""
    import horovod
    import horovod.tensorflow as hvd

    root = Path(horovod.__file__).parent
    extensions = sorted(p.parent.name for p in root.glob("*/mpi_lib*.so"))
    versions = {name: metadata.version(name) for name in [*EXPECTED, *MAJOR_BELOW, "pyspark", "mlflow"]}
    return {
        "versions": versions,
        "horovod_extensions": extensions,  # one per framework Horovod was built for
        "gloo": bool(hvd.gloo_built()),
        "mpi": bool(hvd.mpi_built()),
    }


def problems(stack: dict[str, Any]) -> list[str]:
    found = []
    versions = stack["versions"]
    for name, prefix in EXPECTED.items():
        if not versions[name].startswith(prefix):
            found.append(f"{name} {versions[name]} (expected {prefix}*)")
    for name, below in MAJOR_BELOW.items():
        if int(versions[name].split(".")[0]) >= below:
            found.append(f"{name} {versions[name]} (expected < {below})")
    if stack["horovod_extensions"] != ["tensorflow"]:
        found.append(f"Horovod built for {stack['horovod_extensions']} (expected TensorFlow only)")
    if not stack["gloo"] or stack["mpi"]:
        found.append(f"Horovod controllers gloo={stack['gloo']} mpi={stack['mpi']} (expected Gloo only)")
    return found


def main() -> int:
    stack = legacy_stack()
    print(json.dumps(stack))
    found = problems(stack)
    if found:
        print("not the legacy stack: " + "; ".join(found), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
