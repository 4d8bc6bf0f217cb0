import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infra.local.sample_data import ShapeKnobs, digits_images, holdout_side, shape_images, write_images


def test_digits_are_rgb_pngs_with_a_stable_split() -> None:
    images = list(digits_images(size=32))
    assert len(images) == 1797
    name, data = images[0]
    split, label, file = name.split("/")
    assert split in ("train", "holdout") and label == "0" and file == "digit-0000.png"
    with Image.open(io.BytesIO(data)) as image:
        assert (image.mode, image.size) == ("RGB", (32, 32))
    holdout = sum(1 for n, _ in images if n.startswith("holdout/"))
    assert 0.15 < holdout / 1797 < 0.25
    assert [n for n, _ in images] == [n for n, _ in digits_images(size=32)]
    assert holdout_side("digit-0000.png", 0.2) == holdout_side("digit-0000.png", 0.2)


def test_shapes_follow_their_knobs() -> None:
    knobs = ShapeKnobs(count=200, size=48, classes=("circle", "square"), weights=(0.9, 0.1), background="white", seed=3)
    images = list(shape_images(knobs))
    labels = [n.split("/")[1] for n, _ in images]
    assert labels.count("circle") > 150
    with Image.open(io.BytesIO(images[0][1])) as image:
        pixels = np.asarray(image)
        assert image.size == (48, 48) and pixels[0, 0].tolist() == [255, 255, 255]
    assert images == list(shape_images(knobs))  # deterministic for a seed


@pytest.mark.parametrize(
    "knobs",
    [ShapeKnobs(classes=("hexagon",)), ShapeKnobs(weights=(1.0,)), ShapeKnobs(background="plaid"), ShapeKnobs(size=2)],
)
def test_bad_knobs_are_refused(knobs: ShapeKnobs) -> None:
    with pytest.raises(ValueError):
        list(shape_images(knobs))


def test_write_images_to_folder_leaves_no_temp_files(tmp_path: Path) -> None:
    counts = write_images(shape_images(ShapeKnobs(count=20, size=16)), out_dir=tmp_path)
    assert sum(counts.values()) == 20
    files = list(tmp_path.rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")]
    assert len([f for f in files if f.suffix == ".png"]) == 20
