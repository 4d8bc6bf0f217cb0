"""One rule for what must never be printed, logged or recorded: secrets by name, and the secret
parts of URLs and connection strings.

``lakesight config``, the MLflow params and tags of a run, and Spark's own redaction of its
configuration (``spark.redaction.regex``, infra.spark) all use :data:`SECRET_NAME_PATTERN`, so a
name Spark hides in its UI and event log is the name lakesight hides when it prints settings.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "**********"
# A setting, storage option, Spark conf, query parameter or connection-string field whose name
# matches holds a secret. Spark applies the same pattern to its conf keys and values.
SECRET_NAME_PATTERN = (
    r"(?i)secret|password|passwd|token|credential|signature|"
    r"(access|account|api|sas|shared|private)[._-]?key|connection[._-]?string|accountkey|storage[._-]?options"
)
_SECRET_NAME = re.compile(SECRET_NAME_PATTERN)
# Query parameters that are secrets whatever the pattern says: a SAS signature, the webhook's key.
_SECRET_QUERY_NAMES = frozenset({"sig", "code", "key"})
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<password>[^/@\s]*)@")
_QUERY_PARAM = re.compile(r"(?P<head>[?&;](?P<name>[^=&;?#\s]+)=)(?P<value>[^&;#\s]*)")


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) or name.lower() in _SECRET_QUERY_NAMES


def redact_text(text: str) -> str:
    """``text`` with a URL's password, secret query parameters and connection-string fields masked
    (``AccountKey=…``, ``SharedAccessSignature=…``, ``?sig=…``, ``?code=…``)."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    if ";" in text and "=" in text and "://" not in text.split(";", 1)[0]:
        text = ";" + text  # a connection string: its first field has no separator before it
        return _QUERY_PARAM.sub(_mask_param, text)[1:]
    return _QUERY_PARAM.sub(_mask_param, text)


def _mask_param(match: re.Match[str]) -> str:
    return f"{match['head']}{MASK}" if is_secret_name(match["name"]) else match[0]


def redact(value: Any, name: str = "") -> Any:
    """``value`` (a setting, a mapping of them, a list) with every secret masked, by its name or by
    what it holds; the same shape comes back."""
    if isinstance(value, dict):  # masked key by key: the names inside say which are secrets
        return {key: redact(item, str(key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if name and is_secret_name(name) and value not in ("", None):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    return value
