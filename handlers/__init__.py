"""Event Grid webhook service: blob events, labeling exports, drift, retraining.

Modules, one per concern: ``events`` (payload models), ``app`` (FastAPI factory), ``service``
(claim-once intake and worker lanes), ``eventlog`` (persisted SQLite log), ``blob_created``,
``labels`` (exports → human labels), ``policy`` (retraining decisions), ``launcher`` and
``azureml`` (retraining backends), ``runs`` (RunCompleted → promotion check), ``relay``
(Azurite → BlobCreated), ``server`` (uvicorn), ``bench``, ``function_app`` (Azure Functions).
"""
