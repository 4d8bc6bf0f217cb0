"""The model server's routes: ``classify`` (``POST /v1/classify``) and ``model`` (``/healthz``,
``/v1/model``, ``/v1/stats``)."""
