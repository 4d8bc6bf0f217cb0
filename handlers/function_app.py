"""Azure Functions entry point: the same webhook app behind ``AsgiFunctionApp``.

Deploy ``handlers/`` with ``host.json`` (route prefix cleared, so the app sees ``/api/events``
itself). The function is anonymous at the Functions level because the app checks the Event
Grid key (``aeg-sas-key`` header or ``code`` query parameter) on every call.
"""

from __future__ import annotations

import azure.functions as func

from handlers.api.app import create_app
from infra.settings import get_settings

# A Functions app is reachable by anyone: its event key is checked as on an open bind, so an empty
# or default key refuses to start even in local mode.
EXPOSED_BIND = "0.0.0.0"

app = func.AsgiFunctionApp(app=create_app(get_settings(), host=EXPOSED_BIND), http_auth_level=func.AuthLevel.ANONYMOUS)
