import json

import pytest

from infra.arrivals import ArrivalRecord, arrivals_dir, write_arrival_records
from infra.blob import BlobNameError
from infra.settings import Settings


def record(name: str = "a/b.png", **extra) -> ArrivalRecord:
    fields = dict(
        url=f"http://127.0.0.1:10000/devstoreaccount1/images/{name}",
        container="images",
        name=name,
        etag="0x1",
        content_type="image/png",
        content_length=10,
        event_time="2026-11-22T10:00:00Z",
        event_id="e1",
    )
    fields.update(extra)
    return ArrivalRecord(**fields)


def test_records_are_written_atomically_as_jsonl(settings: Settings) -> None:
    path = write_arrival_records(settings, [record(), record("c.png", event_id="e2")])
    assert path is not None and path.parent == arrivals_dir(settings)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["name"] for line in lines] == ["a/b.png", "c.png"]
    assert not list(path.parent.glob(".*"))
    assert write_arrival_records(settings, []) is None


@pytest.mark.parametrize("bad", [{"name": "../x.png"}, {"content_length": -1}, {"event_time": "yesterday"}])
def test_invalid_records_are_refused(bad: dict) -> None:
    with pytest.raises((BlobNameError, ValueError)):
        record(**bad)
