"""BlobCreated: which kind of target an upload is, how an event is refused or ignored, and one upload's
URL variants as one arrival with one canonical key."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.eventgrid import EventGridEvent

from handlers.api.payloads import BLOB_CREATED, Event
from handlers.intake.blob_created import MAX_BLOB_BYTES, Refused, TargetKind, account_url, blob_target
from handlers.intake.eventlog import EventStatus
from infra.errors import LakesightError
from infra.settings import Settings
from tests.helpers.handlers import arrival_lines, blob_created_event, blob_data, serving


def _event(settings: Settings, container: str, name: str, **data: object) -> Event:
    return blob_created_event(settings, container, name, etag='"0x8DA"', **data)


def test_images_and_exports_are_told_apart(settings: Settings) -> None:
    image = blob_target(settings, account_url(settings), _event(settings, settings.images_container, "2026/a.png"))
    assert image.kind is TargetKind.IMAGE and image.name == "2026/a.png" and image.etag == "0x8DA"
    export = blob_target(settings, account_url(settings), _event(settings, settings.exports_container, "e/1.jsonl"))
    assert export.kind is TargetKind.EXPORT and export.container == settings.exports_container


@pytest.mark.parametrize(
    ("container", "name", "data", "status", "reason"),
    [
        ("images", "p.png", {"api": "PutBlock"}, EventStatus.IGNORED, "does not complete a blob"),
        ("images", "e.png", {"length": 0}, EventStatus.IGNORED, "zero-byte"),
        ("labeling-exports", "notes.txt", {}, EventStatus.IGNORED, "not a .json/.jsonl export"),
        ("secrets", "s.png", {}, EventStatus.REFUSED, "not one lakesight handles"),
        ("images", "a/../../etc/passwd", {}, EventStatus.REFUSED, "unsafe blob url"),
    ],
)
def test_guards_name_their_status(
    settings: Settings, container: str, name: str, data: dict, status: EventStatus, reason: str
) -> None:
    with pytest.raises(Refused, match=reason) as refused:
        blob_target(settings, account_url(settings), _event(settings, container, name, **data))
    assert refused.value.status is status


@pytest.mark.parametrize("length", [True, False, -1, 1.5, "1234", None, 10**30, MAX_BLOB_BYTES + 1])
def test_content_length_must_be_a_real_byte_count(settings: Settings, length: object) -> None:
    event = _event(settings, settings.images_container, "a.png")
    event.data["contentLength"] = length  # True used to pass as 1 byte, 10**30 as an upload
    with pytest.raises(Refused, match="is not a byte count") as refused:
        blob_target(settings, account_url(settings), event)
    assert refused.value.status is EventStatus.REFUSED


def test_the_largest_blob_azure_holds_is_a_byte_count(settings: Settings) -> None:
    event = _event(settings, settings.images_container, "a.png")
    event.data["contentLength"] = MAX_BLOB_BYTES
    assert blob_target(settings, account_url(settings), event).kind is TargetKind.IMAGE


def test_refused_takes_only_the_statuses_of_an_event_not_acted_on() -> None:
    assert isinstance(Refused(EventStatus.REFUSED, "x"), LakesightError)
    assert Refused("ignored", "x").status is EventStatus.IGNORED  # a stored string maps to its member
    with pytest.raises(ValueError, match="'refusd'"):
        Refused("refusd", "a typo")
    with pytest.raises(ValueError, match="Refused takes"):
        Refused(EventStatus.DONE, "done is not a refusal")


AZURE_ACCOUNT = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=YWJj;EndpointSuffix=core.windows.net"
CANONICAL = "https://acct.blob.core.windows.net/images/dir/a%20b.png"
# One upload (one eTag) as Event Grid or a hand-made event might name it.
URL_VARIANTS = {
    "as the SDK writes it": CANONICAL,
    "userinfo": "https://user:secret@acct.blob.core.windows.net/images/dir/a%20b.png",
    "http": "http://acct.blob.core.windows.net/images/dir/a%20b.png",
    "upper-case host": "https://ACCT.BLOB.CORE.WINDOWS.NET/images/dir/a%20b.png",
    "SAS query": "https://acct.blob.core.windows.net/images/dir/a%20b.png?sv=2024-05-04&sig=SECRET",
    "fragment": "https://acct.blob.core.windows.net/images/dir/a%20b.png#part",
    "percent-escapes": "https://acct.blob.core.windows.net/images/%64ir/%61%20b.png",
    "raw TAB and LF": "https://acct.blob.core.windows.net/images/dir/a%20\tb.png\n",
    "dfs endpoint": "https://acct.dfs.core.windows.net/images/dir/a%20b.png",
}


def test_variants_of_one_upload_are_one_arrival_with_one_canonical_key(tmp_path: Path, publisher) -> None:
    """Through the real webhook over HTTP, events sent by the azure-eventgrid SDK."""
    settings = Settings(state_dir=tmp_path / "state", blob_connection_string=AZURE_ACCOUNT)
    events = {
        variant: EventGridEvent(
            subject="/blobServices/default/containers/images/blobs/dir/a b.png",
            event_type=BLOB_CREATED,
            data=blob_data(url, etag="0x8DD1"),
            data_version="",
        )
        for variant, url in URL_VARIANTS.items()
    }
    with serving(settings) as (url, service):
        publisher(url).send(list(events.values()))
        assert service.wait_idle()
        status = {variant: service.events.get(e.id)["status"] for variant, e in events.items()}
    records = arrival_lines(settings)
    assert [r["url"] for r in records] == [CANONICAL]
    assert (records[0]["container"], records[0]["name"]) == ("images", "dir/a b.png")
    assert "secret" not in records[0]["url"] and "?" not in records[0]["url"] and "@" not in records[0]["url"]
    # The one that cannot be canonicalised is refused; every other variant is the same upload.
    assert status.pop("raw TAB and LF") == EventStatus.REFUSED
    assert sorted(status.values()) == sorted([EventStatus.DONE] + [EventStatus.DUPLICATE] * 7)
    assert service.duplicates_suppressed == 7
