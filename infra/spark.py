"""The process's one SparkSession, configured from settings."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.jvm import default_jars_dir, spark_jar_conf
from infra.locations import is_local_uri
from infra.redaction import SECRET_NAME_PATTERN
from infra.settings import BLOB_CONNECTION_ENV, LAKE_STORAGE_OPTIONS_ENV, Settings, azurite_connection

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_lock = threading.Lock()

# Measured (docs/PLATFORM.md): keeping file listing on the driver tripled stream throughput,
# and Arrow moves micro-batch results to delta-rs without row-by-row Python.
DEFAULT_CONF = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "512",
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "4",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "2g",
    "spark.sql.sources.binaryFile.maxLength": str(2**31 - 1024),
    "spark.python.worker.reuse": "true",
    # A file stream hands each batch's files to a new file index, which caches every file's
    # status in a session-wide cache of 250 MB by default: the JVM's live heap grew ~1.5 KB per
    # scored file (jmap: one LocatedFileStatus per file). lakesight reads no table through Spark,
    # so nothing reads those entries again; 0 turns the cache off (Spark's NoopCache).
    "spark.sql.hive.filesourcePartitionFileCacheSize": "0",
    # Finished jobs, stages and SQL executions are kept for the UI and status API (1,000 each by
    # default, ~1.5 per micro-batch): a long stream's heap then levels off at a fraction of that.
    "spark.ui.retainedJobs": "100",
    "spark.ui.retainedStages": "100",
    "spark.sql.ui.retainedExecutions": "50",
}


# delta-spark's defaults are sized for large tables on large clusters. Measured on local[2]
# (docs/DEPLOY.md, "The lake engine"): a 20-row MERGE into images took 5.2 s with Delta's 50
# snapshot partitions (every commit's state is rebuilt through a 50-task shuffle), 2.0 s with 2;
# lakesight's tables stay at a few hundred files through compaction. spark_conf overrides it.
DELTA_SPARK_CONF = {"spark.databricks.delta.snapshotPartitions": "4"}

PLAIN_CHECKPOINT_MANAGER = "org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager"


def get_spark(settings: Settings, app_name: str = "lakesight") -> SparkSession:
    """Return the active SparkSession, creating it from ``settings`` on first use."""
    # Workers must run this interpreter, or they miss the virtualenv's packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    with _lock:
        active = SparkSession.getActiveSession()
        if active is not None:
            # On Databricks the cluster's session exists first; its master, not the setting, says.
            settings.require_cluster_paths(active.sparkContext.master or "")
            return active
        settings.require_cluster_paths(settings.spark_master)
        builder = SparkSession.builder.master(settings.spark_master).appName(app_name)
        conf = {**DEFAULT_CONF, "spark.sql.warehouse.dir": str(settings.state_dir / "spark-warehouse")}
        conf.update(engine_conf(settings))
        conf.update(executor_secret_conf(settings))
        conf.update(settings.spark_conf)
        for key, value in conf.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("WARN")
        if is_local_uri(settings.checkpoint_root):
            _plain_checkpoint_files(spark)
        return spark


# lakesight's one redaction rule (infra.redaction): what it hides when it prints settings, Spark
# hides in its UI, event log and logs (Spark's default, plus connection strings and account keys).
REDACTION_REGEX = SECRET_NAME_PATTERN


def executor_secret_conf(settings: Settings) -> dict[str, str]:
    """The blob connection string and the lake's storage options in the executors' environment,
    where executor code reads them (``Settings.for_executors``: task closures carry no secret).
    Nothing for local mode's Azurite default, which executors derive; a cluster that sets a variable
    itself keeps its own."""
    conf = {"spark.redaction.regex": REDACTION_REGEX}
    conn = settings.blob_connection_string.get_secret_value()
    key = f"spark.executorEnv.{BLOB_CONNECTION_ENV}"
    if conn and conn != azurite_connection(settings.blob_port) and key not in settings.spark_conf:
        conf[key] = conn
    options_key = f"spark.executorEnv.{LAKE_STORAGE_OPTIONS_ENV}"
    if settings.lake_storage_options and options_key not in settings.spark_conf:
        conf[options_key] = json.dumps(settings.lake_storage_options)
    return conf


def engine_conf(settings: Settings) -> dict[str, str]:
    """The spark engine's jars and Delta session extension; nothing for delta-rs.

    A ``spark.jars`` of the user's own (spark_conf) wins: on a cluster whose image carries
    delta-spark (Databricks) the session exists before lakesight runs and none of this applies.
    """
    if settings.lake_engine != "spark" or "spark.jars" in settings.spark_conf:
        return {}
    folder = Path(settings.jars_dir) if settings.jars_dir else default_jars_dir()
    return {**spark_jar_conf(folder), **DELTA_SPARK_CONF}


def _plain_checkpoint_files(spark: SparkSession) -> None:
    """Write local checkpoints through Hadoop's FileSystem API rather than FileContext.

    Without Hadoop's native library, FileContext on the local disk forks ``chmod`` and
    ``readlink`` processes for checkpoint files, several per micro-batch (seen with ``ps``
    under the latency benchmark), each a fork of the whole JVM. Older Sparks name the class
    elsewhere: then the default stays.
    """
    if spark.sparkContext.getConf().contains("spark.sql.streaming.checkpointFileManagerClass"):
        return  # chosen by the user (spark_conf)
    try:
        spark._jvm.java.lang.Class.forName(PLAIN_CHECKPOINT_MANAGER)  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException
        return
    spark.conf.set("spark.sql.streaming.checkpointFileManagerClass", PLAIN_CHECKPOINT_MANAGER)


class CallbackConnections:
    """Closes the py4j connections a stopped query's foreachBatch was called on.

    The JVM calls foreachBatch from the query's own thread, and py4j (in pinned-thread mode,
    PySpark's default) gives each JVM thread its own socket, served by a Python thread on this
    side and another on the JVM's. Nothing closes that socket when the query's thread ends. Every
    query used to leave a thread and a socket on both sides. In a long stream that is one per
    fresh checkpoint, and the Python thread kept the allocator caches it had used for the
    batches: the driver's RSS stepped up 3–9 MB at each one (docs/STREAMING.md, Memory).
    """

    def __init__(self) -> None:
        self._connections: list[Any] = []

    def record(self) -> None:
        """Call inside foreachBatch: remember the connection the JVM called this thread on."""
        from pyspark import SparkContext

        gateway = SparkContext._gateway
        current = getattr(gateway._gateway_client, "get_thread_connection", None) if gateway else None
        connection = current() if current else None  # None outside pinned-thread mode
        if connection is not None and not any(c is connection for c in self._connections):
            self._connections.append(connection)

    def release(self, query: Any) -> None:
        """Once ``query`` has stopped, shut its connections' sockets: the threads serving them
        read the end of the stream and exit on both sides (closing the file from here instead
        would wait on the lock the blocked reader holds)."""
        try:
            if query.isActive:
                return  # its thread may still call foreachBatch
        except Exception:  # noqa: BLE001 - the JVM side may be gone; nothing calls back then
            pass
        for connection in self._connections:
            sock = connection.socket
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed by the other side
                    sock.shutdown(socket.SHUT_RDWR)
        self._connections.clear()
