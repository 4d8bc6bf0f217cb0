"""The default stack's side of the legacy profile (docs/LEGACY.md), checked without the legacy venv:
the one-line refusal, no Horovod or Petastorm import, the model format both stacks load, the read
pyarrow 14 uses, and the Horovod slot plan."""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from infra.lake import Lake, read_through_sql
from infra.processes import lakesight_argv
from infra.settings import Settings
from infra.tables import IMAGES
from tests.helpers.training import write_rows
from training.legacy.horovod_strategy import slot_plan
from training.model.models import build_model
from training.packaging import (
    LAYER_WEIGHTS,
    ImageClassifier,
    PackagingError,
    load_network,
    save_layer_weights,
)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--strategy", "horovod", "--workers", "2"], "--strategy horovod"),
        (["--feed", "petastorm"], "--feed petastorm"),
    ],
)
def test_a_legacy_name_outside_the_legacy_stack_is_one_line_naming_make_install_legacy(
    tmp_path: Path, args: list[str], named: str
) -> None:
    env = {"LAKESIGHT_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(lakesight_argv("train", *args), capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert named in lines[0] and "make install-legacy" in lines[0]
    assert not (tmp_path / "state" / "lake").exists(), "nothing may start before the refusal"


def test_an_unknown_strategy_or_feed_lists_the_choices(tmp_path: Path) -> None:
    from infra.errors import UsageError
    from training.pipeline import TrainOptions

    with pytest.raises(UsageError, match="choose one of tf, horovod"):
        TrainOptions(strategy="deepspeed").check()
    with pytest.raises(UsageError, match="choose one of arrow, petastorm"):
        TrainOptions(feed="tfrecord").check()


_IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
import infra, streams, training, handlers, serving
names = []
for package in (infra, streams, training, handlers, serving):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if module.name.endswith(("__main__", ".function_app")):  # entry points act when imported
            continue
        importlib.import_module(module.name)
        names.append(module.name)
legacy = sorted(m for m in sys.modules if m.split(".")[0] in ("horovod", "petastorm"))
print(json.dumps({"modules": names, "legacy": legacy}))
"""


def test_the_default_stack_never_imports_horovod_or_petastorm() -> None:
    """Every module of the project, the legacy ones included, imports here without them."""
    done = subprocess.run([sys.executable, "-c", _IMPORT_EVERYTHING], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert "training.legacy.horovod_strategy" in printed["modules"]
    assert "training.legacy.petastorm_feed" in printed["modules"]
    assert printed["legacy"] == []


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _trained_looking_cnn() -> tuple[object, dict]:
    architecture = {"name": "cnn", "image_size": 16, "num_classes": 3, "dropout": 0.3, "dense_units": 16}
    model = build_model(**architecture)
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(0.0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
    return model, architecture


def test_a_network_saved_as_layer_weights_loads_as_the_same_network(tmp_path: Path) -> None:
    """The legacy stack's Keras 2 writes this format; the default stack must rebuild the very network."""
    model, architecture = _trained_looking_cnn()
    name, path, extra = save_layer_weights(model, tmp_path, architecture)
    assert name == LAYER_WEIGHTS and extra["network"]["architecture"] == architecture
    loaded = load_network(path, {"class_names": ["a", "b", "c"], "image_size": 16, **extra})
    probe = np.random.default_rng(1).random((4, 16, 16, 3), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(loaded(probe)), np.asarray(model(probe)), rtol=1e-5, atol=1e-6)

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"class_names": ["a", "b", "c"], "image_size": 16, **extra}))
    classifier = ImageClassifier()
    classifier.load(path, config)
    scored = classifier.classify([_png(1), b"not an image"])
    assert scored["label"][0] in {"a", "b", "c"} and scored["error"][1]
    assert len(scored["embedding"][0]) == 16


def test_layer_weights_that_do_not_fit_the_network_are_refused(tmp_path: Path) -> None:
    model, architecture = _trained_looking_cnn()
    _, path, extra = save_layer_weights(model, tmp_path, architecture)
    arrays = dict(np.load(path))
    config = {"class_names": ["a", "b", "c"], "image_size": 16, **extra}
    for broken, match in (
        ({k: v for k, v in arrays.items() if not k.startswith("conv1/")}, "no weights for conv1/0"),
        ({**arrays, "dense/0": np.zeros((3, 3), np.float32)}, "dense/0 have shape"),
        ({**arrays, "ghost/0": np.zeros(1, np.float32)}, "no layer takes: ghost/0"),
    ):
        np.savez(path, **broken)
        with pytest.raises(PackagingError, match=match):
            load_network(path, config)


@pytest.mark.slow
def test_the_read_without_views_returns_what_delta_rs_reads(tmp_path: Path) -> None:
    """pyarrow 14 (the legacy stack) reads a partitioned version through SQL; same rows, plain types."""
    settings = Settings(state_dir=tmp_path / "state")
    first = write_rows(settings, [(f"file:/a/{i}.png", _png(i), "cat" if i % 2 else None, None) for i in range(6)])
    write_rows(settings, [("file:/a/9.png", _png(9), "dog", "undecodable")])
    lake = Lake(settings)
    columns = ["path", "load_date", "content", "label", "error", "size_bytes", "ingested_at"]
    pinned = lake.table(IMAGES, first)
    through_sql = read_through_sql(pinned, columns).sort_by("path")
    expected = lake.read(IMAGES, version=first, columns=columns).sort_by("path")
    assert through_sql.num_rows == 6
    assert through_sql.schema.field("path").type == pa.string()
    assert through_sql.schema.field("content").type == pa.binary()
    assert through_sql.column("load_date").to_pylist() == [dt.datetime.now(dt.UTC).date()] * 6
    assert through_sql.to_pylist() == expected.to_pylist()
    labeled = read_through_sql(lake.table(IMAGES), ["path", "label"], pc.is_valid(pc.field("label")))
    assert sorted(labeled.column("label").to_pylist()) == ["cat", "cat", "cat", "dog"]


def test_the_slot_plan_follows_the_barrier_tasks_hosts() -> None:
    plan = slot_plan(["a", "b", "a", "c"])
    assert [(s.rank, s.local_rank, s.local_size) for s in plan] == [(0, 0, 2), (1, 0, 1), (2, 1, 2), (3, 0, 1)]
    # Local rank 0 lives on a, b and c; local rank 1 only on a.
    assert [(s.cross_rank, s.cross_size) for s in plan] == [(0, 3), (1, 3), (0, 1), (2, 3)]
    assert plan[2].environment()["HOROVOD_HOSTNAME"] == "a" and plan[2].environment()["HOROVOD_SIZE"] == "4"
