"""Benchmark work spread over spawned processes of one TensorFlow thread each.

A small network trains faster in two processes of one TensorFlow thread each than in one process
of two threads: on two cores, one training step of the label benchmark's network took 9.3 ms with
two threads and 7.3 ms with one, and two one-thread processes side by side 7.0–7.7 ms each
(docs/LABELING.md, "Time").
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from infra.errors import LakesightError
from infra.registry import TF_THREADS_ENV
from training.run.tf_runtime import limit_tensorflow_threads

Unit = TypeVar("Unit")
Result = TypeVar("Result")


class WorkerDiedError(LakesightError, RuntimeError):
    """A worker process ended without an answer (killed, out of memory)."""


def _one_thread_then(start: Callable[..., None], *args: Any) -> None:
    os.environ[TF_THREADS_ENV] = "1"
    limit_tensorflow_threads()
    start(*args)


def in_processes(
    work: Callable[[Unit], Result],
    units: Iterable[Unit],
    *,
    processes: int,
    start: Callable[..., None],
    start_args: tuple[Any, ...] = (),
) -> Iterator[Result]:
    """``work(unit)`` for every unit in ``processes`` spawned processes, each result as it finishes.

    Each process runs ``start(*start_args)`` once, after capping TensorFlow to one thread. ``work``
    and ``start`` must be module-level functions (they are pickled by name). A unit that raises
    raises here, and the units not yet begun are cancelled; a process that dies raises
    :class:`WorkerDiedError`.
    """
    units = list(units)
    context = multiprocessing.get_context("spawn")  # a clean interpreter: no TensorFlow state inherited
    with ProcessPoolExecutor(
        max(1, min(processes, len(units))),
        mp_context=context,
        initializer=_one_thread_then,
        initargs=(start, *start_args),
    ) as pool:
        futures = [pool.submit(work, unit) for unit in units]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BrokenProcessPool as exc:
            raise WorkerDiedError(
                f"a worker process died before its work was done ({processes} processes of one "
                "TensorFlow thread); was it killed or out of memory? Fewer processes use less memory"
            ) from exc
        finally:
            for future in futures:
                future.cancel()
