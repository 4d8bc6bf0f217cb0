"""Event Grid webhook service: blob events, labeling exports, drift, retraining.

Sub-packages, one per concern:

* ``api``: the FastAPI factory, dependencies (service, settings, event key, status key), the
  routes (``OPTIONS``/``POST /api/events``; the status page ``/``, ``/api/status``, ``/healthz``),
  the payload models and untrusted JSON parsed with limits;
* ``intake``: claim-once intake and the two worker lanes, the persisted event log and
  ``EventStatus``, blob uploads into arrival records, labeling exports into human labels;
* ``retraining``: the retraining policy, single-flight launches (``LaunchStatus``) with the Azure ML
  backend, RunCompleted into the promotion check, availableNow scoring passes.

At the root: ``background`` (the wakeable worker thread), ``sqlite`` (connections and transactions
of the handler databases), ``relay`` (Azurite → BlobCreated), ``server`` (uvicorn), ``bench``
(``lakesight bench events``), ``function_app`` (the Azure Functions entry point).
"""
