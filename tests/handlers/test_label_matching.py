"""Labels matched through the hand-off ledger: exports name the images as the labeler saw them.

Every test sends real images through the hand-off (copies and manifest in Azurite, the ledger in
Delta), reads the manifest back as a labeling service would, and applies an export built from it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pytest

from handlers.intake.label_exports import OLDER, REPLACED, apply_export, parse_export
from infra.blob import BlobStore
from infra.blob_names import blob_ref
from infra.core.labeling import hand_off
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES, LABEL_HISTORY, LABEL_REJECTS, LABELING_REQUESTS
from tests.handlers.conftest import CLASSES
from tests.helpers.handlers import blob_event, serving
from tests.helpers.memory import peak_in_subprocess

pytestmark = pytest.mark.azurite

DAY = dt.date(2026, 12, 3)
NOW = dt.datetime(2026, 12, 3, 10, tzinfo=dt.UTC)
WORKSPACE = "azureml://subscriptions/s-1/resourcegroups/rg/workspaces/ws"


def scored_rows(paths: list[str], *, seed: str = "") -> pa.Table:
    blobs = [f"png-{seed}{p}".encode() for p in paths]
    n = len(paths)
    return IMAGES.conform(
        pa.table(
            {
                "path": paths,
                "load_date": pa.array([DAY] * n, pa.date32()),
                "content": blobs,
                "content_hash": [hashlib.sha256(b).hexdigest() for b in blobs],
                "predicted_label": ["0"] * n,
                "confidence": [0.5 + i / 1000 for i in range(n)],
                "probabilities": [[0.5, 0.5]] * n,
                "class_names": [CLASSES] * n,
                "model_name": ["m"] * n,
                "model_version": ["1"] * n,
                "scored_at": pa.array([NOW] * n, pa.timestamp("us", tz="UTC")),
            }
        )
    )


def send(settings: Settings, paths: list[str], batch_id: int = 0) -> list[dict]:
    """Score ``paths``, hand the unsure ones off, and return the manifest a labeler receives."""
    lake = Lake(settings)
    handed = hand_off(settings, lake, scored_rows(paths), app_id="score:q", batch_id=batch_id, now=NOW)
    lake.merge(IMAGES, handed.table)
    assert handed.sent == len(paths) and handed.manifest_url
    ref = blob_ref(handed.manifest_url)
    text = BlobStore(settings).download(ref.container, ref.name).decode()
    return [json.loads(line) for line in text.splitlines() if line]


def sources(settings: Settings, count: int) -> list[str]:
    store = BlobStore(settings)
    blobs = [store.url(settings.images_container, f"cam1/digit-{i:04d}.png") for i in range(count)]
    return blobs + [f"file:/data/seed/0/digit-{i:04d}.png" for i in range(count, count + 2)]


def jsonl(lines: list[dict]) -> bytes:
    return "\n".join(json.dumps(line) for line in lines).encode()


def labels_of(lake: Lake) -> dict[str, str | None]:
    return {r["path"]: r["label"] for r in lake.read(IMAGES, columns=["path", "label"]).to_pylist()}


def rejects(lake: Lake) -> list[tuple[str, str]]:
    if not lake.exists(LABEL_REJECTS):
        return []
    return sorted((r["image_ref"], r["reason"]) for r in lake.read(LABEL_REJECTS).to_pylist())


def apply(settings: Settings, lake: Lake, data: bytes, event_id: str, **options):
    options.setdefault("classes", CLASSES)
    return apply_export(settings, lake, parse_export(data), event_id=event_id, export_url=f"x/{event_id}", **options)


def datastore_path(settings: Settings, image_url: str) -> str:
    name = blob_ref(image_url).name
    return f"{WORKSPACE}/datastores/{settings.labeling_datastore}/paths/{name}"


def test_an_export_of_the_manifests_copy_urls_merges_every_entry(labeling: Settings) -> None:
    paths = sources(labeling, 10)
    manifest = send(labeling, paths)
    lake = Lake(labeling)
    # The labeler's tool sends the copies back as it got them: with a SAS query, one %-escaped.
    lines = [{"image_url": m["image_url"] + "?sv=2024&sig=x", "label": "1"} for m in manifest]
    lines[0]["image_url"] = manifest[0]["image_url"].replace("http://", "HTTP://").replace("-", "%2D")
    report = apply(labeling, lake, jsonl(lines), "copies")

    assert report.merged == 12 and report.rejected == {}, report.as_dict()
    assert rejects(lake) == []
    assert labels_of(lake) == dict.fromkeys(paths, "1")
    rows = lake.read(IMAGES, columns=["path", "content_hash", "labeled_content_hash"]).to_pylist()
    assert all(r["labeled_content_hash"] == r["content_hash"] for r in rows)


def test_an_export_of_azureml_datastore_paths_merges_every_entry(labeling: Settings) -> None:
    paths = sources(labeling, 4)
    manifest = send(labeling, paths)
    lake = Lake(labeling)
    lines = [{"image_url": datastore_path(labeling, m["image_url"]), "label": "0"} for m in manifest]
    report = apply(labeling, lake, jsonl(lines), "datastore")
    assert report.merged == 6 and report.rejected == {}, report.as_dict()
    assert labels_of(lake) == dict.fromkeys(paths, "0")

    # Another datastore (another container behind it) never matches, even with the same blob names.
    other = [{"image_url": lines[0]["image_url"].replace(labeling.labeling_datastore, "elsewhere"), "label": "1"}]
    assert apply(labeling, lake, jsonl(other), "other-datastore").rejected == {"another datastore": 1}
    assert labels_of(lake) == dict.fromkeys(paths, "0")


def test_a_coco_export_and_task_ids_name_the_copies(labeling: Settings) -> None:
    paths = sources(labeling, 3)
    manifest = send(labeling, paths)
    lake = Lake(labeling)
    names = [blob_ref(m["image_url"]).name for m in manifest]
    images = [
        {"id": 1, "file_name": names[0], "absolute_url": manifest[0]["image_url"]},
        {"id": 2, "file_name": names[1], "coco_url": f"AmlDatastore://{labeling.labeling_datastore}/{names[1]}"},
        {"id": 3, "file_name": names[2]},  # the path inside the datastore alone
        {"id": 4, "file_name": names[3].rsplit("/", 1)[-1]},  # a bare file name: unique in the container
    ]
    coco = {
        "images": images,
        "annotations": [{"id": 10 + i, "image_id": i, "category_id": 1} for i in range(1, 5)],
        "categories": [{"id": 1, "name": "1"}],
    }
    report = apply(labeling, lake, json.dumps(coco).encode(), "coco")
    assert report.merged == 4 and report.rejected == {}, report.as_dict()
    by_task = [{"task_id": m["task_id"], "label": "0"} for m in manifest[4:]]
    report = apply(labeling, lake, jsonl(by_task), "tasks")
    assert report.merged == 1 and report.rejected == {}, report.as_dict()
    labels = labels_of(lake)
    assert [labels[m["source_url"]] for m in manifest] == ["1", "1", "1", "1", "0"]


def test_a_same_named_image_of_another_account_or_container_is_rejected(labeling: Settings) -> None:
    paths = sources(labeling, 2)
    send(labeling, paths)
    lake = Lake(labeling)
    own = urlsplit(paths[0])
    foreign = [
        "https://otheraccount.blob.core.windows.net/othercontainer/cam2/digit-0000.png",
        "https://otheraccount.blob.core.windows.net/images/cam1/digit-0000.png",  # same container and name
        f"{own.scheme}://{own.netloc}/devstoreaccount1/othercontainer/cam1/digit-0000.png",  # same account
        "digit-0002.png",  # the bare name of a source, not of a copy in the labeling container
        "seed/0/digit-0002.png",  # a relative path: a blob of the labeling container, which has none
        "s3://bucket/digit-0000.png",
    ]
    report = apply(labeling, lake, jsonl([{"image_url": ref, "label": "1"} for ref in foreign]), "foreign")

    assert report.merged == 0
    assert rejects(lake) == sorted(
        [(ref, "unknown image") for ref in foreign[:5]] + [(foreign[5], "not an image reference")]
    )
    assert set(labels_of(lake).values()) == {None}


def test_the_source_url_or_path_itself_still_names_its_image(labeling: Settings) -> None:
    paths = sources(labeling, 2)
    send(labeling, paths)
    lake = Lake(labeling)
    lines = [{"image_url": paths[0], "label": "1"}]
    lines.append({"image_url": paths[2].removeprefix("file:"), "label": "0"})  # /data/seed/... as a plain path
    report = apply(labeling, lake, jsonl(lines), "sources")
    assert report.merged == 2 and report.rejected == {}, report.as_dict()
    assert labels_of(lake)[paths[0]] == "1" and labels_of(lake)[paths[2]] == "0"


def at(hour: int) -> str:
    return dt.datetime(2026, 12, 3, hour, tzinfo=dt.UTC).isoformat()


def test_the_newest_label_wins_whatever_order_exports_arrive_in(labeling: Settings) -> None:
    paths = sources(labeling, 2)
    manifest = send(labeling, paths)
    lake = Lake(labeling)
    url = manifest[0]["image_url"]
    newer = jsonl([{"image_url": url, "label": "1", "labeled_at": at(12)}])
    older = jsonl([{"image_url": url, "label": "0", "labeled_at": at(11)}])

    apply(labeling, lake, newer, "newer")
    version = lake.version(IMAGES)
    apply(labeling, lake, older, "older-reuploaded")  # arrives later, was labeled earlier
    assert lake.version(IMAGES) == version, "an older label must not commit"
    assert labels_of(lake)[manifest[0]["source_url"]] == "1"
    history = lake.read(LABEL_HISTORY).to_pylist()
    assert [(h["label"], h["kept_label"], h["reason"]) for h in history] == [("0", "1", OLDER)]

    apply(labeling, lake, older, "older-again")  # the same disagreement again: recorded once
    assert lake.read(LABEL_HISTORY).num_rows == 1

    latest = jsonl([{"image_url": url, "label": "0", "labeled_at": at(13)}])
    apply(labeling, lake, latest, "latest")
    row = lake.read(IMAGES, columns=["path", "label", "labeled_at"]).to_pylist()
    mine = next(r for r in row if r["path"] == manifest[0]["source_url"])
    assert mine["label"] == "0" and mine["labeled_at"] == dt.datetime(2026, 12, 3, 13, tzinfo=dt.UTC)
    reasons = sorted((h["label"], h["kept_label"], h["reason"]) for h in lake.read(LABEL_HISTORY).to_pylist())
    assert reasons == [("0", "1", OLDER), ("1", "0", REPLACED)]


def test_an_export_without_times_is_as_new_as_its_event(labeling: Settings) -> None:
    paths = sources(labeling, 1)
    manifest = send(labeling, paths)
    lake = Lake(labeling)
    line = jsonl([{"image_url": manifest[0]["image_url"], "label": "1"}])
    apply(labeling, lake, line, "first", labeled_at=dt.datetime(2026, 12, 3, 12, tzinfo=dt.UTC))
    stale = jsonl([{"image_url": manifest[0]["image_url"], "label": "0"}])
    apply(labeling, lake, stale, "late-delivery", labeled_at=dt.datetime(2026, 12, 3, 11, tzinfo=dt.UTC))
    assert labels_of(lake)[manifest[0]["source_url"]] == "1"


def test_the_ledger_is_read_by_key(labeling: Settings) -> None:
    """The ledger knows each copy's task id and file name: what a labeler can name an image by."""
    paths = sources(labeling, 1)
    manifest = send(labeling, paths)
    ledger = Lake(labeling).read(LABELING_REQUESTS, columns=["path", "task_id", "image_name", "image_url"])
    row = next(r for r in ledger.to_pylist() if r["path"] == manifest[0]["source_url"])
    assert row["task_id"] == manifest[0]["task_id"] and row["image_url"].endswith("/" + row["image_name"])


# Azure ML Data Labeling exports, in the shapes Microsoft documents (docs/LABELING.md cites them),
# for a labeling project whose datastore is the labeling container: delivered as a blob in the
# exports container and announced by its BlobCreated event to the handler over HTTP.
def deliver(settings: Settings, publisher, name: str, data: bytes) -> dict:
    BlobStore(settings).upload(settings.exports_container, name, data)
    event = blob_event(settings, settings.exports_container, name)
    with serving(settings) as (url, service):
        publisher(url).send([event])
        assert service.wait_idle(60)
        return json.loads(service.events.get(event.id)["outcome"])["labels"]


def test_an_azure_ml_coco_export_merges_every_entry(labeling: Settings, publisher) -> None:
    manifest = send(labeling, sources(labeling, 3))
    datastore = labeling.labeling_datastore
    images, annotations = [], []
    for number, line in enumerate(manifest, 1):
        name = blob_ref(line["image_url"]).name  # the path inside the datastore
        images.append(
            {
                "id": number,
                "width": 32,
                "height": 32,
                "file_name": name,
                "coco_url": f"AmlDatastore://{datastore}/{name}",
                "absolute_url": line["image_url"],
                "date_captured": "2026-12-03T10:15:00.0000000Z",
            }
        )
        annotations.append({"id": number, "category_id": 1 + number % 2, "image_id": number, "area": 0.0})
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "0"}, {"id": 2, "name": "1"}],
    }
    labels = deliver(labeling, publisher, "export/coco/labels.json", json.dumps(coco).encode())

    assert labels["merged"] == 5 and labels["rejected"] == {}, labels
    got = labels_of(Lake(labeling))
    assert [got[line["source_url"]] for line in manifest] == [str(n % 2) for n in range(1, 6)]


def test_an_azure_ml_jsonl_export_merges_every_entry(labeling: Settings, publisher) -> None:
    manifest = send(labeling, sources(labeling, 3))
    lines = [
        {
            "image_url": datastore_path(labeling, line["image_url"]),
            "image_details": {"format": "png", "width": "32px", "height": "32px"},
            "label": "1" if number % 2 else ["0"],  # multi-class, and multi-label with one label
        }
        for number, line in enumerate(manifest)
    ]
    labels = deliver(labeling, publisher, "export/jsonl/labels.jsonl", jsonl(lines))

    assert labels["merged"] == 5 and labels["rejected"] == {}, labels
    got = labels_of(Lake(labeling))
    assert [got[line["source_url"]] for line in manifest] == ["0", "1", "0", "1", "0"]


def export_heap_peak(rows: int, folder: str) -> int:
    """Matching an export of 20 images against a table of ``rows`` more: the peak Python heap."""
    import tracemalloc

    settings = Settings(state_dir=Path(folder) / f"state-{rows}")
    lake = Lake(settings)
    named = [f"file:/data/named-{i:02d}.png" for i in range(20)]
    paths = [f"file:/data/bulk-{i:06d}.png" for i in range(rows)] + named
    day = pa.array([NOW.date()] * len(paths), pa.date32())
    lake.merge(IMAGES, pa.table({"path": paths, "load_date": day, "content_hash": ["h"] * len(paths)}))
    export = jsonl([{"image_url": path, "label": "1"} for path in named])
    warm = apply(settings, Lake(settings), export, "warm")  # imports and caches outside the measurement
    assert warm.merged == 20, warm.as_dict()
    lake = Lake(settings)  # a fresh reader, as each export gets
    tracemalloc.start()
    try:
        report = apply(settings, lake, export, "measured")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.rejected == {}, report.as_dict()
    return peak


def test_an_export_reads_in_python_memory_independent_of_the_table_size(tmp_path) -> None:
    """Matching used to index every ``images`` path in Python for each export; the keyed lookup
    reads only the rows the export names. Arrow buffers are not Python objects, so tracemalloc
    sees only what the matching itself builds (on 21942b8 the peak grew by 35.9 MiB from 1k to 60k rows)."""
    peak = "tests.handlers.test_label_matching:export_heap_peak"
    small, large = peak_in_subprocess(peak, 1_000, tmp_path), peak_in_subprocess(peak, 60_000, tmp_path)
    # 59,000 more paths held as Python strings were megabytes; the keyed lookup leaves the heap as it was.
    assert large - small < 2 * 1024 * 1024, (small, large)
