"""The legacy stack's training pieces: Horovod distribution and the Petastorm feed (docs/LEGACY.md).

They run only in the legacy virtualenv (``make install-legacy``: TensorFlow 2.15, Keras 2,
pyarrow < 15, Horovod 0.28.1 with Gloo, Petastorm 0.13.1). Nothing here imports Horovod or
Petastorm at module level, and nothing in the default stack imports these modules unless a
run asked for ``--strategy horovod`` or ``--feed petastorm`` (``training.run.strategy.check_available``
refuses those first where the packages are missing).
"""
