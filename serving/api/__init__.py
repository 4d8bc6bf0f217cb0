"""HTTP, laid out like the webhook's (``handlers.api``): the app factory and its lifespan (``app``),
request dependencies (``deps``), the routes (``routes.classify``, ``routes.model``)."""
