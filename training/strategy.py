"""Where training runs: a small interface over ``tf.distribute``.

``LocalStrategy``: this process (all its GPUs through MirroredStrategy, else the default).
``MultiWorkerStrategy``: one of N processes in MultiWorkerMirroredStrategy, from ``TF_CONFIG``.
A Horovod adapter would implement the same three things: the ``tf.distribute`` strategy the
training step runs under, this process's worker index, and the worker count.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol

from training.tf_runtime import enable_gpu_memory_growth, limit_tensorflow_threads

log = logging.getLogger(__name__)


class TrainStrategy(Protocol):
    name: str
    worker_index: int
    num_workers: int

    @property
    def tf_strategy(self) -> Any: ...

    @property
    def is_chief(self) -> bool: ...


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


@dataclass
class LocalStrategy:
    """Training in this process: MirroredStrategy over several local GPUs, else the default."""

    name: str = "local"
    worker_index: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        self._strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()

    @property
    def tf_strategy(self) -> Any:
        return self._strategy

    @property
    def is_chief(self) -> bool:
        return True


@dataclass
class MultiWorkerStrategy:
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

    @property
    def tf_strategy(self) -> Any:
        return self._strategy

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0


def tf_config(addresses: list[str], index: int) -> str:
    """``TF_CONFIG`` for worker ``index`` of the cluster ``addresses`` (host:port, in task order)."""
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})
