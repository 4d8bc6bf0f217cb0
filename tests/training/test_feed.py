from collections import Counter
from pathlib import Path

import pytest

from infra.images import content_hash
from infra.settings import Settings
from tests.helpers.images import solid_png, truncated_png
from tests.helpers.training import digit_rows, write_rows
from training.data.feed import TEST, TRAIN, VALIDATION, TrainingDataError, load_snapshot, split_of


def test_split_is_a_pure_function_of_the_path_with_the_intended_shares() -> None:
    paths = [f"abfss://images@acct/2026/11/{i:05d}.png" for i in range(4000)]
    first = [split_of(p) for p in paths]
    assert [split_of(p) for p in reversed(paths)] == list(reversed(first))  # order does not matter
    shares = Counter(first)
    assert abs(shares[TEST] / 4000 - 0.15) < 0.03
    assert abs(shares[VALIDATION] / 4000 - 0.15) < 0.03
    assert abs(shares[TRAIN] / 4000 - 0.70) < 0.03


def test_snapshot_pins_a_version_and_rows_keep_their_side(settings: Settings, digits_dir: Path) -> None:
    rows = digit_rows(digits_dir, 120)
    v1 = write_rows(settings, rows[:80])
    v2 = write_rows(settings, rows[80:])
    old = load_snapshot(settings, version=v1)
    new = load_snapshot(settings)
    assert (old.delta_version, old.rows) == (v1, 80)
    assert (new.delta_version, new.rows) == (v2, 120)
    sides = dict(zip(new.paths, new.splits, strict=True))
    assert all(sides[p] == s for p, s in zip(old.paths, old.splits, strict=True))
    assert new.image_size == 32 and new.images is not None and new.images.shape == (120, 32, 32, 3)
    assert new.class_names == sorted({r[2] for r in rows})
    assert old.digest() != new.digest() and old.digest() == load_snapshot(settings, version=v1).digest()


def test_corrupt_and_unlabeled_rows_are_skipped_and_counted(settings: Settings, digits_dir: Path) -> None:
    rows = digit_rows(digits_dir, 30)
    bad = [
        ("file:/x/3/flagged.png", b"junk", "3", "not an image"),
        ("file:/x/3/truncated.png", truncated_png(), "3", None),
        ("file:/x/unlabeled.png", solid_png(9), None, None),
    ]
    write_rows(settings, rows + bad)
    snapshot = load_snapshot(settings)
    assert snapshot.rows == 30
    assert snapshot.skipped == {"error in table": 1, "undecodable": 1}
    assert snapshot.unlabeled == 1
    assert not any("flagged" in p or "truncated" in p for p in snapshot.paths)


def test_no_table_no_labels_or_one_class_fail_before_training(settings: Settings) -> None:
    with pytest.raises(TrainingDataError, match="no images table"):
        load_snapshot(settings)
    write_rows(settings, [(f"file:/u/{i}.png", solid_png(i), None, None) for i in range(5)])
    with pytest.raises(TrainingDataError, match="no usable labeled rows"):
        load_snapshot(settings)
    write_rows(settings, [(f"file:/c/{i}.png", solid_png(i), "cat", None) for i in range(5)])
    with pytest.raises(TrainingDataError, match="single class"):
        load_snapshot(settings)


def test_a_label_given_for_other_bytes_never_trains(settings: Settings, digits_dir: Path) -> None:
    """A human label records the content hash it was given for: a row whose bytes differ is skipped."""
    import pyarrow as pa

    from infra.lake import Lake
    from infra.tables import IMAGES, LABEL_SOURCE_HUMAN

    rows = digit_rows(digits_dir, 30)
    write_rows(settings, rows)
    seen, other = rows[0], rows[1]
    lake = Lake(settings)
    day = lake.read(IMAGES, columns=["load_date"]).column("load_date")[0].as_py()
    labels = pa.table(
        {
            "path": [seen[0], other[0]],
            "load_date": pa.array([day, day], pa.date32()),
            "label": ["7", "7"],
            "label_source": [LABEL_SOURCE_HUMAN] * 2,
            "labeled_content_hash": [content_hash(seen[1]), content_hash(b"the bytes the human saw")],
        }
    )
    update = {c: f"s.{c}" for c in ("label", "label_source", "labeled_content_hash")}
    lake.merge(IMAGES, labels, update=update, insert=False)
    snapshot = load_snapshot(settings, decode=False)
    assert snapshot.skipped == {"label for other bytes": 1}
    assert other[0] not in snapshot.paths and seen[0] in snapshot.paths
