"""The shared platform layer: settings, lake, Spark, blob storage, MLflow, local stack.

Imports none of ``streams``, ``training`` or ``handlers`` at module level.
"""

import os

# delta-rs (loaded only by ``infra.lake``, so always after this line) allocates through its own
# jemalloc, which by default keeps freed pages per arena: a stream that MERGEs every second
# grew ~6 MB per 100 batches that way, and stayed flat with freed pages returned at once (the
# MERGE time did not change). Read once, when delta-rs first allocates; a value set by the
# operator wins. See docs/STREAMING.md, "Memory".
DELTA_RS_MALLOC_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"
os.environ.setdefault("_RJEM_MALLOC_CONF", DELTA_RS_MALLOC_CONF)
