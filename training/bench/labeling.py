"""``lakesight bench labeling``: how many labels each selection strategy needs after drift.

Two scenarios on the synthetic shapes (:mod:`infra.local.sample_data`):

* ``drift``: v0 is trained on distribution A (black background, upright shapes, balanced
  classes) from a small labeled set; the pool is a stream from a drifted distribution B (smooth
  texture background, pixel noise, rotation up to 45°, skewed class weights) on which v0 is near
  chance. Files are 96×96 (copies are made at that size, like a stream's files); the model reads
  them at 24×24.
* ``near_duplicates``: the same, but 30% of the pool are near-duplicates of other pool images
  (re-encoded PNG→JPEG→PNG or re-saved, shifted by up to two pixels, light noise).

Each round every strategy picks ``labels`` pool images with :func:`infra.core.labeling.strategies.select`
(the stream's selection) from the current model's probabilities and embeddings, under the same
class cap; their labels come from the generator's truth; the model is retrained from the seed's
initial weights for a fixed number of epochs on A's labeled set plus every B label so far, and
scored on a fixed B holdout. What is shared is computed once: the data, v0 per seed, and any
retraining whose labeled set another strategy already trained on (``threshold`` and
``least_confidence`` rank alike, so they share every round).
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from infra.core.labeling import phases, pixels
from infra.core.labeling.strategies import MARGIN_DIVERSITY, RANDOM, STRATEGIES, Candidates, Known, select
from infra.local.sample_data import ShapeKnobs, shape_images
from infra.settings import Settings
from training.data.preprocess import decode_images

Progress = Callable[[str], None]
DRIFT = "drift"
NEAR_DUPLICATES = "near_duplicates"
SCENARIOS = (DRIFT, NEAR_DUPLICATES)
CLASSES = ("circle", "square", "triangle", "cross")
# Distribution A (v0's) and the drifted B of the stream. Colours are random in both.
KNOBS_A: dict[str, Any] = {"background": "black", "rotation": 0.0, "noise": 0.0, "weights": None}
KNOBS_B: dict[str, Any] = {"background": "texture", "rotation": 45.0, "noise": 8.0, "weights": (0.4, 0.3, 0.2, 0.1)}
HOLDOUT_SEED = 9_999  # one B holdout for every seed and strategy
TARGET_LABEL_RATIO = 0.5
TARGET_NEAR_DUPLICATES = 0
TARGET_SECONDS = 900


@dataclass(frozen=True)
class BenchConfig:
    rounds: int = 5
    labels: int = 100  # per round
    seeds: int = 3
    pool: int = 1500
    holdout: int = 500
    a_labeled: int = 120  # v0's labeled set from distribution A
    image_size: int = 24  # the model's input
    file_size: int = 96  # the files' (near-duplicates are made at this size, as of a stream's files)
    epochs: int = 8
    batch_size: int = 16
    learning_rate: float = 2e-3  # cosine-decayed per epoch to 0
    dense_units: int = 128  # the embedding's width (the cnn's default)
    duplicate_share: float = 0.3
    min_distance: float = Settings.model_fields["labeling_min_distance"].default
    duplicate_fraction: float = Settings.model_fields["labeling_duplicate_fraction"].default
    warm_floor: float = Settings.model_fields["labeling_warm_floor"].default
    max_class_share: float = Settings.model_fields["labeling_max_class_share"].default
    scenarios: tuple[str, ...] = SCENARIOS
    strategies: tuple[str, ...] = STRATEGIES

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """A tiny version for tests: seconds, not minutes; its accuracies mean little."""
        small = cls(rounds=2, labels=20, seeds=1, pool=160, holdout=80, a_labeled=80)
        return replace(small, **overrides)

    def class_limits(self) -> dict[str, int]:
        """The cap per predicted class and round, the same for every strategy."""
        return {name: math.ceil(self.max_class_share * self.labels) for name in CLASSES}


@dataclass
class Pool:
    """Images with their truth: a B pool (candidates) or a labeled set."""

    keys: list[str]
    contents: list[bytes]
    labels: np.ndarray  # class ids
    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 3), np.float32))
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # each one's source: its position
    hashes: list[str] = field(default_factory=list)
    thumbnails: list[bytes | None] = field(default_factory=list)  # the stream's pixel near-duplicate key

    def __len__(self) -> int:
        return len(self.keys)

    def decoded(self, image_size: int) -> Pool:
        self.images = decode_images(self.contents, image_size)[0]
        self.hashes = [hashlib.sha256(data).hexdigest() for data in self.contents]
        self.thumbnails = [pixels.thumbnail(data) for data in self.contents]
        if not len(self.groups):
            self.groups = np.arange(len(self))
        return self


@dataclass(frozen=True)
class Outcome:
    """A trained model's figures: holdout accuracy, and its outputs on the scenario's pool."""

    accuracy: float
    probabilities: np.ndarray
    embeddings: np.ndarray


def _shapes(count: int, seed: int, prefix: str, knobs: dict[str, Any], config: BenchConfig) -> Pool:
    spec = ShapeKnobs(count=count, size=config.file_size, seed=seed, prefix=prefix, holdout_fraction=0.0, **knobs)
    keys, contents, labels = [], [], []
    for name, data in shape_images(spec):
        _, kind, base = name.split("/")
        keys.append(base)
        contents.append(data)
        labels.append(CLASSES.index(kind))
    return Pool(keys, contents, np.asarray(labels, np.int64)).decoded(config.image_size)


def near_duplicate(content: bytes, rng: np.random.Generator) -> bytes:
    """Another file of the same picture: shifted up to 2 px, maybe light noise, JPEG round trip or re-saved."""
    with Image.open(io.BytesIO(content)) as image:
        pixels: np.ndarray = np.asarray(image.convert("RGB"), dtype=np.float32)
    dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
    padded = np.pad(pixels, ((2, 2), (2, 2), (0, 0)), mode="edge")
    height, width = pixels.shape[:2]
    pixels = padded[2 - dy : 2 - dy + height, 2 - dx : 2 - dx + width]
    if rng.random() < 0.5:
        pixels = pixels + rng.normal(0.0, 3.0, pixels.shape)
    picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    if rng.random() < 0.5:
        jpeg = io.BytesIO()
        picture.save(jpeg, format="JPEG", quality=int(rng.integers(85, 96)))
        with Image.open(io.BytesIO(jpeg.getvalue())) as decoded:
            picture = decoded.convert("RGB")
    out = io.BytesIO()
    picture.save(out, format="PNG", compress_level=1)  # a re-save: other bytes even for equal pixels
    return out.getvalue()


def with_near_duplicates(pool: Pool, share: float, seed: int, image_size: int) -> Pool:
    """The first ``1 - share`` of ``pool`` plus near-duplicates of them, as many as the rest."""
    originals = len(pool) - round(len(pool) * share)
    copies = len(pool) - originals
    rng = np.random.default_rng(seed)
    sources = rng.choice(originals, size=copies, replace=copies > originals)
    keys = pool.keys[:originals] + [f"{pool.keys[s]}.copy{n}" for n, s in enumerate(sources)]
    contents = pool.contents[:originals] + [near_duplicate(pool.contents[s], rng) for s in sources]
    labels = np.concatenate([pool.labels[:originals], pool.labels[sources]])
    groups = np.concatenate([np.arange(originals), sources])
    # Shuffled, so copies do not all arrive last; groups become the source's position after the shuffle.
    order = rng.permutation(len(keys))
    position = np.argsort(order)
    sources_at = position[groups[order]]
    mixed = Pool([keys[i] for i in order], [contents[i] for i in order], labels[order], groups=sources_at)
    return mixed.decoded(image_size)


class Learner:
    """One network retrained from each seed's initial weights (one graph: no retracing per run)."""

    def __init__(self, config: BenchConfig) -> None:
        import keras
        import tensorflow as tf

        from training.packaging import split_at_embedding

        self.config = config
        self.network = self._fresh(0)
        self.optimizer = keras.optimizers.Adam(config.learning_rate)
        self.optimizer.build(self.network.trainable_variables)
        self._optimizer_start = [np.array(v) for v in self.optimizer.variables]
        self._starts: dict[int, list[np.ndarray]] = {}
        features, _ = split_at_embedding(self.network)
        if features is None:
            raise ValueError("the benchmark's network has no embedding layer")
        spec = tf.TensorSpec([None, config.image_size, config.image_size, 3], tf.float32)
        loss_fn = keras.losses.SparseCategoricalCrossentropy()
        weights = self.network.trainable_variables

        def step(x: Any, y: Any) -> None:
            with tf.GradientTape() as tape:
                loss = loss_fn(y, self.network(x, training=True))
            self.optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))

        # What ImageClassifier serves: the input of the probabilities layer less the mean of the
        # model's reference images (its training images here), L2-normalised.
        self.center = tf.Variable(tf.zeros([config.dense_units]), trainable=False)

        def forward(x: Any) -> Any:
            vectors = features(x, training=False) - self.center
            return self.network(x, training=False), tf.math.l2_normalize(vectors, axis=1)

        # One graph each for every run (Keras' fit set itself up again per call: most of a small run).
        self._step = tf.function(step, input_signature=[spec, tf.TensorSpec([None], tf.int64)])
        self._forward = tf.function(forward, input_signature=[spec])
        self._features = tf.function(lambda x: features(x, training=False), input_signature=[spec])
        self.trainings = 0

    def _fresh(self, seed: int) -> Any:
        import keras

        from training.model.models import build_model

        keras.utils.set_random_seed(seed)
        return build_model(
            "cnn",
            image_size=self.config.image_size,
            num_classes=len(CLASSES),
            dense_units=self.config.dense_units,
        )

    def _restart(self, seed: int) -> None:
        if seed not in self._starts:
            self._starts[seed] = [np.array(v) for v in self._fresh(seed).variables]
        for variable, value in zip(self.network.variables, self._starts[seed], strict=True):
            variable.assign(value)
        for variable, value in zip(self.optimizer.variables, self._optimizer_start, strict=True):
            variable.assign(value)

    def train(self, seed: int, images: np.ndarray, labels: np.ndarray) -> None:
        """Train from ``seed``'s initial state: fixed epochs, cosine learning rate, seeded shuffles."""
        self._restart(seed)
        config = self.config
        rng = np.random.default_rng(seed)
        for epoch in range(config.epochs):
            self.optimizer.learning_rate.assign(
                config.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
            )
            order = rng.permutation(len(labels))
            for start in range(0, len(order), config.batch_size):
                batch = order[start : start + config.batch_size]
                self._step(images[batch], labels[batch])
        raw = [np.asarray(self._features(images[i : i + 256])) for i in range(0, len(images), 256)]
        self.center.assign(np.concatenate(raw).mean(axis=0))
        self.trainings += 1

    def state(self) -> list[Any]:
        """Everything a trained model is: its variables and its embedding centre."""
        return [*self.network.variables, self.center]

    def accuracy(self, holdout: Pool) -> float:
        probs = self.outputs(holdout.images)[0]
        return float(np.mean(np.argmax(probs, axis=1) == holdout.labels))

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and L2-normalised embeddings of ``images``."""
        probs, vectors = [], []
        for start in range(0, len(images), 256):
            p, v = self._forward(images[start : start + 256])
            probs.append(np.asarray(p, np.float32))
            vectors.append(np.asarray(v, np.float32))
        return np.concatenate(probs), np.concatenate(vectors)


@dataclass
class SeedData:
    labeled_a: Pool
    pools: dict[str, Pool]


def seed_data(config: BenchConfig, seed: int) -> SeedData:
    """A's labeled set and each scenario's B pool for ``seed`` (names carry the seed: random differs)."""
    labeled_a = _shapes(config.a_labeled, 1_000 + seed, "a", KNOBS_A, config)
    drift = _shapes(config.pool, 2_000 + seed, "b", KNOBS_B, config)
    pools = {DRIFT: drift}
    if NEAR_DUPLICATES in config.scenarios:
        pools[NEAR_DUPLICATES] = with_near_duplicates(drift, config.duplicate_share, 3_000 + seed, config.image_size)
    return SeedData(labeled_a, pools)


class Bench:
    """The experiment: data, learner and the caches that strategies share."""

    def __init__(self, config: BenchConfig, progress: Progress) -> None:
        self.config = config
        self.progress = progress
        self.learner = Learner(config)
        self.holdout = _shapes(config.holdout, HOLDOUT_SEED, "holdout", KNOBS_B, config)
        self.holdout_a = _shapes(config.holdout, HOLDOUT_SEED, "holdout-a", KNOBS_A, config)
        self.v0_on_a: dict[int, float] = {}
        self.data: dict[int, SeedData] = {}
        self._outcomes: dict[tuple[int, str, tuple[int, ...]], Outcome] = {}
        self._v0: dict[int, list[np.ndarray]] = {}
        self.shared = 0

    def seed(self, seed: int) -> SeedData:
        if seed not in self.data:
            self.data[seed] = seed_data(self.config, seed)
        return self.data[seed]

    def outcome(self, seed: int, scenario: str, labeled: Sequence[int], *, last: bool = False) -> Outcome:
        """The model trained on A plus ``labeled`` (pool indices), computed once per labeled set.

        ``last``: the final round's, which chooses nothing: no outputs on the pool.
        """
        key = (seed, scenario, tuple(sorted(labeled)))
        if key in self._outcomes:
            self.shared += 1
            return self._outcomes[key]
        data = self.seed(seed)
        pool = data.pools[scenario]
        if key[2]:
            chosen = np.asarray(key[2])
            images = np.concatenate([data.labeled_a.images, pool.images[chosen]])
            labels = np.concatenate([data.labeled_a.labels, pool.labels[chosen]])
            self.learner.train(seed, images, labels)
        else:
            self._load_v0(seed, data)
        accuracy = self.learner.accuracy(self.holdout)
        empty = np.zeros((0, 0), np.float32)
        result = Outcome(accuracy, empty, empty) if last else Outcome(accuracy, *self.learner.outputs(pool.images))
        self._outcomes[key] = result
        return result

    def _load_v0(self, seed: int, data: SeedData) -> None:
        """v0 (A only) is the same for every scenario and strategy: trained once per seed."""
        variables = self.learner.state()
        if seed not in self._v0:
            self.learner.train(seed, data.labeled_a.images, data.labeled_a.labels)
            self._v0[seed] = [np.array(v) for v in variables]
            self.v0_on_a[seed] = self.learner.accuracy(self.holdout_a)
        for variable, value in zip(variables, self._v0[seed], strict=True):
            variable.assign(value)


def choose(config: BenchConfig, strategy: str, pool: Pool, outcome: Outcome, labeled: Sequence[int]) -> Picked:
    """This round's picks (pool indices): the stream's :func:`select` over the unlabeled pool, class-capped.

    A round the cap leaves short (the model predicts one class for most of the pool) is topped up
    by a second :func:`select` over the rest without the cap, its first picks counted as known: the
    stream would spend that budget in later windows; here every strategy spends ``labels`` a round.
    """
    taken = set(labeled)
    remaining = [i for i in range(len(pool)) if i not in taken]
    first = _select(config, strategy, pool, outcome, remaining, labeled, config.class_limits())
    picks = [remaining[i] for i in first.indices]
    skips = _false_skips(pool, labeled, remaining, [remaining[i] for i in first.near_duplicates])
    short = config.labels - len(picks)
    if short <= 0 or not first.class_capped:
        return Picked(picks, capped=len(first.class_capped), topped_up=0, **skips)
    chosen = set(picks)
    rest = [i for i in remaining if i not in chosen]
    extra = _select(replace(config, labels=short), strategy, pool, outcome, rest, [*labeled, *picks], None)
    more = [rest[i] for i in extra.indices]
    return Picked(picks + more, capped=len(first.class_capped), topped_up=len(more), **skips)


def _false_skips(
    pool: Pool, labeled: Sequence[int], remaining: Sequence[int], skipped: Sequence[int]
) -> dict[str, int]:
    """Of the round's distinct candidates (no other image of their picture labeled or waiting), how
    many were skipped as near-duplicates."""
    count = np.bincount(pool.groups[[*labeled, *remaining]], minlength=len(pool))
    distinct = sum(1 for i in remaining if count[pool.groups[i]] == 1)
    return {"distinct": distinct, "false_skips": sum(1 for i in skipped if count[pool.groups[i]] == 1)}


@dataclass(frozen=True)
class Picked:
    indices: list[int]
    capped: int  # candidates the class cap passed over
    topped_up: int  # picks of the uncapped second pass
    distinct: int = 0  # candidates with no other image of their picture labeled or waiting
    false_skips: int = 0  # of those, skipped as near-duplicates


def _select(
    config: BenchConfig,
    strategy: str,
    pool: Pool,
    outcome: Outcome,
    remaining: Sequence[int],
    labeled: Sequence[int],
    class_limits: dict[str, int] | None,
) -> Any:
    probs = outcome.probabilities[remaining]
    predicted = [CLASSES[int(c)] for c in np.argmax(probs, axis=1)]
    candidates = Candidates(
        keys=[pool.keys[i] for i in remaining],
        probabilities=probs,
        predicted=predicted,
        embeddings=outcome.embeddings[remaining],
        content_hashes=[pool.hashes[i] for i in remaining],
        thumbnails=[pool.thumbnails[i] for i in remaining],
    )
    # What humans already have: the B images labeled in earlier rounds, under the current model.
    known = Known(
        embeddings=outcome.embeddings[list(labeled)] if labeled else np.zeros((0, 0), np.float32),
        content_hashes=frozenset(pool.hashes[i] for i in labeled),
        thumbnails=tuple(t for t in (pool.thumbnails[i] for i in labeled) if t),
    )
    # The stream's cold/warm switch for the default. Its live accuracy (from exploration labels,
    # none before the first labels come back) stands in as the holdout accuracy from round 1 on.
    phase = None
    if strategy == MARGIN_DIVERSITY:
        live = outcome.accuracy if labeled else None
        labels = phases.MIN_LIVE_LABELS if labeled else 0
        phase = phases.phase(live, labels, len(CLASSES), predicted, config.warm_floor)[0]
    return select(
        candidates,
        config.labels,
        strategy=strategy,
        known=known,
        min_distance=config.min_distance,
        class_limits=None if phase == phases.COLD else class_limits,
        duplicate_fraction=config.duplicate_fraction,
        phase=phase,
    )


def duplicates_sent(groups: np.ndarray, earlier: Sequence[int], picks: Sequence[int]) -> int:
    """Picks whose source picture (itself or another copy of it) was picked earlier or before in this round."""
    seen = {int(groups[i]) for i in earlier}
    count = 0
    for index in picks:
        source = int(groups[index])
        count += source in seen
        seen.add(source)
    return count


@dataclass
class Curve:
    """One strategy's rounds under one seed: labels spent, accuracy, near-duplicates sent."""

    labels: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    capped: list[int] = field(default_factory=list)
    topped_up: list[int] = field(default_factory=list)
    distances: list[dict[str, np.ndarray]] = field(default_factory=list)
    distinct: list[int] = field(default_factory=list)
    false_skips: list[int] = field(default_factory=list)


def run_curve(bench: Bench, seed: int, scenario: str, strategy: str) -> Curve:
    config = bench.config
    pool = bench.seed(seed).pools[scenario]
    labeled: list[int] = []
    curve = Curve()
    for round_ in range(config.rounds + 1):
        last = round_ == config.rounds
        outcome = bench.outcome(seed, scenario, labeled, last=last)
        curve.labels.append(len(labeled))
        curve.accuracy.append(outcome.accuracy)
        if strategy == MARGIN_DIVERSITY and scenario == NEAR_DUPLICATES and not last:
            curve.distances.append(embedding_distances(pool, outcome.embeddings))
        bench.progress(
            f"seed {seed} {scenario} {strategy} round {round_}: {len(labeled)} labels, "
            f"accuracy {outcome.accuracy:.3f}, near-duplicates sent {sum(curve.duplicates)}"
        )
        if last:
            break
        picked = choose(config, strategy, pool, outcome, labeled)
        curve.duplicates.append(duplicates_sent(pool.groups, labeled, picked.indices))
        curve.capped.append(picked.capped)
        curve.topped_up.append(picked.topped_up)
        curve.distinct.append(picked.distinct)
        curve.false_skips.append(picked.false_skips)
        labeled.extend(picked.indices)
    return curve


def embedding_distances(pool: Pool, embeddings: np.ndarray) -> dict[str, np.ndarray]:
    """Cosine distances of each copy to its source, and of each source picture to its nearest other one."""
    originals = np.flatnonzero(pool.groups == np.arange(len(pool)))
    copies = np.flatnonzero(pool.groups != np.arange(len(pool)))
    pairs = 1.0 - np.einsum("ij,ij->i", embeddings[copies], embeddings[pool.groups[copies]])
    vectors = embeddings[originals]
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = 1.0 - similarity.max(axis=1)
    return {"copies": pairs, "distinct": nearest}


def run_label_bench(config: BenchConfig | None = None, *, progress: Progress | None = None) -> dict[str, Any]:
    """Run every scenario × strategy × seed; the figures as a JSON-ready dict."""
    config = config or BenchConfig()
    log = progress or (lambda _message: None)
    started = time.perf_counter()
    bench = Bench(config, log)
    curves: dict[str, dict[str, list[Curve]]] = {s: {name: [] for name in config.strategies} for s in config.scenarios}
    for seed in range(config.seeds):
        for scenario in config.scenarios:
            for strategy in config.strategies:
                curves[scenario][strategy].append(run_curve(bench, seed, scenario, strategy))
    seconds = time.perf_counter() - started
    figures = report(config, curves, seconds=seconds, trainings=bench.learner.trainings, shared=bench.shared)
    figures["v0_accuracy_on_A_per_seed"] = [round(bench.v0_on_a[s], 4) for s in sorted(bench.v0_on_a)]
    return figures


def report(
    config: BenchConfig, curves: dict[str, dict[str, list[Curve]]], *, seconds: float, trainings: int, shared: int
) -> dict[str, Any]:
    scenarios = {name: scenario_report(config, by_strategy) for name, by_strategy in curves.items()}
    headline = headline_figures(scenarios, seconds)
    return {
        "benchmark": "labeling",
        **headline,
        "seconds": round(seconds, 1),
        "trainings": trainings,
        "shared_results": shared,
        "config": {**asdict(config), "class_limits": config.class_limits()},
        "distributions": {"A": KNOBS_A, "B": KNOBS_B, "holdout": "B, one fixed set for every seed and strategy"},
        "label_ratio_method": (
            "labels margin_diversity needs to reach random's final mean accuracy: the first round whose mean "
            "accuracy reaches it, linearly interpolated from the round before; divided by random's total labels"
        ),
        "scenarios": scenarios,
    }


def scenario_report(config: BenchConfig, by_strategy: dict[str, list[Curve]]) -> dict[str, Any]:
    strategies = {name: strategy_report(runs) for name, runs in by_strategy.items()}
    out: dict[str, Any] = {"strategies": strategies}
    if RANDOM in strategies:
        target = strategies[RANDOM]["final_accuracy"]
        total = strategies[RANDOM]["rounds"][-1]["labels"]
        out["random_final_accuracy"] = target
        for figures in strategies.values():
            needed = labels_to_reach(figures["rounds"], target)
            figures["labels_to_reach_random_final"] = None if needed is None else round(needed, 1)
            figures["label_ratio_vs_random"] = None if needed is None or not total else round(needed / total, 3)
    distances = [d for runs in by_strategy.get(MARGIN_DIVERSITY, []) for d in runs.distances]
    if distances:
        out["embedding_distances"] = distance_report(distances, config.min_distance)
    return out


def strategy_report(runs: list[Curve]) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    for index, labels in enumerate(runs[0].labels):
        per_seed = [run.accuracy[index] for run in runs]
        sent: list[int] = [run.duplicates[index - 1] if index else 0 for run in runs]
        rounds.append(
            {
                "round": index,
                "labels": labels,
                "labels_per_seed": [run.labels[index] for run in runs],
                "accuracy": round(float(np.mean(per_seed)), 4),
                "accuracy_per_seed": [round(a, 4) for a in per_seed],
                "near_duplicates_sent": int(sum(sent)),
                "near_duplicates_sent_per_seed": sent,
                "class_capped_per_seed": [run.capped[index - 1] if index else 0 for run in runs],
                "topped_up_per_seed": [run.topped_up[index - 1] if index else 0 for run in runs],
            }
        )
    total = sum(row["near_duplicates_sent"] for row in rounds)
    distinct = sum(sum(run.distinct) for run in runs)
    false_skips = sum(sum(run.false_skips) for run in runs)
    return {
        "final_accuracy": rounds[-1]["accuracy"],
        "near_duplicates_sent": total,
        "near_duplicate_false_skip_rate": round(false_skips / distinct, 5) if distinct else None,
        "rounds": rounds,
    }


def labels_to_reach(rounds: list[dict[str, Any]], target: float) -> float | None:
    """Labels at which the mean accuracy first reaches ``target`` (linear between rounds), or None."""
    for index, row in enumerate(rounds):
        if row["accuracy"] < target:
            continue
        if index == 0:
            return float(row["labels"])
        before = rounds[index - 1]
        gain = row["accuracy"] - before["accuracy"]
        share = (target - before["accuracy"]) / gain if gain > 0 else 1.0
        return before["labels"] + share * (row["labels"] - before["labels"])
    return None


def distance_report(distances: list[dict[str, np.ndarray]], min_distance: float) -> dict[str, Any]:
    """Percentiles of copy-to-source and distinct nearest-neighbour distances, over every round's model."""
    copies = np.concatenate([d["copies"] for d in distances])
    distinct = np.concatenate([d["distinct"] for d in distances])

    def percentiles(values: np.ndarray, points: Sequence[int]) -> dict[str, float]:
        return {f"p{p}": round(float(np.percentile(values, p)), 5) for p in points}

    return {
        "models": len(distances),
        "copy_to_source": {**percentiles(copies, (50, 90, 95, 99)), "max": round(float(copies.max()), 5)},
        "distinct_nearest": {**percentiles(distinct, (1, 5, 10, 50)), "min": round(float(distinct.min()), 5)},
        "copies_within_min_distance": round(float(np.mean(copies < min_distance)), 4),
        "distinct_within_min_distance": round(float(np.mean(distinct < min_distance)), 4),
    }


def headline_figures(scenarios: dict[str, Any], seconds: float) -> dict[str, Any]:
    ratio, reason = None, None
    drift = scenarios.get(DRIFT, {}).get("strategies", {})
    if MARGIN_DIVERSITY in drift and RANDOM in drift:
        ratio = drift[MARGIN_DIVERSITY]["label_ratio_vs_random"]
        if ratio is None:
            best = max(row["accuracy"] for row in drift[MARGIN_DIVERSITY]["rounds"])
            final = scenarios[DRIFT]["random_final_accuracy"]
            reason = f"margin_diversity's best mean accuracy {best:.4f} stays below random's final {final:.4f}"
    else:
        reason = "the drift scenario did not run margin_diversity and random"
    near = scenarios.get(NEAR_DUPLICATES, {}).get("strategies", {}).get(MARGIN_DIVERSITY)
    sent = None if near is None else near["near_duplicates_sent"]
    false_skip_rate = None if near is None else near["near_duplicate_false_skip_rate"]
    meets = (
        ratio is not None
        and ratio <= TARGET_LABEL_RATIO
        and sent is not None
        and sent <= TARGET_NEAR_DUPLICATES
        and seconds <= TARGET_SECONDS
    )
    return {
        "label_ratio_vs_random": ratio,
        "label_ratio_reason": reason,
        "near_duplicates_sent": sent,
        "near_duplicate_false_skip_rate": false_skip_rate,
        "targets": {
            "label_ratio_vs_random": f"<= {TARGET_LABEL_RATIO}",
            "near_duplicates_sent": TARGET_NEAR_DUPLICATES,
            "seconds": f"<= {TARGET_SECONDS}",
        },
        "meets_targets": bool(meets),
    }
