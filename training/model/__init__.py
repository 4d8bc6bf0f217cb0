"""The networks: Keras architectures by name (``models``) and the inference graph with batch
normalisation folded into the convolutions (``fold_batchnorm``). How a version carries its network
and the registered pyfunc stay in ``training.packaging``: registered models pickle
``ImageClassifier`` by that path."""
