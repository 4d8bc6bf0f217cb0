"""Horovod on Spark barrier tasks: the Gloo rendezvous built from the barrier's task infos, and the
strategy a training process runs under.

Barrier mode starts the N tasks together and tells each of them where all of them run
(``BarrierTaskContext.getTaskInfos``). Task 0 starts Horovod's rendezvous server with the slot
plan made from those addresses and shares its port through ``allGather``; each task then starts
its training process with that process's ``HOROVOD_*`` environment, which ``hvd.init()`` reads.
This is what ``horovodrun --gloo`` does with SSH, without SSH or a second scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from training.run.strategy import HOROVOD, WorkerBase, float_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    """Where one Horovod process runs: its rank overall, on its host, and across hosts."""

    hostname: str
    rank: int
    size: int
    local_rank: int
    local_size: int
    cross_rank: int
    cross_size: int

    def environment(self) -> dict[str, str]:
        return {
            "HOROVOD_HOSTNAME": self.hostname,
            "HOROVOD_RANK": str(self.rank),
            "HOROVOD_SIZE": str(self.size),
            "HOROVOD_LOCAL_RANK": str(self.local_rank),
            "HOROVOD_LOCAL_SIZE": str(self.local_size),
            "HOROVOD_CROSS_RANK": str(self.cross_rank),
            "HOROVOD_CROSS_SIZE": str(self.cross_size),
        }


def slot_plan(hosts: list[str]) -> list[Slot]:
    """One slot per barrier task, rank = task index; ``hosts[i]`` is where task ``i`` runs.

    Local ranks count the tasks before it on the same host; the cross rank of a process is the
    place of its host among the hosts that have a process of that local rank.
    """
    slots = []
    for rank, host in enumerate(hosts):
        local_rank = hosts[:rank].count(host)
        peers = [h for i, h in enumerate(hosts) if hosts[:i].count(h) == local_rank]  # one per host
        slots.append(
            Slot(
                hostname=host,
                rank=rank,
                size=len(hosts),
                local_rank=local_rank,
                local_size=hosts.count(host),
                cross_rank=peers.index(host),
                cross_size=len(peers),
            )
        )
    return slots


def interface_of(host: str) -> str | None:
    """The network interface holding ``host``'s IPv4 address on this machine (Gloo binds to it)."""
    import psutil

    try:
        address = socket.gethostbyname(host)
    except OSError:
        return None
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == address for a in addresses):
            return name
    return None


@contextlib.contextmanager
def gloo_environment(context: Any, index: int) -> Iterator[dict[str, str]]:
    """The ``HOROVOD_*`` environment of barrier task ``index``; task 0 serves the rendezvous meanwhile."""
    hosts = [info.address.rsplit(":", 1)[0] or socket.gethostname() for info in context.getTaskInfos()]
    plan = slot_plan(hosts)
    server = None
    port = ""
    if index == 0:
        from horovod.runner.common.util.hosts import SlotInfo
        from horovod.runner.http.http_server import RendezvousServer

        server = RendezvousServer(verbose=0)
        port = str(server.start())
        server.init([SlotInfo(**vars(slot)) for slot in plan])
    try:
        rendezvous_port = context.allGather(port)[0]
        env = {
            **plan[index].environment(),
            "HOROVOD_GLOO_RENDEZVOUS_ADDR": hosts[0],
            "HOROVOD_GLOO_RENDEZVOUS_PORT": rendezvous_port,
            "HOROVOD_CONTROLLER": "gloo",
            "HOROVOD_CPU_OPERATIONS": "gloo",
        }
        iface = interface_of(hosts[index])
        if iface:
            env["HOROVOD_GLOO_IFACE"] = iface
        yield env
    finally:
        if server is not None:
            server.stop()


class HorovodStrategy(WorkerBase):
    """One Horovod process (``hvd.init()`` from the ``HOROVOD_*`` environment), Gloo all-reduce.

    The training step is the default path's: the loss is each process's mean over its own share
    of the global batch, ``hvd.DistributedOptimizer`` averages the gradients across processes,
    and the initial variables are broadcast from rank 0.
    """

    name = HOROVOD

    def __init__(self) -> None:
        import horovod.tensorflow as hvd
        import tensorflow as tf

        hvd.init()
        self._hvd = hvd
        self.worker_index = int(hvd.rank())
        self.num_workers = int(hvd.size())
        self._strategy = tf.distribute.get_strategy()

    @property
    def replicas(self) -> int:
        return self.num_workers

    def prepare_optimizer(self, optimizer: Any) -> Any:
        import horovod.tensorflow.keras as hvd_keras

        return hvd_keras.DistributedOptimizer(optimizer)

    def datasets(self, dataset_fn: Callable[[Any], Any]) -> Any:
        import tensorflow as tf

        context = tf.distribute.InputContext(
            num_input_pipelines=self.num_workers,
            input_pipeline_id=self.worker_index,
            num_replicas_in_sync=self.num_workers,
        )
        return iter(dataset_fn(context))

    def average_loss(self, per_example: Any, global_batch: int) -> Any:
        import tensorflow as tf

        return tf.reduce_mean(per_example)  # this process's share; the gradients are averaged over processes

    def apply_gradients(self, optimizer: Any, tape: Any, loss: Any, variables: Any) -> None:
        # DistributedOptimizer all-reduces in compute_gradients (Keras 2's minimize path).
        optimizer.apply_gradients(optimizer.compute_gradients(loss, variables, tape=tape))

    def run_step(self, step: Callable[..., Any], batch: Any) -> tuple[Any, Any]:
        loss, hits = step(*batch)
        return self._hvd.allreduce(loss, op=self._hvd.Average), self._hvd.allreduce(hits, op=self._hvd.Sum)

    def start(self, model: Any, optimizer: Any) -> None:
        self._hvd.broadcast_variables(model.variables, root_rank=0)
        variables = optimizer.variables
        self._hvd.broadcast_variables(variables() if callable(variables) else variables, root_rank=0)

    def average_state(self, model: Any) -> None:
        for variable in float_state(model):
            variable.assign(self._hvd.allreduce(variable, op=self._hvd.Average))

    def barrier(self) -> None:
        import tensorflow as tf

        self._hvd.allreduce(tf.constant(1.0), op=self._hvd.Sum)
