"""Spark Structured Streaming jobs: batch ingest and the continuous scoring stream.

- ``ingest``: an availableNow pass over image files into ``images``.
- ``batch_writer``: the exactly-once foreachBatch writer both jobs use, and the counters they share.
- ``file_rows``: binaryFile rows → ``images`` arrival rows (executors; shared by both jobs).
- ``checkpoint``: checkpoint names, the file source's log, checkpoint rotation.
- ``scoring``: the scoring stream (query, micro-batch steps, executor side, sources, blob fetching,
  drift windows, compaction, progress).
- ``featurize``: embeddings of a folder, container or table into a table of their own (no Spark).
- ``bench``: ``lakesight bench score`` and ``lakesight bench drift``.

Imports ``infra`` (never the CLI or the local runtime; the benchmarks alone read sample data);
meets training through the registered MLflow model and the handlers through arrival records and
the lake (docs/ARCHITECTURE.md).
"""
