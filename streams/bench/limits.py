"""What scoring could reach on this machine, measured on the same images and model as the stream.

- **R1**, forward only: the images decoded in memory first, then one ``probabilities`` call in this
  process (TensorFlow's own thread pool). It skips the decode every pipeline pays.
- **R3**, read + decode + forward: one process per core, one TensorFlow thread each, every process
  reading its share of the files, decoding them with the model's own preprocessing and running the
  model's ``forward`` (probabilities and embedding, what the stream stores). Timed from the moment
  every process has loaded and warmed the model to the last one's end: the realistic ceiling for
  the stream's steady state (docs/BENCHMARKS.md, "The physical limit").
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
from pathlib import Path
from typing import Any

from infra.registry import TF_THREADS_ENV
from infra.settings import Settings

# Files a process decodes and scores in one call, as a Spark task hands the model an Arrow batch.
R3_CHUNK = 256
# How long R3 waits for a process's answer: a model load and a pass over a share of the images.
R3_TIMEOUT_S = 900.0


def forward_only(settings: Settings, files: list[Path], sample: int) -> dict[str, Any]:
    """R1: ``classifier.probabilities`` on ``sample`` of ``files`` already decoded in memory."""
    from infra.registry import load_classifier

    classifier, version = load_classifier(settings)
    chosen = files[:sample]
    decoded, errors = classifier.decode([p.read_bytes() for p in chosen])
    if any(errors):
        raise RuntimeError(f"the benchmark's own images failed to decode: {sorted({e for e in errors if e})}")
    classifier.probabilities(decoded[:256])  # trace once, as the workers did during warm-up
    started = time.perf_counter()
    classifier.probabilities(decoded)
    seconds = time.perf_counter() - started
    return {"images_per_s": round(len(chosen) / seconds, 1), "images": len(chosen), "model_version": version}


def _r3_process(settings: Settings, paths: list[str], warmup: list[str], start_together: Any, results: Any) -> None:
    """One R3 process: load and warm the model, wait for the others, score ``paths``, report."""
    from infra.registry import load_classifier

    classifier, _ = load_classifier(settings)
    _score_files(classifier, warmup)  # TensorFlow traces the model once, before the clock starts
    start_together.wait()
    results.put(_score_files(classifier, paths))


def _score_files(classifier: Any, paths: list[str]) -> tuple[int, float, float]:
    """Read, decode and forward ``paths`` in chunks: ``(images scored, start, end)`` in wall-clock time."""
    started = time.time()
    scored = 0
    for begin in range(0, len(paths), R3_CHUNK):
        contents = [Path(path).read_bytes() for path in paths[begin : begin + R3_CHUNK]]
        images, errors = classifier.decode(contents)
        good = [i for i, error in enumerate(errors) if error is None]
        classifier.forward(images[good])
        scored += len(good)
    return scored, started, time.time()


def _gather(results: Any, workers: list[Any]) -> list[tuple[int, float, float]]:
    """Each R3 process's answer; a process that dies first (a model it cannot load) stops the rest
    and fails the benchmark at once, with its exit code, instead of leaving the others at the barrier."""
    outcomes: list[tuple[int, float, float]] = []
    deadline = time.monotonic() + R3_TIMEOUT_S
    try:
        while len(outcomes) < len(workers):
            try:
                outcomes.append(results.get(timeout=1.0))
                continue
            except queue.Empty:
                pass
            failed = [worker.exitcode for worker in workers if worker.exitcode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                reason = f"exit codes {failed}" if failed else f"no answer within {R3_TIMEOUT_S:.0f}s"
                raise RuntimeError(f"R3 (read + decode + forward) failed: {reason}; its processes print why above")
    finally:
        for worker in workers:
            if worker.is_alive() and len(outcomes) < len(workers):
                worker.terminate()
            worker.join(R3_TIMEOUT_S)
    return outcomes


def read_decode_forward(settings: Settings, files: list[Path], processes: int | None = None) -> dict[str, Any]:
    """R3: ``processes`` (default: the cores) processes of one TensorFlow thread each score ``files``."""
    processes = processes or os.cpu_count() or 1
    shares = [[str(path) for path in files[index::processes]] for index in range(processes)]
    warmup = [str(path) for path in files[: min(len(files), 32)]]
    # A clean interpreter per process (no JVM gateway or TensorFlow state of this one), one TF thread each.
    context = multiprocessing.get_context("spawn")
    start_together, results = context.Barrier(processes), context.Queue()
    previous = os.environ.get(TF_THREADS_ENV)
    os.environ[TF_THREADS_ENV] = "1"
    try:
        workers = [
            context.Process(target=_r3_process, args=(settings, share, warmup, start_together, results), daemon=True)
            for share in shares
        ]
        for worker in workers:
            worker.start()
        outcomes = _gather(results, workers)
    finally:
        if previous is None:
            os.environ.pop(TF_THREADS_ENV, None)
        else:
            os.environ[TF_THREADS_ENV] = previous
    scored = sum(count for count, _, _ in outcomes)
    seconds = max(end for _, _, end in outcomes) - min(start for _, start, _ in outcomes)
    return {
        "images_per_s": round(scored / seconds, 1),
        "images": scored,
        "processes": processes,
        "tf_threads_per_process": 1,
    }
