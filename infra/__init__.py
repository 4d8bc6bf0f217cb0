"""The platform at the root (settings, locations, lake and its engines, tables, Spark, blob storage,
MLflow registry, processes, status files); ``core`` the shared domain above it; ``local`` the local
runtime and ``cli`` the composition root at the top (docs/ARCHITECTURE.md, "Layers").
"""

import os

# delta-rs (loaded only by ``infra.lake``, so always after this line) allocates through its own
# jemalloc, which by default keeps freed pages per arena: a stream that MERGEs every second
# grew ~6 MB per 100 batches that way, and stayed flat with freed pages returned at once (the
# MERGE time did not change). Read once, when delta-rs first allocates; a value set by the
# operator wins. See docs/STREAMING.md, "Memory".
DELTA_RS_MALLOC_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"
os.environ.setdefault("_RJEM_MALLOC_CONF", DELTA_RS_MALLOC_CONF)
