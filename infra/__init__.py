"""The shared platform layer: settings, lake, Spark, blob storage, MLflow, local stack.

Imports none of ``streams``, ``training`` or ``handlers`` at module level.
"""
