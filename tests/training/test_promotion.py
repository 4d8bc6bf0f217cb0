import mlflow
import numpy as np
import pandas as pd
import pytest

from infra import registry
from infra.core import promotion
from infra.settings import Settings
from tests.helpers.images import solid_png, truncated_png
from training.evaluation import promote
from training.packaging import log_classifier

CLASSES = ["dark", "light"]
IMAGES = [solid_png(v) for v in (10, 30, 50, 200, 220, 240)]
TRUTH = ["dark", "dark", "dark", "light", "light", "light"]


def test_first_model_becomes_champion() -> None:
    decision = promotion.promotion_decision(0.2, None, margin=0.05, min_pairs=20)
    assert (decision.promote, decision.alias) == (True, registry.CHAMPION)


def test_better_by_more_than_the_margin_is_promoted_or_waits_for_live_labels() -> None:
    now = promotion.promotion_decision(0.96, 0.90, margin=0.05, min_pairs=0)
    assert (now.promote, now.alias, now.decision) == (True, registry.CHAMPION, registry.CHAMPION)
    waits = promotion.promotion_decision(0.96, 0.90, margin=0.05, min_pairs=20)
    assert (waits.promote, waits.alias, waits.decision) == (False, registry.CHALLENGER, registry.CHALLENGER)
    assert waits.reason.endswith("challenger until live labels give 20 discordant pairs")


@pytest.mark.parametrize(("new", "old", "margin"), [(0.90, 0.90, 0.0), (0.94, 0.90, 0.05), (0.80, 0.90, 0.0)])
def test_not_better_enough_is_rejected_without_an_alias(new: float, old: float, margin: float) -> None:
    for min_pairs in (0, 20):
        decision = promotion.promotion_decision(new, old, margin=margin, min_pairs=min_pairs)
        assert (decision.promote, decision.alias, decision.decision) == (False, None, registry.REJECTED)
        assert f"{old:.4f}" in decision.reason and "does not beat" in decision.reason


def _register(settings: Settings, *, perfect: bool) -> str:
    """A tiny model: mean brightness -> dark/light (perfect) or always 'dark'."""
    import keras

    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    if perfect:
        kernel = np.stack([np.full(3, -10.0), np.full(3, 10.0)], axis=1)
        model.layers[-1].set_weights([kernel.astype("float32"), np.array([15.0, -15.0], "float32")])
    else:
        model.layers[-1].set_weights([np.zeros((3, 2), "float32"), np.array([1.0, 0.0], "float32")])
    with mlflow.start_run(experiment_id=registry.ensure_experiment(settings, settings.model_name)):
        info = log_classifier(
            model, class_names=CLASSES, image_size=8, input_example=IMAGES[0], registered_model_name=settings.model_name
        )
    return str(info.registered_model_version)


def test_registry_round_first_dry_run_better_and_worse(settings: Settings) -> None:
    settings = settings.model_copy(update={"promotion_margin": 0.1, "promotion_min_pairs": 0})
    weak = _register(settings, perfect=False)
    first = promote(settings, weak, IMAGES, TRUTH)
    assert (first.promoted, first.alias, first.accuracy, first.champion_accuracy) == (True, "champion", 0.5, None)

    strong = _register(settings, perfect=True)
    dry = promote(settings, strong, IMAGES, TRUTH, dry_run=True)
    assert (dry.promoted, dry.alias, dry.accuracy, dry.champion_accuracy) == (False, None, 1.0, 0.5)
    assert str(registry.champion_version(settings).version) == weak  # a dry run moves nothing

    real = promote(settings, strong, IMAGES, TRUTH)
    assert (real.promoted, real.alias, real.champion_version) == (True, "champion", weak)
    # The weak version offered again is now worse than the champion: rejected, no alias (never shadow-scored).
    again_weak = weak
    worse = promote(settings, again_weak, IMAGES, TRUTH)
    assert (worse.promoted, worse.alias, worse.accuracy, worse.champion_accuracy) == (False, None, 0.5, 1.0)
    assert str(registry.champion_version(settings).version) == strong
    assert registry.version_by_alias(settings, registry.CHALLENGER) is None

    listed = {row["version"]: row for row in registry.list_versions(settings)}
    assert listed[strong]["aliases"] == "champion" and listed[again_weak]["aliases"] == ""
    assert float(listed[strong]["accuracy"]) == 1.0 and float(listed[again_weak]["champion_accuracy"]) == 1.0
    assert listed[again_weak]["decision"] == "rejected" and listed[strong]["decision"] == "champion"

    # Round trip on raw bytes: the pyfunc and the stream's fast path agree, bad bytes included.
    contents = [*IMAGES, truncated_png()]
    classifier, version = registry.load_classifier(settings)
    fast = classifier.classify(contents)
    loaded = mlflow.pyfunc.load_model(registry.model_uri(settings, version))
    pyfunc = loaded.predict(pd.DataFrame({"content": contents}))
    assert version == strong
    assert list(fast["label"][:6]) == TRUTH and fast["error"][6] is not None
    pd.testing.assert_frame_equal(pyfunc.reset_index(drop=True), fast.reset_index(drop=True))

    # With live evidence asked for, a split winner waits as challenger: the champion stays.
    waiting = settings.model_copy(update={"promotion_min_pairs": 20})
    registry.set_alias(settings, registry.CHAMPION, weak)
    winner = _register(waiting, perfect=True)
    staged = promote(waiting, winner, IMAGES, TRUTH)
    assert (staged.promoted, staged.alias, staged.accuracy, staged.champion_version) == (False, "challenger", 1.0, weak)
    assert str(registry.champion_version(settings).version) == weak
    assert str(registry.version_by_alias(settings, registry.CHALLENGER).version) == winner
