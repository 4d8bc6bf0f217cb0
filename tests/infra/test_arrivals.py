import json
from pathlib import Path

import pytest

from infra.arrivals import ArrivalRecord, ArrivalsError, arrivals_dir, record_file_bytes, write_arrival_records
from infra.blob_names import BlobNameError
from infra.errors import SettingsError
from infra.settings import Settings, get_settings


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
    [written] = write_arrival_records(settings, [record(), record("c.png", event_id="e2")])
    path = Path(written.location)
    assert path.parent == arrivals_dir(settings) and written.name == path.name
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["name"] for line in lines] == ["a/b.png", "c.png"]
    assert record_file_bytes(path.name) == 20  # the image bytes its records announce
    assert not list(path.parent.glob(".*"))
    assert write_arrival_records(settings, []) == []


def test_no_record_file_announces_more_than_a_micro_batch_may_hold(settings: Settings) -> None:
    budget = settings.model_copy(update={"score_max_bytes_per_trigger": 25})
    sizes = [10, 10, 10, 40, 5]  # the 40-byte record is over the budget alone: a file of its own
    records = [record(f"i{n}.png", content_length=size, event_id=f"e{n}") for n, size in enumerate(sizes)]
    files = write_arrival_records(budget, records)
    assert [[r.name for r in f.records] for f in files] == [["i0.png", "i1.png"], ["i2.png"], ["i3.png"], ["i4.png"]]
    assert [record_file_bytes(f.name) for f in files] == [20, 10, 40, 5]
    assert sorted(f.name for f in files) == [f.name for f in files]  # listed in write order
    assert len(write_arrival_records(settings.model_copy(update={"score_max_bytes_per_trigger": 0}), records)) == 1
    assert record_file_bytes("arrivals-20261122T100000000000-ab12cd34.jsonl") is None  # written before sizes


@pytest.mark.azurite
def test_a_cloud_root_is_written_through_the_blob_api(blob_settings: Settings) -> None:
    from infra.blob import BlobStore

    root = "wasbs://arrivals@devstoreaccount1.blob.core.windows.net/records/"  # Azurite's account
    settings = blob_settings.model_copy(update={"arrivals_root": root})
    [written] = write_arrival_records(settings, [record(), record("c.png", event_id="e2")])
    assert written.location == f"{root.rstrip('/')}/{written.name}"
    store = BlobStore(settings)
    lines = store.download("arrivals", f"records/{written.name}").decode().splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["a/b.png", "c.png"]
    assert not (settings.state_dir / "wasbs:").exists()  # before, a local folder named after the URI
    with pytest.raises(ArrivalsError):
        arrivals_dir(settings)
    other = settings.model_copy(update={"arrivals_root": "abfss://lake@someoneelse.dfs.core.windows.net/arrivals"})
    with pytest.raises(ArrivalsError, match="storage account someoneelse"):
        write_arrival_records(other, [record()])


@pytest.mark.parametrize("root", ["s3://bucket/arrivals", "dbfs:/arrivals", "abfss://lake/arrivals", "https://x/y"])
def test_a_root_the_handlers_cannot_write_is_refused_with_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, root: str
) -> None:
    monkeypatch.setenv("LAKESIGHT_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("LAKESIGHT_ARRIVALS_ROOT", root)
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match=r"use a local folder or abfss://<container>@<account>") as refused:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert "\n" not in str(refused.value)
    for fine in ("abfss://lake@acct.dfs.core.windows.net/arrivals", str(tmp_path / "a"), f"file:{tmp_path}/a"):
        assert Settings(state_dir=tmp_path, arrivals_root=fine).arrivals_root == fine


@pytest.mark.parametrize("bad", [{"name": "../x.png"}, {"content_length": -1}, {"event_time": "yesterday"}])
def test_invalid_records_are_refused(bad: dict) -> None:
    with pytest.raises((BlobNameError, ValueError)):
        record(**bad)
