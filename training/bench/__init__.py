"""Training's benchmarks (``lakesight bench train``, ``lakesight bench labeling``) and the toy models they train.

Kept out of the product's import graph: only the CLI imports them, and they alone among the
training modules may read sample data (``infra.local.sample_data``, one named contract exception).
"""
