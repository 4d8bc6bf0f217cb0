"""The always-on scoring stream.

- ``query``: :class:`ScoringQuery` on the driver: the query's life (start, stop, checkpoint
  rotation, storage outages); ``run_scoring`` is the entry point.
- ``batch``: :class:`ScoringBatch`, what each micro-batch does around the exactly-once MERGE
  (the labeling hand-off before it; counters, compaction, drift, status after it), and the MERGE rules.
- ``executor``: the champion cached per Python worker and the row mappers that score on executors.
- ``sources``: the folder and arrival-record sources, ending as file rows (driver side).
- ``fetch``: the arrival records' blobs downloaded on executors.
- ``drift``: the stream's image-drift windows and the drift event (statistics in ``infra.core.drift``).
- ``compaction``: bin-packing the ``images`` partitions the stream writes.
- ``progress``: the query listener and the status file ``lakesight status`` reads.

The labeling hand-off is ``infra.core.labeling`` (the model server uses it too); the benchmarks are
``streams.bench``.
"""
