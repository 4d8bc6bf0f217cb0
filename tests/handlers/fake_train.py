"""A stand-in for ``lakesight train --json`` (the launcher's contract) with knobs for tests.

Appends one line per run to ``--record`` so tests can count runs; ``--crash`` exits mid-training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--version", type=int, required=True)
parser.add_argument("--record", required=True)
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--crash", action="store_true")
args = parser.parse_args()

with open(args.record, "a") as handle:
    handle.write(f"{args.version}\n")
print("epoch 1/3 ...", file=sys.stderr, flush=True)
time.sleep(args.sleep)
if args.crash:
    print("Killed: out of memory in epoch 2", file=sys.stderr, flush=True)
    sys.exit(137)
print("some progress output")
print(
    json.dumps(
        {
            "model_version": "2",
            "promoted": True,
            "alias": "champion",
            "accuracy": 0.97,
            "champion_accuracy": 0.9,
            "run_id": "run-abc",
            "delta_version": args.version,
        }
    )
)
