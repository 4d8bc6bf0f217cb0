"""Where a URI points and who can reach it: local paths, driver-only storage, loopback hosts.

Pure rules on strings, shared by the settings' validators, the lake, the servers and the local
runtime; nothing here reads configuration.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import urlsplit


def local_path(uri: str) -> Path | None:
    """The local path a plain path or ``file:`` URI names; None for cloud storage."""
    if uri.startswith("file:"):
        uri = uri.removeprefix("file:")
        uri = "/" + uri.lstrip("/") if uri.startswith("//") else uri
    return None if "://" in uri else Path(uri).expanduser()


def is_local_uri(uri: str) -> bool:
    return local_path(uri) is not None


def names_driver_storage(uri: str) -> bool:
    """Whether ``uri`` names storage only this machine sees: a path or ``file:`` URI. Any other
    scheme (``abfss:``, ``dbfs:``, ``mlflow-artifacts:``) is storage a cluster can share; a
    single-letter one is a Windows drive."""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):", uri)
    return scheme is None or scheme.group(1).lower() == "file"


def names_driver_tracking(uri: str) -> bool:
    """Whether an MLflow tracking URI is this machine's: a file store, SQLite, or a loopback server."""
    if uri in ("databricks", "databricks-uc"):
        return False
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return is_loopback(parts.hostname or "")
    return parts.scheme in ("", "file", "sqlite") or names_driver_storage(uri)


# Tracking services that choose where artifacts live (Databricks: its DBFS / Unity Catalog store;
# Azure ML: the workspace's storage). A local default there would put a job cluster's model files
# on a disk that goes away with it.
SERVICE_TRACKING_SCHEMES = ("databricks", "databricks-uc", "azureml")


def default_artifact_root(tracking_uri: str, state_dir: Path) -> str:
    """Where runs log artifacts when no root is set: the tracking server's proxy for an HTTP server.

    An HTTP-tracked run's artifacts on the logging process's disk are lost to every other machine:
    a Spark executor elsewhere loading the model then fails with "No such artifact". Through
    ``mlflow-artifacts:/`` the server stores them and serves them to every client.
    """
    if tracking_uri.startswith(("http://", "https://")):
        return "mlflow-artifacts:/"
    if tracking_uri.split(":", 1)[0] in SERVICE_TRACKING_SCHEMES:
        return ""  # the service keeps every experiment's artifacts in its own store
    return str(state_dir / "mlartifacts")


def is_loopback(host: str) -> bool:
    """True for a bind address only this machine can reach (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False
