"""Event Grid webhook service: blob events, labeling exports, drift, retraining.

Modules, one per concern:

* HTTP: ``app`` (the FastAPI factory), ``deps`` (typed dependencies: service, settings, event
  key, status key), ``routes.events`` (``OPTIONS``/``POST /api/events``), ``routes.status`` (the
  status page ``/`` from ``static/status.html``, ``/api/status``, ``/healthz``), ``events``
  (payload models), ``safe_json`` (untrusted JSON parsed with limits);
* intake and work: ``service`` (claim-once intake, the two worker lanes, dead letters),
  ``eventlog`` (the persisted log and ``EventStatus``), ``blob_created`` (which upload, ``TargetKind``, arrival
  records), ``labels`` (exports → human labels), ``policy`` (retraining decisions), ``runs``
  (RunCompleted → promotion check);
* background work: ``background`` (the wakeable worker thread), ``launcher`` (single-flight
  retraining, ``LaunchStatus``) with its ``azureml`` backend, ``score_pass`` (availableNow
  scoring passes when no stream runs);
* plumbing and entry points: ``sqlite`` (connections and transactions of the handler
  databases), ``relay`` (Azurite → BlobCreated), ``server`` (uvicorn), ``bench``,
  ``function_app`` (Azure Functions).
"""
