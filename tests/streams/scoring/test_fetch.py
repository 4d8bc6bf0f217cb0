"""The executor-side blob fetch on its own (no Spark): untrusted arrival records, URL variants,
definite answers as error rows, and unreachable storage as a failure of the whole batch."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pandas as pd
import pytest

from infra.blob import STORAGE_UNAVAILABLE, BlobStore, StorageUnavailable, account_url, bounded_service_client
from infra.processes import free_port
from infra.settings import Settings
from streams.scoring.executor import FETCH_ERROR
from streams.scoring.fetch import REFUSED, VANISHED, fetch_blobs
from tests.helpers.images import solid_png
from tests.helpers.streams import arrival_frame, hand_written_record

NOW = dt.datetime.now(dt.UTC).isoformat()


def _fetch(settings: Settings, records: list[dict]) -> tuple[dict[str, dict], list[str]]:
    """``(rows by path, URLs of the requests made)``: the fetch through a real client on Azurite."""
    requests: list[str] = []
    service = bounded_service_client(settings, raw_request_hook=lambda r: requests.append(r.http_request.url))
    frames = list(fetch_blobs([arrival_frame(records)], config=settings, service=service))
    rows = pd.concat(frames).to_dict("records") if frames else []
    return {row["path"]: row for row in rows}, [url.split("?")[0] for url in requests]


@pytest.mark.azurite
def test_records_naming_other_containers_or_unsafe_names_are_error_rows_and_never_fetched(
    blob_settings: Settings,
) -> None:
    settings = blob_settings
    store = BlobStore(settings)
    images, exports = settings.images_container, settings.exports_container
    store.upload(exports, "export.jsonl", b'{"secret": 1}')
    good = store.upload(images, "ok.png", solid_png(10))
    base = account_url(settings)
    records = [
        hand_written_record(store.url(exports, "export.jsonl"), exports, "export.jsonl", at=NOW),
        hand_written_record(f"{base}{images}/../{exports}/export.jsonl", images, f"../{exports}/export.jsonl", at=NOW),
        # The URL is the row key: bytes from the exports container must not land under it.
        hand_written_record(f"{base}{images}/other.png", exports, "export.jsonl", at=NOW),
        hand_written_record(f"http://127.0.0.1:{free_port()}/devstoreaccount1/{images}/ok.png", None, None, at=NOW),
        hand_written_record(good, images, "ok.png", at=NOW),
    ]

    rows, requests = _fetch(settings, records)

    assert requests == [good]  # the one record that names a blob of the images container
    assert rows[good]["content"] == solid_png(10) and rows[good][FETCH_ERROR] is None
    refused = [row for path, row in rows.items() if path != good]
    assert len(refused) == 4
    for row in refused:
        assert row[FETCH_ERROR].startswith(REFUSED) and row["content"] is None
    assert "not the images container" in rows[store.url(exports, "export.jsonl")][FETCH_ERROR]
    assert "'..' segment" in rows[f"{base}{images}/../{exports}/export.jsonl"][FETCH_ERROR]


@pytest.mark.azurite
def test_url_variants_of_one_blob_are_one_row_under_the_canonical_url(blob_settings: Settings) -> None:
    settings = blob_settings
    store = BlobStore(settings)
    canonical = store.upload(settings.images_container, "dir/a b.png", solid_png(30))
    variants = [
        canonical,
        canonical.replace("http://", "http://user:pw@"),
        canonical + "?sv=2024&sig=SECRET",
        canonical + "#fragment",
        "HTTP://" + canonical.removeprefix("http://").replace("dir/a%20b", "%64ir/%61%20b"),
    ]
    records = [
        hand_written_record(url, None, None, at=f"2026-01-02T03:04:0{i}+00:00") for i, url in enumerate(variants)
    ]

    rows, requests = _fetch(settings, records)

    assert list(rows) == [canonical] and requests == [canonical]
    assert rows[canonical]["content"] == solid_png(30)


@pytest.mark.azurite
def test_a_blob_gone_before_it_is_read_is_a_definite_error_row(blob_settings: Settings) -> None:
    url = f"{account_url(blob_settings)}{blob_settings.images_container}/never-uploaded.png"
    rows, requests = _fetch(blob_settings, [hand_written_record(url, None, None, at=NOW)])
    assert rows[url][FETCH_ERROR] == VANISHED and rows[url]["content"] is None
    assert requests == [url]  # asked once: a 404 is an answer, not an outage


def test_unreachable_storage_fails_the_batch_quickly_instead_of_writing_error_rows(tmp_path: Path) -> None:
    """A closed port: nothing listens, so every connection is refused at once."""
    settings = Settings(state_dir=tmp_path / "state", blob_port=free_port(), blob_retry_s=1.0, blob_fetch_threads=4)
    base = f"{account_url(settings)}{settings.images_container}"
    records = [hand_written_record(f"{base}/img-{i}.png", None, None, at=NOW) for i in range(20)]
    began = time.monotonic()
    with pytest.raises(StorageUnavailable, match=STORAGE_UNAVAILABLE) as failed:
        list(fetch_blobs([arrival_frame(records)], config=settings))
    assert time.monotonic() - began < 15  # the SDK's own retries took minutes
    assert "ServiceRequestError" in str(failed.value)


@pytest.mark.azurite
def test_an_oversized_blob_is_an_error_row_and_at_most_one_byte_past_the_cap_is_downloaded(
    blob_settings: Settings,
) -> None:
    cap = 50_000
    settings = blob_settings.model_copy(update={"max_image_bytes": cap})
    store = BlobStore(settings)
    # The record understates the size (records are not trusted): only the ranged read can tell.
    big = store.upload(settings.images_container, "big.png", solid_png(7) + bytes(2_000_000))
    exact = store.upload(settings.images_container, "exact.png", solid_png(8) + bytes(cap - len(solid_png(8))))
    received: list[int] = []
    service = bounded_service_client(
        settings, raw_response_hook=lambda r: received.append(int(r.http_response.headers.get("Content-Length", 0)))
    )
    records = [hand_written_record(url, None, None, at=NOW) for url in (big, exact)]
    rows = {
        row["path"]: row
        for row in pd.concat(fetch_blobs([arrival_frame(records)], config=settings, service=service)).to_dict("records")
    }

    assert rows[big]["content"] is None
    assert rows[big][FETCH_ERROR] == f"too large: {2_000_000 + len(solid_png(7))} bytes (limit {cap})"
    assert rows[exact][FETCH_ERROR] is None and len(rows[exact]["content"]) == cap
    assert received and max(received) <= cap + 1  # the whole blob never crossed the wire


@pytest.mark.azurite
def test_a_record_announcing_an_oversized_blob_is_an_error_row_without_a_request(blob_settings: Settings) -> None:
    settings = blob_settings.model_copy(update={"max_image_bytes": 1000})
    url = BlobStore(settings).upload(settings.images_container, "announced.png", bytes(5000))
    record = {**hand_written_record(url, None, None, at=NOW), "content_length": 5000}
    rows, requests = _fetch(settings, [record])
    assert rows[url][FETCH_ERROR] == "too large: 5000 bytes (limit 1000)" and rows[url]["content"] is None
    assert requests == []
