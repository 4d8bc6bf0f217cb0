"""Retraining: the decision to retrain (``policy``), single-flight launches (``launcher``) with the
``azureml`` backend, RunCompleted into the promotion check (``runs``), availableNow scoring passes
when no stream runs (``score_pass``)."""
