"""The always-on scoring stream.

- ``query``: :class:`ScoringQuery` on the driver: sources in, foreachBatch MERGE out, exactly once;
  ``run_scoring`` is the entry point.
- ``executor``: the champion cached per Python worker and the row mappers that score on executors.
- ``sources``: the folder and arrival-record sources, ending as file rows (driver side).
- ``fetch``: the arrival records' blobs downloaded on executors.
- ``labeling``: the hand-off of unsure images to human labeling, within the daily budget.
- ``compaction``: bin-packing the ``images`` partitions the stream writes.
- ``progress``: the query listener and the status file ``lakesight status`` reads.
- ``bench``: ``lakesight bench score``'s phases (the CLI registers the model it measures).
"""
