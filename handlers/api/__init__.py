"""HTTP: the FastAPI factory (``app``), request dependencies (``deps``), the payload models
(``payloads``), untrusted JSON with limits (``safe_json``) and the routes (``routes.events``,
``routes.status``)."""
