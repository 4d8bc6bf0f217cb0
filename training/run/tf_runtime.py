"""TensorFlow process set-up shared by training and the registered model: thread pools and GPU memory.

How many threads a process's TensorFlow may use travels in one environment variable,
:data:`infra.registry.TF_THREADS_ENV`: the scoring stream's executors set it from
``score_tf_threads`` before the model loads, and training's worker processes from their share of
the cores. It lives in ``infra`` because both sides of that contract read it.
"""

from __future__ import annotations

import contextlib
import os

from infra.registry import TF_THREADS_ENV


def limit_tensorflow_threads() -> None:
    """Cap TensorFlow's thread pools when asked (Spark workers share few cores)."""
    threads = os.environ.get(TF_THREADS_ENV)
    if not threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads))
    except RuntimeError:  # already initialised in this process: the first setting stays
        pass


def enable_gpu_memory_growth() -> None:
    """Let several processes share a GPU instead of the first grabbing all its memory."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        # Already initialised in this process: the first setting stays.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
