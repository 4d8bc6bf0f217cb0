"""Labeling exports end to end: Azurite blob + SDK event → real Delta MERGE, rejects kept, policy recorded."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest

from handlers.intake.label_exports import ExportError, ExportTooLarge, LabelEntry, parse_export
from infra.blob import BlobStore
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import (
    IMAGES,
    LABEL_REJECTS,
    LABEL_SOURCE_HUMAN,
    PREDICTION_COLUMNS,
    RETRAINING_DECISIONS,
    column_names,
)
from tests.helpers.handlers import blob_event, fake_train_command, serving

pytestmark = pytest.mark.azurite

DAY = dt.date(2026, 1, 2)
PREDICTIONS = column_names(PREDICTION_COLUMNS)


def seed_images(settings: Settings, count: int = 6) -> list[str]:
    """Scored, unlabeled image rows keyed by their blob URLs (as the scoring stream writes them)."""
    store = BlobStore(settings)
    paths = [store.url(settings.images_container, f"2026/01/img-{i}.png") for i in range(count)]
    now = dt.datetime(2026, 1, 2, 12, tzinfo=dt.UTC)
    rows = pa.table(
        {
            "path": paths,
            "load_date": pa.array([DAY] * count, pa.date32()),
            "content": [b"png"] * count,
            "predicted_label": ["circle"] * count,
            "confidence": [0.6] * count,
            "probabilities": pa.array([[0.6, 0.4]] * count, pa.list_(pa.float32())),
            "class_names": [["circle", "square"]] * count,
            "model_name": ["lakesight-classifier"] * count,
            "model_version": ["1"] * count,
            "scored_at": pa.array([now] * count, pa.timestamp("us", tz="UTC")),
        }
    )
    Lake(settings).merge(IMAGES, rows)
    return paths


def coco_export(paths: list[str]) -> bytes:
    """A COCO export naming the images by their source URLs (these images were never handed off)."""
    images = [
        {"id": 1, "file_name": "img-0.png", "absolute_url": paths[0] + "?sv=2024&sig=abc"},
        {"id": 2, "file_name": "whatever.png", "absolute_url": paths[1]},
        {"id": 3, "file_name": "img-2.png", "absolute_url": paths[2].replace("http://", "HTTP://")},
        {"id": 4, "file_name": "img-3.png", "absolute_url": paths[3]},
        {"id": 5, "file_name": "never-uploaded.png"},
    ]
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 1},
        {"id": 11, "image_id": 2, "category_id": 2},
        {"id": 12, "image_id": 3, "category_id": 1},
        {"id": 13, "image_id": 4, "category_id": 3},  # a class the model does not know
        {"id": 14, "image_id": 5, "category_id": 1},  # an image lakesight never saw
    ]
    categories = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "hexagon"}]
    return json.dumps({"images": images, "annotations": annotations, "categories": categories}).encode()


def test_parse_export_forms() -> None:
    jsonl = (
        b'{"image_url": "azureml://datastores/d/paths/images/a.png", "image_details": {"format": "png"},'
        b' "label": "cat"}\n\n{"image_url": "azureml://datastores/d/paths/images/b.png", "label": ["dog"]}\n'
    )
    assert parse_export(jsonl) == [
        LabelEntry(("azureml://datastores/d/paths/images/a.png",), "cat"),
        LabelEntry(("azureml://datastores/d/paths/images/b.png",), "dog"),
    ]
    coco = parse_export(coco_export(["u0", "u1", "u2", "u3"]))
    assert [e.label for e in coco] == ["circle", "square", "circle", "hexagon", "circle"]
    for bad in (b'{"images": [', b'{"image_url": "x"}\n{"label": 1}', b"\xff", b'{"foo": 1}'):
        with pytest.raises(ExportError):
            parse_export(bad)


JSONL_LINE = b'{"image_url": "azureml://datastores/d/paths/images/a.png", "label": "cat"}\n'


def test_a_truncated_coco_export_is_reported_as_coco_not_as_a_jsonl_line() -> None:
    doc = coco_export(["u0", "u1", "u2", "u3"])
    pretty = json.dumps(json.loads(doc), indent=2).encode()
    assert len(parse_export(pretty)) == len(parse_export(doc)) == 5
    for truncated in (doc[: len(doc) // 2], pretty[: len(pretty) // 2]):
        with pytest.raises(ExportError, match="truncated/invalid COCO JSON"):
            parse_export(truncated)
    with pytest.raises(ExportError, match="JSONL line 2"):  # a broken JSONL line is still named as one
        parse_export(JSONL_LINE + b'{"image_url": "b.png", "lab')
    with pytest.raises(ExportError, match="JSONL line 1"):  # hostile JSON in an export is a refusal too
        parse_export(b'{"image_url": "a.png", "label": ' + b"[" * 10_000 + b"]" * 10_000 + b"}")


def test_jsonl_is_streamed_and_the_size_cap_stops_the_read() -> None:
    produced = []

    def download(lines: int):  # chunks split inside lines, as a blob download may
        for number in range(lines):
            produced.append(number)
            yield JSONL_LINE[:10]
            yield JSONL_LINE[10:]

    assert len(parse_export(download(1000), max_bytes=1000 * len(JSONL_LINE))) == 1000
    produced.clear()
    with pytest.raises(ExportTooLarge, match="larger than 1000 bytes"):
        parse_export(download(1000), max_bytes=1000)
    assert len(produced) <= 1000 // len(JSONL_LINE) + 1  # stopped at the cap, not after the whole export
    doc = coco_export(["u0", "u1", "u2", "u3"])
    with pytest.raises(ExportTooLarge):  # a COCO document is read whole, but only within the cap
        parse_export(doc, max_bytes=len(doc) - 1)


def test_export_merges_labels_and_keeps_rejects(blob_settings: Settings, tmp_path, publisher) -> None:
    record = tmp_path / "runs.txt"
    settings = blob_settings.model_copy(
        update={
            "label_classes": ["circle", "square"],
            "retrain_min_new_labels": 3,
            "retrain_cooldown_s": 0.0,
            "retrain_command": fake_train_command(record),
        }
    )
    paths = seed_images(settings)
    lake = Lake(settings)
    before = lake.read(IMAGES, columns=["path", *PREDICTIONS]).sort_by("path")
    store = BlobStore(settings)
    store.upload(settings.exports_container, "exports/coco-1.json", coco_export(paths), content_type="application/json")
    etag = store.service.get_blob_client(settings.exports_container, "exports/coco-1.json").get_blob_properties().etag
    event = blob_event(settings, settings.exports_container, "exports/coco-1.json", etag=etag.strip('"'))

    with serving(settings) as (url, service):
        publisher(url).send([event])
        assert service.wait_idle(60)
        version = lake.version(IMAGES)
        publisher(url).send([event])  # replayed delivery
        same_upload = blob_event(settings, settings.exports_container, "exports/coco-1.json", etag=etag.strip('"'))
        publisher(url).send([same_upload])  # same upload, new event id
        assert service.wait_idle(60)
        assert service.launcher.wait_idle(30)
        outcome = json.loads(service.events.get(event.id)["outcome"])
        launches = service.launcher.launches()

    assert lake.version(IMAGES) == version, "a replayed export must not commit again"
    assert outcome["labels"]["merged"] == 3 and outcome["labels"]["unknown_images"] == 1
    assert outcome["labels"]["unknown_classes"] == {"hexagon": 1}
    rows = {r["path"]: r for r in lake.read(IMAGES).to_pylist()}
    assert [rows[p]["label"] for p in paths] == ["circle", "square", "circle", None, None, None]
    assert all(rows[p]["label_source"] == LABEL_SOURCE_HUMAN and rows[p]["labeled_at"] for p in paths[:3])
    after = lake.read(IMAGES, columns=["path", *PREDICTIONS]).sort_by("path")
    assert after.equals(before), "label merges must not touch prediction columns"

    rejects = lake.read(LABEL_REJECTS).to_pylist()
    assert sorted((r["reason"], r["label"]) for r in rejects) == [
        ("unknown class", "hexagon"),
        ("unknown image", "circle"),
    ]
    assert {r["image_ref"] for r in rejects} == {paths[3], "never-uploaded.png"}

    decisions = lake.read(RETRAINING_DECISIONS).to_pylist()
    assert len(decisions) == 1
    decision = decisions[0]
    assert decision["decision_id"] == event.id and decision["retrain"] and decision["reasons"] == "new_labels"
    assert decision["new_labels"] == 3 and decision["min_new_labels"] == 3
    assert decision["champion_accuracy"] == pytest.approx(2 / 3) and decision["accuracy_sample"] == 3
    assert decision["launch"] == "queued"
    assert [launch["status"] for launch in launches] == ["succeeded"]
    assert record.read_text().split() == [str(version)]


def test_jsonl_export_without_trigger(blob_settings: Settings, publisher) -> None:
    settings = blob_settings.model_copy(update={"retrain_min_new_labels": 50})
    paths = seed_images(settings, 3)
    Lake(settings).merge(
        IMAGES,
        pa.table(
            {
                "path": [paths[2]],
                "load_date": pa.array([DAY], pa.date32()),
                "label": ["circle"],
                "label_source": ["path"],
            }
        ),
        update={"label": "s.label", "label_source": "s.label_source"},
        insert=False,
    )
    lines = [
        {"image_url": paths[0], "label": "circle"},
        {"image_url": paths[1], "label": "rhombus"},
    ]
    BlobStore(settings).upload(
        settings.exports_container, "e/labels.jsonl", "\n".join(json.dumps(line) for line in lines).encode()
    )
    event = blob_event(settings, settings.exports_container, "e/labels.jsonl")
    with serving(settings) as (url, service):
        publisher(url).send([event])
        assert service.wait_idle(60)
        logged = service.events.get(event.id)
    outcome = json.loads(logged["outcome"])
    # Known classes come from the labels already in the table ("circle"): "rhombus" is rejected.
    assert outcome["labels"]["merged"] == 1 and outcome["labels"]["unknown_classes"] == {"rhombus": 1}
    assert outcome["decision"] == {
        "retrain": False,
        "reasons": [],
        "launch": "none",
        "new_labels": 1,
        "psi": None,
        "champion_accuracy": 1.0,
    }  # no champion: no baseline
    assert Lake(settings).read(RETRAINING_DECISIONS).num_rows == 1
