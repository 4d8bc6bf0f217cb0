"""MLflow tracking and model registry, configured from settings: the one contract between training and scoring.

Aliases, not stages (MLflow 3): ``champion`` is the model the stream scores with; ``challenger``
is a newer version that beat it on the test split and waits for live evidence, shadow-scored by the
stream beside the champion (docs/PROMOTION.md). A version that does not beat the champion gets no
alias (its decision tag says ``rejected``). This module owns every model-version tag name, the
listing of versions, the split promotion rule and the writes that apply it and the live decision
(taken by ``infra.core.promotion``), and the :class:`Classifier` protocol that a loaded model
version satisfies.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from infra.errors import LakesightError
from infra.redaction import redact_text
from infra.settings import Settings

if TYPE_CHECKING:
    import pandas as pd


# How many threads TensorFlow may use in this process: set by whoever starts a process that loads
# the model (the scoring executors from ``score_tf_threads``, training from its share of cores),
# read by ``training.run.tf_runtime`` when the model loads.
TF_THREADS_ENV = "LAKESIGHT_TF_THREADS"

CHAMPION = "champion"
CHALLENGER = "challenger"

# Model-version tags, written by training and the RunCompleted check, read by the CLI, the status
# page and the retraining policy.
TAG_DELTA_VERSION = "delta_version"  # the images table version the model was trained on
TAG_ACCURACY = "test_accuracy"
TAG_CHAMPION_ACCURACY = "champion_test_accuracy"
TAG_CHAMPION_VERSION = "champion_version"  # the champion it was compared with
TAG_DECISION = "promotion_decision"
TAG_REASON = "promotion_reason"
TAG_ROLLED_BACK = "rolled_back"  # on the version a rollback took the champion alias from: when, why, to what
# The challenger's live evidence (infra.core.promotion): the discordant pairs, the McNemar
# p-value, and waiting / promoted / refused with its reason.
TAG_LIVE_B = "live_b"  # human-labeled images the champion got right and the challenger wrong
TAG_LIVE_C = "live_c"  # the reverse
TAG_LIVE_P_VALUE = "live_p_value"
TAG_LIVE_DECISION = "live_decision"
TAG_LIVE_REASON = "live_reason"

# TAG_DECISION values besides the alias a version got.
REJECTED = "rejected"  # did not beat the champion on the split: no alias, never shadow-scored
REFUSED = "refused"  # beat it on the split, worse on live labels
SUPERSEDED = "superseded"  # a waiting challenger replaced by a newer split winner, or whose champion moved


class RegistryConfig(Protocol):
    """What the registry reads of the configuration to find and load a model: the settings on the
    driver, a narrow view on an executor (``streams.scoring.config.ScoringConfig``)."""

    @property
    def mlflow_tracking_uri(self) -> str: ...

    @property
    def mlflow_artifact_root(self) -> str: ...

    @property
    def model_name(self) -> str: ...


class Classifier(Protocol):
    """What a registered model version is once loaded: raw image bytes in, predictions out.

    ``classify`` returns one row per input with ``label``, ``confidence``, ``probabilities``,
    ``embedding`` and ``error`` (set, with the others null, for bytes the model cannot decode).
    ``embedding_dims`` is the embedding's length, None for a network without an embedding layer
    (its embeddings are then null). ``decode`` and ``probabilities`` are its two halves, for
    benchmarks of the model alone and for the stream's shadow scoring (the top class only).
    """

    class_names: list[str]
    image_size: int
    embedding_dims: int | None

    def classify(self, contents: Sequence[bytes | None]) -> pd.DataFrame: ...

    def decode(self, contents: Sequence[bytes | None]) -> tuple[np.ndarray, list[str | None]]: ...

    def probabilities(self, images: np.ndarray) -> np.ndarray: ...


_lock = threading.Lock()
_configured: set[tuple[str, str]] = set()


class RegistryError(LakesightError, RuntimeError):
    """MLflow cannot be reached or holds no usable model."""


class RegistryUnreachable(RegistryError):
    """The tracking server did not answer (down, refused, timed out, 5xx after retries)."""


def unreachable(uri: str, exc: BaseException) -> RegistryUnreachable:
    """One line naming the URI and why (the socket's errno when there is one), not MLflow's page of URLs."""
    text = redact_text(" ".join(str(exc).split()))
    errno = re.search(r"\[Errno -?\d+\][^\"')]*", text)
    reason = errno.group(0).strip() if errno else text[:200]
    # A URI may carry a password (https://user:password@host): printed with it masked.
    return RegistryUnreachable(f"MLflow tracking URI {redact_text(uri)} is not reachable ({reason})")


def _is_unreachable(exc: BaseException) -> bool:
    """MLflow's REST client reports a failed request (no answer, or 5xx after its retries) this way."""
    text = str(exc)
    return "API request to " in text and " failed with " in text


def configure_mlflow(settings: RegistryConfig) -> None:
    """Point MLflow at the settings' tracking/registry URI; fail clearly if unreachable."""
    import mlflow

    key = (settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    with _lock:
        if key in _configured and mlflow.get_tracking_uri() == settings.mlflow_tracking_uri:
            return
        uri = settings.mlflow_tracking_uri
        if uri.startswith("sqlite:///"):
            path = uri.removeprefix("sqlite:///")
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if uri.startswith(("http://", "https://")):
            # Fail in seconds, not after MLflow's default minutes of retries.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            mlflow.MlflowClient().search_experiments(max_results=1)
        except Exception as exc:  # any failure here means "cannot reach it"
            raise unreachable(uri, exc) from exc
        _configured.add(key)


def client(settings: RegistryConfig) -> Any:
    import mlflow

    configure_mlflow(settings)
    return mlflow.MlflowClient()


def ensure_experiment(settings: Settings, name: str) -> str:
    """Id of experiment ``name``, created with its artifacts under the settings' artifact root."""
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = settings.mlflow_artifact_root.rstrip("/")
    location = f"{root}/{name}" if root else None  # none: the tracking service's own store
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # another process may have created it meanwhile
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def version_by_alias(settings: RegistryConfig, alias: str = CHAMPION) -> Any | None:
    """The model version holding ``alias`` (None when the model or alias does not exist).

    Raises :class:`RegistryUnreachable` when the tracking server does not answer: "no version" and
    "cannot ask" must differ, or a running stream would take an outage for a removed alias.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client(settings).get_model_version_by_alias(settings.model_name, alias)
    except MlflowException as exc:
        if _is_unreachable(exc):
            raise unreachable(settings.mlflow_tracking_uri, exc) from exc
        return None


def champion_version(settings: RegistryConfig) -> Any | None:
    return version_by_alias(settings, CHAMPION)


def set_alias(settings: Settings, alias: str, version: str | int) -> None:
    client(settings).set_registered_model_alias(settings.model_name, alias, str(version))


def drop_alias(settings: Settings, alias: str, version: str | int) -> bool:
    """Delete ``alias`` if it still names ``version`` (another process may have moved it meanwhile)."""
    holder = version_by_alias(settings, alias)
    if holder is None or str(holder.version) != str(version):
        return False
    client(settings).delete_registered_model_alias(settings.model_name, alias)
    return True


def model_uri(settings: RegistryConfig, version: str | int | None = None) -> str:
    if version is None:
        return f"models:/{settings.model_name}@{CHAMPION}"
    return f"models:/{settings.model_name}/{version}"


def load_classifier(settings: RegistryConfig, version: str | int | None = None) -> tuple[Classifier, str]:
    """``(classifier, version)`` for ``version`` or the current champion.

    The classifier is the registered pyfunc's Python model: ``classify(list[bytes])``.
    """
    import mlflow

    if version is None:
        current = champion_version(settings)
        if current is None:
            raise RegistryError(f"model {settings.model_name!r} has no {CHAMPION!r} version yet: run 'lakesight train'")
        version = current.version
    configure_mlflow(settings)
    loaded = mlflow.pyfunc.load_model(model_uri(settings, version))
    return loaded.unwrap_python_model(), str(version)


REFERENCE_ARTIFACT = "reference"  # the pyfunc artifact name of a model's Baseline
REFERENCE_FILE = "reference.npz"


@dataclass(frozen=True)
class Baseline:
    """A model's reference: what it made of its held-out images at registration.

    Saved with the model version as ``reference.npz`` (``training.packaging`` writes it, the
    stream reads it through :func:`model_baseline`, the drift statistics compare with it): this class owns the format.
    """

    probabilities: np.ndarray  # (n, classes)
    class_names: Sequence[str]
    embeddings: np.ndarray | None  # (n, dims), as served: centred and L2-normalised

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {
            "probabilities": np.asarray(self.probabilities, np.float32),
            "class_names": np.asarray(self.class_names),
        }
        if self.embeddings is not None:
            arrays["embeddings"] = np.asarray(self.embeddings, np.float32)
        with path.open("wb") as out:
            np.savez_compressed(out, **arrays)

    @classmethod
    def load(cls, path: Path) -> Baseline:
        with np.load(path, allow_pickle=False) as arrays:
            embeddings = np.asarray(arrays["embeddings"]) if "embeddings" in arrays.files else None
            names = [str(n) for n in arrays["class_names"]]
            return cls(np.asarray(arrays["probabilities"]), names, embeddings)


def model_baseline(settings: Settings, version: str | int) -> Baseline | None:
    """The reference saved with ``version`` at registration (None for a version saved without one).

    Read from the model's artifacts alone, without loading the network: the stream's driver
    compares windows with it and needs no TensorFlow.
    """
    import tempfile

    import mlflow

    configure_mlflow(settings)
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model_uri(settings, version)}/artifacts/{REFERENCE_FILE}", dst_path=folder
            )
        except Exception as exc:  # MLflow raises its own types for an absent artifact
            if any(word in str(exc).lower() for word in ("not found", "no such", "does not exist")):
                return None
            raise RegistryError(f"cannot read the reference of version {version}: {exc}") from exc
        return Baseline.load(Path(local))


def registry_exists(settings: RegistryConfig) -> bool:
    """False for a local SQLite registry not created yet (opening it would create and migrate one)."""
    uri = settings.mlflow_tracking_uri
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()


def set_version_tags(settings: Settings, version: str | int, tags: dict[str, Any]) -> None:
    """Set ``tags`` (values as strings) on model version ``version``."""
    mlflow_client = client(settings)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(settings.model_name, str(version), key, str(value))


# Versions ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionRow:
    """One registered version as lakesight reads it."""

    version: str
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str = ""
    created: str = ""

    @property
    def accuracy(self) -> float | None:
        value = self.tags.get(TAG_ACCURACY)
        return float(value) if value else None

    @property
    def delta_version(self) -> int | None:
        """The training table's version, or None when absent or not an integer."""
        value = self.tags.get(TAG_DELTA_VERSION)
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    def summary(self) -> dict[str, str]:
        """The row ``lakesight models`` prints."""
        return {
            "version": self.version,
            "aliases": ",".join(sorted(self.aliases)),
            "accuracy": self.tags.get(TAG_ACCURACY, ""),
            "champion_accuracy": self.tags.get(TAG_CHAMPION_ACCURACY, ""),
            "decision": self.tags.get(TAG_DECISION, ""),
            "live_decision": self.tags.get(TAG_LIVE_DECISION, ""),
            "delta_version": self.tags.get(TAG_DELTA_VERSION, ""),
            "run_id": self.run_id,
        }


def versions(settings: RegistryConfig) -> list[VersionRow]:
    """Every version of the registered model, newest first (empty when the model does not exist)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    try:
        model = mlflow_client.get_registered_model(settings.model_name)
    except MlflowException:
        return []
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    found = mlflow_client.search_model_versions(f"name='{settings.model_name}'")
    rows = [
        VersionRow(
            version=str(mv.version),
            aliases=tuple(sorted(aliases.get(str(mv.version), []))),
            tags=dict(mv.tags or {}),
            run_id=mv.run_id or "",
            created=dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.UTC).isoformat(),
        )
        for mv in found
    ]
    return sorted(rows, key=lambda row: int(row.version), reverse=True)


def list_versions(settings: Settings) -> list[dict[str, str]]:
    """Every version of the registered model, newest first, with aliases, scores and Delta version."""
    return [row.summary() for row in versions(settings)]
