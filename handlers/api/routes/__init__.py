"""The webhook's HTTP routes, one module per audience: ``events`` (Event Grid, key required) and
``status`` (the status page, its data and ``/healthz``: read-only; the key in azure mode)."""
