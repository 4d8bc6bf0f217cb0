"""Running training: the one custom training loop (``loop``), strategies and feeds by name
(``strategy``), the worker process (``worker``), Spark barrier tasks (``distributed``), the
hyperparameter search (``search``) and TensorFlow's process settings (``tf_runtime``)."""
