"""The online model server (``lakesight serve-model``): the champion over REST, micro-batched.

A peer of ``streams``, ``training`` and ``handlers``: it imports ``infra`` only. The champion
comes from ``infra.core.model_cache`` (the cache the scoring stream uses), answered images go to the
``online_predictions`` Delta table (``infra.tables.ONLINE_PREDICTIONS``). See docs/SERVING.md.
"""
