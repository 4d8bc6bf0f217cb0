"""Where training runs: a small interface the one training loop (:mod:`training.run.loop`) runs under.

A strategy answers: this process's worker index and the worker count, how many replicas share a
global batch, and the few distributed steps of a run (feeding, one training step, the gradient
update, the state averaging, the closing barrier). Two families implement it:

* ``tf.distribute`` (the default stack): :class:`LocalStrategy` (this process, all its GPUs through
  MirroredStrategy) and :class:`MultiWorkerStrategy` (one of N processes, from ``TF_CONFIG``);
* Horovod (the legacy stack, ``training.legacy.horovod_strategy``): Gloo all-reduce between
  processes that Spark barrier tasks start (docs/LEGACY.md).

Strategies and feeds are chosen by name (:data:`STRATEGIES`, :data:`FEEDS`). This module never
imports Horovod or Petastorm: :func:`check_available` finds them without importing them, and the
legacy modules are imported only by a process that was asked for them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from infra.errors import UsageError
from training.run.tf_runtime import enable_gpu_memory_growth, limit_tensorflow_threads

log = logging.getLogger(__name__)

TF_DISTRIBUTE, HOROVOD = "tf", "horovod"
STRATEGIES = (TF_DISTRIBUTE, HOROVOD)
ARROW, PETASTORM = "arrow", "petastorm"
FEEDS = (ARROW, PETASTORM)
# What each legacy name needs installed: the legacy virtualenv has them, the default one never does.
_LEGACY_PACKAGES = {HOROVOD: "horovod", PETASTORM: "petastorm"}
LEGACY_NAMES = tuple(_LEGACY_PACKAGES)  # what only the legacy stack runs
LEGACY_INSTALL_HINT = "run `make install-legacy` and use .venv-legacy/bin/lakesight"


class LegacyStackMissing(UsageError):
    """A Horovod or Petastorm run was asked for in an environment without the legacy stack."""


def check_available(strategy: str, feed: str) -> None:
    """Refuse unknown names, and legacy names this Python cannot import, in one line each."""
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if feed not in FEEDS:
        raise UsageError(f"unknown feed {feed!r}; choose one of {', '.join(FEEDS)}")
    for option, name in (("--strategy", strategy), ("--feed", feed)):
        package = _LEGACY_PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise LegacyStackMissing(
                f"{option} {name} needs {package}, which only the legacy stack has: {LEGACY_INSTALL_HINT}"
            )


class TrainStrategy(Protocol):
    name: str
    worker_index: int
    num_workers: int

    @property
    def tf_strategy(self) -> Any: ...

    @property
    def is_chief(self) -> bool: ...

    @property
    def replicas(self) -> int: ...

    def scope(self) -> Any: ...

    def prepare_optimizer(self, optimizer: Any) -> Any: ...

    def datasets(self, dataset_fn: Callable[[Any], Any]) -> Any: ...

    def average_loss(self, per_example: Any, global_batch: int) -> Any: ...

    def apply_gradients(self, optimizer: Any, tape: Any, loss: Any, variables: Any) -> None: ...

    def run_step(self, step: Callable[..., Any], batch: Any) -> tuple[Any, Any]: ...

    def start(self, model: Any, optimizer: Any) -> None: ...

    def average_state(self, model: Any) -> None: ...

    def barrier(self) -> None: ...


def setup_device(*, mixed_precision: bool = False) -> str:
    """Prepare TensorFlow for this process; return a description of the device it will use.

    GPUs get memory growth (several processes may share one). Mixed precision is turned on
    only with a GPU: on CPU float16 is slower, so the option is ignored with a warning.
    """
    limit_tensorflow_threads()
    enable_gpu_memory_growth()
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if mixed_precision and gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        if mixed_precision:
            log.warning("--mixed-precision ignored: TensorFlow sees no GPU")
        keras.mixed_precision.set_global_policy("float32")
    if gpus:
        names = []
        for gpu in gpus:
            details = tf.config.experimental.get_device_details(gpu)
            names.append(details.get("device_name", gpu.name))
        return f"GPU x{len(gpus)}: {', '.join(names)}"
    return f"CPU ({os.cpu_count()} cores)"


def float_state(model: Any) -> list[Any]:
    """The model's non-trainable float variables: BatchNorm moving statistics, which each worker
    accumulates from its own batches (gradients keep the trainable ones in step)."""
    return [v for v in model.non_trainable_variables if v.dtype in ("float16", "bfloat16", "float32", "float64")]


class WorkerBase:
    """What every strategy answers alike: worker 0 is the chief, and the model's variables are made
    under the ``tf.distribute`` strategy the subclass sets (the default one for Horovod)."""

    worker_index = 0
    num_workers = 1
    _strategy: Any

    @property
    def tf_strategy(self) -> Any:
        return self._strategy

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    def scope(self) -> Any:
        return self._strategy.scope()


class TfDistribute(WorkerBase):
    """The distributed steps of a run through a ``tf.distribute`` strategy (set by subclasses)."""

    name = TF_DISTRIBUTE

    @property
    def replicas(self) -> int:
        return int(self._strategy.num_replicas_in_sync)

    def prepare_optimizer(self, optimizer: Any) -> Any:
        return optimizer

    def datasets(self, dataset_fn: Callable[[Any], Any]) -> Any:
        return iter(self._strategy.distribute_datasets_from_function(dataset_fn))

    def average_loss(self, per_example: Any, global_batch: int) -> Any:
        import tensorflow as tf

        # Each replica's share of the global mean: the all-reduced gradients are the mean's.
        return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)

    def apply_gradients(self, optimizer: Any, tape: Any, loss: Any, variables: Any) -> None:
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))

    def run_step(self, step: Callable[..., Any], batch: Any) -> tuple[Any, Any]:
        import tensorflow as tf

        loss, hits = self._strategy.run(step, args=batch)
        total_loss = self._strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        return total_loss, self._strategy.reduce(tf.distribute.ReduceOp.SUM, hits, axis=None)

    def start(self, model: Any, optimizer: Any) -> None:
        """Nothing to do: a ``tf.distribute`` strategy syncs initial values when variables are made."""

    def average_state(self, model: Any) -> None:
        """Average the BatchNorm moving statistics across workers, leaving every worker the same model."""
        import tensorflow as tf

        state = float_state(model)
        if self.num_workers < 2 or not state:
            return
        tfs = self._strategy

        @tf.function
        def gather() -> Any:
            def replica_fn() -> Any:
                context = tf.distribute.get_replica_context()
                return context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in state])

            return tfs.run(replica_fn)

        averaged = gather()
        for variable, value in zip(state, averaged, strict=True):
            variable.assign(tfs.experimental_local_results(value)[0])

    def barrier(self) -> None:
        """One all-reduce, so no worker leaves while the chief is still logging and registering."""
        import tensorflow as tf

        if self.num_workers < 2:
            return
        tfs = self._strategy

        @tf.function
        def together() -> tf.Tensor:
            ones = tfs.run(lambda: tf.constant(1.0))
            return tfs.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)

        together()


@dataclass
class LocalStrategy(TfDistribute):
    """Training in this process: MirroredStrategy over several local GPUs, else the default."""

    name: str = "local"
    worker_index: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        self._strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


@dataclass
class MultiWorkerStrategy(TfDistribute):
    """One worker of a MultiWorkerMirroredStrategy cluster described by ``TF_CONFIG``.

    Create it before any other TensorFlow work in the process (collective ops are configured
    once per process).
    """

    name: str = "multi-worker"
    worker_index: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        import tensorflow as tf

        config = json.loads(os.environ["TF_CONFIG"])
        self.num_workers = len(config["cluster"]["worker"])
        self.worker_index = int(config["task"]["index"])
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        self._strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def worker_strategy(name: str) -> TrainStrategy:
    """The strategy a training process runs under: ``name``'s, or from ``TF_CONFIG`` / local for tf.

    Made before any other TensorFlow work in the process (collective ops are configured once).
    """
    if name == HOROVOD:
        from training.legacy.horovod_strategy import HorovodStrategy

        return HorovodStrategy()
    return MultiWorkerStrategy() if os.environ.get("TF_CONFIG") else LocalStrategy()


def tf_config(addresses: list[str], index: int) -> str:
    """``TF_CONFIG`` for worker ``index`` of the cluster ``addresses`` (host:port, in task order)."""
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})
