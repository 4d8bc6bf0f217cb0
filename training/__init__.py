"""Training: Delta snapshot to tf.data, Keras models, MLflow tracking, evaluation and promotion.

``data`` (the feed and the one preprocessing), ``model`` (architectures, the folded inference
graph), ``run`` (loop, strategies, workers, distribution, search), ``pipeline`` (``lakesight
train`` end to end), ``tracking`` (MLflow runs), ``evaluation`` (test accuracy and the split
promotion step), ``packaging`` (the registered model), ``legacy`` (Horovod and Petastorm),
``bench`` (the training and labeling benchmarks).
"""
