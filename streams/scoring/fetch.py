"""Executor side of the arrival-record source: each record's blob downloaded, several at a time.

Runs inside ``mapInPandas`` (``streams.scoring.sources.file_rows`` wires it in on the driver).
Records are not trusted: a record's URL is canonicalised (``infra.blob_names.blob_ref``) and must name a
blob of the images container of the configured account, or the record becomes an error row and no
request is made. A definite answer becomes an error row, recorded once and never retried: a blob
gone before it is read, a name storage refuses. Storage that does not answer (connection refused,
timeouts, throttling, server errors) is retried within ``blob_retry_s``; after that the task raises
:class:`infra.blob.StorageUnavailable`, so the batch fails, nothing is committed, and the stream
retries the batch later (``streams.scoring.query``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd

from infra.blob import BlobConnection, GiveUp, bounded_service_client, quiet_azure_sdk, with_retries
from infra.blob_names import BlobNameError, BlobRef, blob_ref
from streams.file_rows import BINARY_FILE_DDL
from streams.scoring.executor import FETCH_ERROR

FETCHED_DDL = f"{BINARY_FILE_DDL}, {FETCH_ERROR} string"
VANISHED = "blob vanished before it was read"
REFUSED = "refused blob reference"

# One client per connection string and Python worker: workers are reused across tasks.
_clients: dict[str, Any] = {}


class FetchConfig(BlobConnection, Protocol):
    """What a fetch reads: the settings on the driver, ``ScoringConfig`` on an executor."""

    @property
    def images_container(self) -> str: ...

    @property
    def max_image_bytes(self) -> int: ...

    @property
    def blob_retry_s(self) -> float: ...

    @property
    def blob_fetch_threads(self) -> int: ...


def _blob_service(config: FetchConfig) -> Any:
    conn = config.blob_connection()
    client = _clients.get(conn)
    if client is None:
        # A worker that logs (a cluster's own logging set-up) must not log every request's headers.
        quiet_azure_sdk(logging.getLogger().getEffectiveLevel())
        client = _clients[conn] = bounded_service_client(config)
    return client


@dataclass(frozen=True)
class Checked:
    """One arrival record once checked: its row key, and the blob to fetch or why none is."""

    path: str  # the canonical URL; the record's URL as written when it cannot be canonicalised
    ref: BlobRef | None
    error: str | None


class BlobFetcher:
    """Checks arrival records and downloads their blobs from the configured account's images container."""

    def __init__(self, config: FetchConfig, service: Any | None = None):
        self.config = config
        self.service = service if service is not None else _blob_service(config)
        self.account_url = str(self.service.url)

    def check(self, url: str, container: str | None, name: str | None) -> Checked:
        """The record's row key and blob, refused unless it names a safe blob of the images container."""
        try:
            ref = blob_ref(url, account_url=self.account_url)
        except BlobNameError as exc:
            return Checked(url, None, f"{REFUSED}: {exc}")
        if ref.container != self.config.images_container:
            return Checked(ref.url, None, f"{REFUSED}: container {ref.container!r} is not the images container")
        # The record's own fields must agree with its URL: the URL is the row key, so bytes fetched
        # from anywhere else would be stored under another blob's name.
        if (container or name) and (container, name) != (ref.container, ref.name):
            return Checked(ref.url, None, f"{REFUSED}: the record names {container}/{name} but its url {ref.url}")
        return Checked(ref.url, ref, None)

    def download(self, ref: BlobRef, give_up: GiveUp) -> tuple[bytes | None, str | None]:
        """``(bytes, None)``, or ``(None, reason)`` for a definite answer; raises
        :class:`infra.blob.StorageUnavailable` when storage does not answer within ``blob_retry_s``."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        client = self.service.get_blob_client(ref.container, ref.name)
        cap = self.config.max_image_bytes
        try:
            # A ranged read of one byte past the cap: a blob of any size costs at most that much.
            data, size = with_retries(
                lambda: _read_at_most(client, cap + 1), budget_s=self.config.blob_retry_s, give_up=give_up
            )
        except ResourceNotFoundError:
            return None, VANISHED
        except HttpResponseError as exc:  # a definite refusal of this blob (transient ones were retried)
            return None, f"blob fetch refused: {exc.status_code} {getattr(exc, 'error_code', None) or exc.reason}"[:500]
        if len(data) > cap:  # the row's error; its bytes never reach the JVM
            return None, too_large(size, cap)
        return data, None


def too_large(size: int, cap: int) -> str:
    """The error of a blob over ``max_image_bytes``: the words the file check uses (infra.images)."""
    return f"too large: {size} bytes (limit {cap})"


def _read_at_most(client: Any, limit: int) -> tuple[bytes, int]:
    """The blob's first ``limit`` bytes and its whole size (from the answer's Content-Range)."""
    downloader = client.download_blob(offset=0, length=limit)
    data = downloader.readall()
    total = str(downloader.properties.content_range or "").rpartition("/")[2]
    return data, int(total) if total.isdigit() else len(data)


def _latest_per_path(frame: pd.DataFrame, checked: list[Checked]) -> tuple[pd.DataFrame, list[Checked]]:
    """One record per row key, the latest event winning (Event Grid delivers at least once)."""
    frame = frame.assign(_path=[c.path for c in checked], _checked=checked)
    frame = frame.sort_values(["event_time", "sequencer"], na_position="first")
    frame = frame.drop_duplicates("_path", keep="last")
    return frame, list(frame["_checked"])


def _announced_length(value: object) -> int:
    """A record's ``content_length`` (the event's; 0 when missing or not a number)."""
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


def _text(value: object) -> str | None:
    """A record's optional string field (pandas may hand a missing one over as NaN)."""
    return value if isinstance(value, str) and value else None


def _fetched_rows(fetcher: BlobFetcher, pool: ThreadPoolExecutor, frame: pd.DataFrame) -> pd.DataFrame:
    checked = [
        fetcher.check(url, _text(container), _text(name))
        for url, container, name in zip(frame["url"], frame["container"], frame["name"], strict=True)
    ]
    frame, checked = _latest_per_path(frame, checked)
    give_up = GiveUp()  # one request giving up fails the others of this batch at once

    cap = fetcher.config.max_image_bytes
    announced = [_announced_length(value) for value in frame["content_length"]] if "content_length" in frame else None

    def fetch(index: int, item: Checked) -> tuple[bytes | None, str | None]:
        if item.ref is None:
            return None, item.error
        if announced is not None and announced[index] > cap:  # no request for a blob the event says is too large
            return None, too_large(announced[index], cap)
        return fetcher.download(item.ref, give_up)

    fetched = list(pool.map(fetch, range(len(checked)), checked))
    contents = [data for data, _ in fetched]
    return pd.DataFrame(
        {
            "path": [c.path for c in checked],
            "modificationTime": pd.to_datetime(frame["event_time"], utc=True)
            .fillna(pd.Timestamp.now(tz="UTC"))
            .to_numpy(),
            "length": [len(d) if d is not None else 0 for d in contents],
            "content": contents,
            FETCH_ERROR: [error for _, error in fetched],
        }
    )


def fetch_blobs(
    batches: Iterable[pd.DataFrame], *, config: FetchConfig, service: Any | None = None
) -> Iterator[pd.DataFrame]:
    """mapInPandas body: arrival records -> file rows with the blob bytes, fetched in parallel.

    A blob named twice in one batch (under any variant of its URL) is fetched once, its latest
    event winning. ``service`` is a ``BlobServiceClient`` to use instead of the worker's own.
    """
    fetcher = BlobFetcher(config, service)
    with ThreadPoolExecutor(max_workers=config.blob_fetch_threads) as pool:
        for frame in batches:
            # A record without a URL has no row key: nothing to score or to record.
            frame = frame[frame["url"].notna()] if not frame.empty else frame
            if not frame.empty:
                yield _fetched_rows(fetcher, pool, frame)
