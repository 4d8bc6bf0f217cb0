"""``lakesight featurize``: embeddings of a folder, a blob container or a lake table into a table of their own."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from infra.errors import LakesightError, UsageError
from infra.lake import Lake
from infra.settings import Settings
from tests.helpers.cli import lakesight
from tests.helpers.images import solid_png, truncated_png
from tests.helpers.models import CLASSES, IMAGE_SIZE, with_model
from tests.helpers.streams import shapes
from tests.helpers.training import write_rows

TINY_DIMS = 8  # tiny_cnn's penultimate layer: 8 filters, globally pooled
ODD_NAME = "odd name ü #1 [x] {a,b}.png"


def _folder(root: Path) -> dict[str, list[Path]]:
    """Nested shapes, an odd file name, an upper-case extension, a corrupt file, and files to skip."""
    good = shapes(root / "deep" / "er", 4, seed=3)
    odd = root / ODD_NAME
    shutil.copy(good[0], odd)
    upper = root / "UPPER.PNG"
    shutil.copy(good[1], upper)
    broken = root / "broken.png"
    broken.write_bytes(truncated_png())
    skipped = [root / "notes.txt", root / ".partial.png", root / "_tmp" / "hidden.png"]
    for path in skipped:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(solid_png(90))
    return {"good": [*good, odd, upper], "broken": [broken], "skipped": skipped}


def _rows(settings: Settings, table: str) -> dict[str, dict]:
    return {row["path"]: row for row in Lake(settings).read(table).to_pylist()}


def _assert_unit_embeddings(rows: list[dict], dims: int) -> None:
    for row in rows:
        vector = np.asarray(row["embedding"], dtype=np.float32)
        assert vector.shape == (dims,), row["path"]
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4, row["path"]
        assert row["error"] is None and row["predicted_label"] in CLASSES and 0 < row["confidence"] <= 1


@pytest.fixture(scope="module")
def plain_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry whose champion has no embedding layer (an output layer not named 'probabilities')."""
    from training.bench.toy_models import register_champion, tiny_cnn

    state = tmp_path_factory.mktemp("plain-model-store")
    network = tiny_cnn(IMAGE_SIZE, len(CLASSES), embedding=False)
    register_champion(Settings(state_dir=state), network, class_names=CLASSES, image_size=IMAGE_SIZE)
    return state


@pytest.mark.slow
def test_a_folder_through_the_cli_twice(tmp_path: Path, champion_settings: Settings) -> None:
    files = _folder(tmp_path / "in")
    state = champion_settings.state_dir
    first = lakesight("featurize", str(tmp_path / "in"), "--out", "shape_embeddings", "--batch", "3", state=state)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)  # stdout is the summary alone
    expected = len(files["good"]) + len(files["broken"])
    assert summary["rows"] == expected and summary["errors"] == 1 and summary["inserted"] == expected
    assert (summary["table"], summary["model_version"], summary["dims"]) == ("shape_embeddings", "1", TINY_DIMS)
    assert f"{expected} images into shape_embeddings with version 1" in first.stderr  # progress on stderr

    rows = _rows(champion_settings, "shape_embeddings")
    assert set(rows) == {f"file:{p}" for p in files["good"] + files["broken"]}  # nothing skipped is there
    assert f"file:{tmp_path / 'in' / ODD_NAME}" in rows
    _assert_unit_embeddings([rows[f"file:{p}"] for p in files["good"]], TINY_DIMS)
    broken = rows[f"file:{files['broken'][0]}"]
    assert broken["error"] and broken["embedding"] is None and broken["predicted_label"] is None
    assert {r["model_version"] for r in rows.values()} == {"1"}
    # The odd-named copy has its original's bytes, hence its hash and embedding.
    original, odd = rows[f"file:{files['good'][0]}"], rows[f"file:{tmp_path / 'in' / ODD_NAME}"]
    assert odd["content_hash"] == original["content_hash"]
    assert np.allclose(odd["embedding"], original["embedding"], atol=1e-5)

    second = lakesight("featurize", str(tmp_path / "in"), "--out", "shape_embeddings", "--version", "1", state=state)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert (again["rows"], again["inserted"], again["updated"]) == (expected, 0, expected)
    rerun = _rows(champion_settings, "shape_embeddings")
    assert Lake(champion_settings).read("shape_embeddings").num_rows == expected  # no duplicates
    assert all(rerun[p]["featurized_at"] > rows[p]["featurized_at"] for p in rows)  # every row updated


def test_a_lake_table_with_a_pinned_version(champion_settings: Settings) -> None:
    from streams.featurize import featurize

    images = [solid_png(60 + 40 * i, 24) for i in range(3)]
    write_rows(
        champion_settings,
        [(f"file:/data/img-{i}.png", data, None, None) for i, data in enumerate(images)]
        + [("file:/data/junk.png", b"not an image at all", None, None)],
    )
    progress: list[int] = []
    report = featurize(
        champion_settings,
        "images",
        "image_embeddings",
        version="1",
        batch=2,
        flush_rows=2,
        on_progress=lambda r: progress.append(r.rows),
    )
    assert (report.rows, report.errors, report.model_version, report.dims) == (4, 1, "1", TINY_DIMS)
    assert report.commits == 2 and progress == [2, 4]  # a commit per two rows, each reported
    rows = _rows(champion_settings, "image_embeddings")
    assert set(rows) == {f"file:/data/img-{i}.png" for i in range(3)} | {"file:/data/junk.png"}
    _assert_unit_embeddings([rows[f"file:/data/img-{i}.png"] for i in range(3)], TINY_DIMS)
    assert rows["file:/data/junk.png"]["error"] == "not an image" and rows["file:/data/junk.png"]["embedding"] is None

    again = featurize(champion_settings, "images", "image_embeddings")  # the champion is version 1 too
    assert (again.inserted, again.updated) == (0, 4)
    assert Lake(champion_settings).read("image_embeddings").num_rows == 4


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["{folder}", "--out", "images"], "one of lakesight's own tables"),
        (["{folder}", "--out", "Labeling_Requests"], "one of lakesight's own tables"),
        (["{folder}", "--out", "../escape"], "is not a table name"),
        (["{missing}", "--out", "emb"], "does not exist"),
        (["container:Not_A_Container", "--out", "emb"], "not a valid blob container name"),
        (["https://acct.blob.core.windows.net/images", "--out", "emb"], "container:NAME"),
        (["{folder}", "--out", "emb", "--version", "9"], "has no version 9 (versions: 1)"),
    ],
)
def test_refusals_are_one_line_errors_and_write_nothing(
    tmp_path: Path, champion_settings: Settings, args: list[str], says: str
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(solid_png(100))
    given = [a.format(folder=folder, missing=tmp_path / "missing") for a in args]
    result = lakesight("featurize", *given, state=champion_settings.state_dir)
    assert result.returncode == 1, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not Lake(champion_settings).exists("emb")


def test_a_model_without_embeddings_is_refused_before_any_work(tmp_path: Path, plain_store: Path) -> None:
    from streams.featurize import featurize
    from streams.scoring.config import ScoringConfig
    from streams.scoring.executor import embed_series

    settings = with_model(Settings(state_dir=tmp_path / "state"), plain_store)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(solid_png(100))
    with pytest.raises(LakesightError, match="has no embeddings"):
        featurize(settings, str(tmp_path / "in"), "emb")
    assert not Lake(settings).exists("emb")
    # The SQL function's body answers null instead: it classifies on.
    assert list(embed_series(pd.Series([solid_png(100), None]), ScoringConfig.of(settings))) == [None, None]


def test_what_a_source_names(tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.tables import embeddings_spec
    from streams.featurize import CONTAINER, FOLDER, TABLE, resolve_source

    lake = Lake(settings)
    write_rows(settings, [("file:/x.png", solid_png(), None, None)])
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_source(lake, "images").kind == TABLE
    assert resolve_source(lake, "photos").kind == FOLDER  # a relative folder: not a table of the lake
    assert resolve_source(lake, "photos").location == str(tmp_path / "photos")
    ref = resolve_source(lake, "container:images/cam-1/2026")
    assert (ref.kind, ref.location, ref.prefix, str(ref)) == (
        CONTAINER,
        "images",
        "cam-1/2026",
        "container:images/cam-1/2026",
    )
    with pytest.raises(UsageError, match=r"the lake has: images"):
        resolve_source(lake, "nowhere")
    lake.merge(embeddings_spec("vectors"), pa.table({"path": ["p"]}))  # a table without content
    with pytest.raises(UsageError, match="no content column"):
        resolve_source(lake, "vectors")


@pytest.mark.azurite
def test_a_blob_container_with_a_prefix(tmp_path: Path, azurite_port: int, model_store: Path) -> None:
    from infra.blob import BlobStore
    from streams.featurize import featurize

    settings = with_model(Settings(state_dir=tmp_path / "state", blob_port=azurite_port), model_store)
    store = BlobStore(settings)
    container = f"feat-{uuid.uuid4().hex[:12]}"  # the session's Azurite is shared
    store.ensure_containers([container])
    good = [store.upload(container, f"cam/{i}/img {i}.png", solid_png(70 + 50 * i, 24)) for i in range(3)]
    broken = store.upload(container, "cam/broken.png", truncated_png())
    store.upload(container, "cam/readme.txt", b"not an image")
    store.upload(container, "other/outside.png", solid_png(10))
    report = featurize(settings, f"container:{container}/cam/", "blob_embeddings")
    assert (report.rows, report.errors, report.source) == (4, 1, f"container:{container}/cam/")
    rows = _rows(settings, "blob_embeddings")
    assert set(rows) == {*good, broken}  # keyed by the blobs' canonical URLs
    _assert_unit_embeddings([rows[url] for url in good], TINY_DIMS)
    assert rows[broken]["error"] and rows[broken]["embedding"] is None
    with pytest.raises(UsageError, match="'no-such-container' does not exist"):
        featurize(settings, "container:no-such-container", "other_embeddings")
    assert not Lake(settings).exists("other_embeddings")  # refused before the table is made


def _trained_digits_cnn(train: list[Path], epochs: int) -> object:
    """Training's default CNN fitted on the digit PNGs with Keras directly (labels: folder names)."""
    import keras

    from training.data.preprocess import decode_images
    from training.model.models import DEFAULT_MODEL, build_model

    images, errors = decode_images([p.read_bytes() for p in train], 32)
    assert not any(errors)
    labels = np.array([int(p.parent.name) for p in train])
    keras.utils.set_random_seed(0)
    model = build_model(DEFAULT_MODEL, image_size=32, num_classes=10)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.mark.slow
def test_digit_embeddings_are_linearly_separable(tmp_path: Path, settings: Settings, digits_dir: Path) -> None:
    """The acceptance check: a linear model on the default CNN's embeddings reads holdout digits."""
    import time

    from sklearn.linear_model import LogisticRegression

    from training.bench.toy_models import register_champion
    from training.model.models import DEFAULT_MODEL

    assert DEFAULT_MODEL == "cnn"
    train = sorted((digits_dir / "train").rglob("*.png"))
    started = time.perf_counter()
    model = _trained_digits_cnn(train, epochs=6)
    trained_s = time.perf_counter() - started
    version = register_champion(settings, model, class_names=[str(d) for d in range(10)], image_size=32)

    result = lakesight("featurize", str(digits_dir), "--out", "digit_embeddings", state=settings.state_dir)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["errors"], summary["model_version"]) == (1797, 0, version)
    assert summary["dims"] == 128  # the 128-unit dense layer before the softmax

    rows = Lake(settings).read("digit_embeddings", columns=["path", "embedding"]).to_pylist()
    split = {"train": ([], []), "holdout": ([], [])}
    for row in rows:
        path = Path(row["path"].removeprefix("file:"))
        vectors, labels = split[path.parent.parent.name]
        vectors.append(row["embedding"])
        labels.append(int(path.parent.name))
    (x_train, y_train), (x_holdout, y_holdout) = split["train"], split["holdout"]
    assert len(x_train) == len(train) and len(x_holdout) == 1797 - len(train)
    classifier = LogisticRegression(max_iter=2000).fit(np.array(x_train), y_train)
    accuracy = classifier.score(np.array(x_holdout), y_holdout)
    assert accuracy >= 0.95, f"holdout accuracy {accuracy:.3f} on the embeddings (trained {trained_s:.0f} s)"
