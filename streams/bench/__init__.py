"""The scoring stream's benchmarks (``lakesight bench score``, ``lakesight bench drift``).

Kept out of the product's import graph: only the CLI imports them, and they alone among the
stream modules may read sample data (``infra.local.sample_data``, one named contract exception).
"""
