"""Blob storage (Azurite locally, an Azure Storage account at scale): the client with bounded retries,
and how a storage outage is told from a definite answer. Name and URL rules: :mod:`infra.blob_names`."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from infra.blob_names import guess_content_type, validate_blob_name
from infra.errors import LakesightError

if TYPE_CHECKING:
    from infra.settings import Settings

# The start of every :class:`StorageUnavailable` message: the scoring driver recognises a batch
# that failed because storage was down by it (the exception itself is raised on an executor).
STORAGE_UNAVAILABLE = "blob storage unreachable"
# Answers that say "not now" (timeouts, throttling, server errors) or "not with these credentials"
# rather than "this blob, never": the request is retried, and if storage keeps answering so, the
# work fails as a whole instead of recording a permanent error for every blob it touched.
TRANSIENT_STATUS = frozenset({401, 403, 408, 429, 500, 502, 503, 504})

# The Azure SDK logs every request's and response's headers at INFO (23.7 MB of stderr for 18,000
# labeling uploads): its loggers stay at WARNING unless a process runs at DEBUG.
AZURE_LOGGERS = ("azure", "azure.core.pipeline.policies.http_logging_policy")

T = TypeVar("T")


class StorageUnavailable(LakesightError, ConnectionError):
    """Blob storage did not give a definite answer (connection refused, timeout, 5xx, throttling)
    within the retry budget: the caller's work fails as a whole and is retried later."""


def account_url(settings: Settings) -> str:
    """The configured blob account's base URL (``http://host:port/account/`` on Azurite)."""
    from azure.storage.blob import BlobServiceClient

    return str(BlobServiceClient.from_connection_string(settings.blob_connection()).url)


def quiet_azure_sdk(level: str | int = "INFO") -> None:
    """The Azure SDK's loggers at DEBUG when ``level`` is DEBUG, else at WARNING."""
    debug = level == logging.DEBUG or str(level).upper() == "DEBUG"
    for name in AZURE_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)


# Outages -------------------------------------------------------------------------------------------
def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says storage could not answer now (retry) rather than a definite answer."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(exc, ServiceRequestError | ServiceResponseError | TimeoutError | ConnectionError):
        return not isinstance(exc, StorageUnavailable)
    status = getattr(exc, "status_code", None) if isinstance(exc, HttpResponseError) else None
    return status in TRANSIENT_STATUS or (isinstance(status, int) and status >= 500)


class GiveUp:
    """Shared by the requests of one piece of work: once one has given up on storage, the others
    fail at once (with its reason) rather than each waiting out the retry budget."""

    def __init__(self) -> None:
        self._given_up = threading.Event()
        self.reason = ""

    def __bool__(self) -> bool:
        return self._given_up.is_set()

    def record(self, reason: str) -> None:
        self.reason = self.reason or reason
        self._given_up.set()


def with_retries(call: Callable[[], T], *, budget_s: float, give_up: GiveUp | None = None) -> T:
    """``call()``, retried with doubling back-off (0.2 s to 5 s) while it fails transiently, for
    at most ``budget_s`` seconds; then :class:`StorageUnavailable`. A definite failure is raised
    as is."""
    deadline = time.monotonic() + budget_s
    delay = 0.2
    while True:
        if give_up:
            raise StorageUnavailable(give_up.reason)
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if time.monotonic() + delay > deadline:
                detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                reason = f"{STORAGE_UNAVAILABLE} for {budget_s:g} s: {detail}"
                if give_up is not None:
                    give_up.record(reason)
                raise StorageUnavailable(reason) from exc
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class BlobConnection(Protocol):
    """Anything that yields the blob connection string: the settings, or an executor's view."""

    def blob_connection(self) -> str: ...


def bounded_service_client(settings: BlobConnection, **options: Any) -> Any:
    """A ``BlobServiceClient`` whose own retries and timeouts are short: the SDK's defaults (three
    retries from 15 s back-off, 20 s connect and 60 s read timeouts) kept a scoring batch waiting
    for almost ten minutes when storage was down; callers retry with :func:`with_retries`.
    ``options`` go to the SDK client as well (a request hook, say)."""
    from azure.storage.blob import BlobServiceClient, ExponentialRetry

    return BlobServiceClient.from_connection_string(
        settings.blob_connection(),
        retry_policy=ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=1, random_jitter_range=0),
        connection_timeout=5,
        read_timeout=30,
        **options,
    )


class BlobStore:
    """Thin wrapper over ``azure-storage-blob`` bound to one account, with the SDK's retries bounded
    (:func:`bounded_service_client`): with storage down, the SDK's defaults held a handler lane on one
    export read for about a minute per try, while the events behind it waited."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.service = bounded_service_client(settings)

    def containers(self) -> list[str]:
        s = self.settings
        return [s.images_container, s.labeling_container, s.exports_container]

    def ensure_containers(self, names: list[str] | None = None) -> None:
        from azure.core.exceptions import ResourceExistsError

        for name in names or self.containers():
            with contextlib.suppress(ResourceExistsError):
                self.service.create_container(name)

    def url(self, container: str, name: str) -> str:
        return self.service.get_blob_client(container, name).url

    def upload(self, container: str, name: str, data: bytes, *, content_type: str | None = None) -> str:
        from azure.storage.blob import ContentSettings

        validate_blob_name(name)
        client = self.service.get_blob_client(container, name)
        settings = ContentSettings(content_type=content_type) if content_type else None
        client.upload_blob(data, overwrite=True, content_settings=settings)
        return client.url

    def signed_url(self, container: str, name: str, *, valid_for: dt.timedelta) -> str:
        """The blob's URL with a read-only SAS for ``valid_for``, signed with the account key: what a
        browser that is not signed in to the account may load (a labeler's page showing the image).
        An account reached without a key (a token) gets the plain URL."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        client = self.service.get_blob_client(container, validate_blob_name(name))
        key = getattr(self.service.credential, "account_key", None)
        if not key:
            return str(client.url)
        token = generate_blob_sas(
            account_name=self.service.account_name,
            container_name=container,
            blob_name=name,
            account_key=key,
            permission=BlobSasPermissions(read=True),
            expiry=dt.datetime.now(dt.UTC) + valid_for,
        )
        return f"{client.url}?{token}"

    def allow_browser_reads(self, origin: str) -> bool:
        """Let pages from ``origin`` read blobs (a CORS rule for GET on the account's blob service,
        added beside the rules there): Label Studio's page loads a task's image with a CORS request.
        False when the rule was there already."""
        from azure.storage.blob import CorsRule

        cors = list(self.service.get_service_properties().get("cors") or [])
        if any(origin in (rule.allowed_origins or "").split(",") for rule in cors):
            return False
        cors.append(
            CorsRule([origin], ["GET", "HEAD"], allowed_headers=["*"], exposed_headers=["*"], max_age_in_seconds=3600)
        )
        self.service.set_service_properties(cors=cors)
        return True

    def upload_file(self, container: str, name: str, path: Path) -> str:
        return self.upload(container, name, path.read_bytes(), content_type=guess_content_type(name))

    def download(self, container: str, name: str) -> bytes:
        return self.service.get_blob_client(container, validate_blob_name(name)).download_blob().readall()

    def list(self, container: str, prefix: str | None = None) -> Iterator[object]:
        return iter(self.service.get_container_client(container).list_blobs(name_starts_with=prefix))
