"""A function's peak Python heap, measured in an interpreter of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def peak_in_subprocess(function: str, *args: object, timeout: float = 300.0) -> int:
    """Call ``function`` ("package.module:name", returning the peak it measured with tracemalloc) with
    ``args`` in a fresh Python process, and return that peak in bytes.

    tracemalloc runs there, where no other thread allocates: on Python 3.11 stopping it while another
    thread allocates can crash the whole interpreter, and a test session keeps server threads alive.
    """
    module, name = function.split(":")
    # The figure is printed, then the process ends at once: native threads (delta-rs, TensorFlow)
    # torn down at interpreter exit have ended it with "terminate called without an active exception".
    code = (
        "import importlib, json, os, sys; "
        f"print(getattr(importlib.import_module({module!r}), {name!r})(*json.loads(sys.argv[1])), flush=True); "
        "os._exit(0)"
    )
    command = [sys.executable, "-c", code, json.dumps([str(a) if isinstance(a, Path) else a for a in args])]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode < 0:
        # Killed by a signal with nothing on stderr (once in a whole-suite run on a machine loaded
        # far past its cores; 0 of many runs alone): measured again once, in a fresh process.
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-3000:]}"
    return int(done.stdout.strip().splitlines()[-1])
