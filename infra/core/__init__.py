"""The shared domain: policy that two or more peers use, above the platform and below the peers.

``labeling`` (selection, pacing and the hand-off), ``drift`` (the image-drift statistics and a
model's reference), ``promotion`` (the split rule, the live evidence, the decision, rollback),
``model_cache`` (a registered alias loaded once per process and re-checked) and ``status`` (the
snapshot read model). Nothing here imports a peer, the local runtime or the CLI
(docs/ARCHITECTURE.md).
"""
