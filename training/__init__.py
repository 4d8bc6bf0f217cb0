"""Training: Delta snapshot to tf.data, Keras models, MLflow tracking, promotion."""
