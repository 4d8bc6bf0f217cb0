"""Executor side of the arrival-record source: each record's blob downloaded, several at a time.

Runs inside ``mapInPandas`` (``streams.scoring.sources.file_rows`` wires it in on the driver). A
blob gone before it is read becomes a row with ``fetch_error`` set: recorded once, never retried.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd

from infra.settings import Settings
from streams.file_rows import BINARY_FILE_DDL
from streams.scoring.executor import FETCH_ERROR

FETCHED_DDL = f"{BINARY_FILE_DDL}, {FETCH_ERROR} string"
VANISHED = "blob vanished before it was read"

# One client per connection string and Python worker: workers are reused across tasks.
_clients: dict[str, Any] = {}


def _blob_service(settings: Settings) -> Any:
    from azure.storage.blob import BlobServiceClient

    conn = settings.blob_connection()
    client = _clients.get(conn)
    if client is None:
        client = _clients[conn] = BlobServiceClient.from_connection_string(conn)
    return client


def _download(service: Any, url: str, container: str, name: str) -> tuple[bytes | None, str | None]:
    from azure.core.exceptions import ResourceNotFoundError

    from infra.blob import BlobNameError, split_blob_url

    try:
        if not container or not name:
            container, name = split_blob_url(url)
        return service.get_blob_client(container, name).download_blob().readall(), None
    except ResourceNotFoundError:
        return None, VANISHED
    except BlobNameError as exc:
        return None, f"refused blob name: {exc}"
    except Exception as exc:  # noqa: BLE001 - a poison record must not kill the task
        return None, f"blob fetch failed: {type(exc).__name__}: {exc}"[:500]


def fetch_blobs(batches: Iterable[pd.DataFrame], *, settings: Settings) -> Iterator[pd.DataFrame]:
    """mapInPandas body: arrival records -> file rows with the blob bytes, fetched in parallel.

    A URL named twice in one batch is fetched once (its latest event wins).
    """
    service = _blob_service(settings)
    with ThreadPoolExecutor(max_workers=settings.blob_fetch_threads) as pool:
        for frame in batches:
            if frame.empty:
                continue
            # A record without a URL has no row key: nothing to score or to record.
            frame = frame[frame["url"].notna()]
            if frame.empty:
                continue
            frame = frame.sort_values(["event_time", "sequencer"], na_position="first")
            frame = frame.drop_duplicates("url", keep="last")
            fetched = list(
                pool.map(
                    lambda row: _download(service, row[0], row[1] or "", row[2] or ""),
                    zip(frame["url"], frame["container"], frame["name"], strict=True),
                )
            )
            contents = [data for data, _ in fetched]
            yield pd.DataFrame(
                {
                    "path": frame["url"].to_numpy(),
                    "modificationTime": pd.to_datetime(frame["event_time"], utc=True)
                    .fillna(pd.Timestamp.now(tz="UTC"))
                    .to_numpy(),
                    "length": [len(d) if d is not None else 0 for d in contents],
                    "content": contents,
                    FETCH_ERROR: [error for _, error in fetched],
                }
            )
