"""Training data: a pinned Delta snapshot into train/validation arrays or tf.data (``feed``) and the
one preprocessing that decodes and resizes images for training and serving (``preprocess``)."""
