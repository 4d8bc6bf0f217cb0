"""MLflow tracking and model registry, configured from settings.

Aliases, not stages (MLflow 3): ``champion`` is the model the stream scores with,
``challenger`` the latest model that did not beat it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from infra.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_DELTA_VERSION = "delta_version"

_lock = threading.Lock()
_configured: set[tuple[str, str]] = set()


class RegistryError(RuntimeError):
    """MLflow cannot be reached or holds no usable model."""


def configure_mlflow(settings: Settings) -> None:
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
        except Exception as exc:  # noqa: BLE001 - any failure here means "cannot reach it"
            raise RegistryError(f"MLflow tracking URI {uri} is not reachable: {exc}") from exc
        _configured.add(key)


def client(settings: Settings) -> Any:
    import mlflow

    configure_mlflow(settings)
    return mlflow.MlflowClient()


def ensure_experiment(settings: Settings, name: str) -> str:
    """Id of experiment ``name``, created with its artifacts under the settings' artifact root."""
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = f"{settings.mlflow_artifact_root.rstrip('/')}/{name}"
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - another process may have created it meanwhile
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def version_by_alias(settings: Settings, alias: str = CHAMPION) -> Any | None:
    """The model version holding ``alias`` (None when the model or alias does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return client(settings).get_model_version_by_alias(settings.model_name, alias)
    except MlflowException:
        return None


def champion(settings: Settings) -> Any | None:
    return version_by_alias(settings, CHAMPION)


def set_alias(settings: Settings, alias: str, version: str | int) -> None:
    client(settings).set_registered_model_alias(settings.model_name, alias, str(version))


def model_uri(settings: Settings, version: str | int | None = None) -> str:
    if version is None:
        return f"models:/{settings.model_name}@{CHAMPION}"
    return f"models:/{settings.model_name}/{version}"


def load_classifier(settings: Settings, version: str | int | None = None) -> tuple[Any, str]:
    """``(classifier, version)`` for ``version`` or the current champion.

    The classifier is the registered pyfunc's Python model: ``classify(list[bytes])``.
    """
    import mlflow

    if version is None:
        current = champion(settings)
        if current is None:
            raise RegistryError(f"model {settings.model_name!r} has no {CHAMPION!r} version yet: run 'lakesight train'")
        version = current.version
    configure_mlflow(settings)
    loaded = mlflow.pyfunc.load_model(model_uri(settings, version))
    return loaded.unwrap_python_model(), str(version)


TAG_ACCURACY = "test_accuracy"
TAG_CHAMPION_ACCURACY = "champion_test_accuracy"
TAG_DECISION = "promotion_decision"


def set_version_tags(settings: Settings, version: str | int, tags: dict[str, Any]) -> None:
    """Set ``tags`` (values as strings) on model version ``version``."""
    mlflow_client = client(settings)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(settings.model_name, str(version), key, str(value))


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every version of the registered model, newest first, with aliases, scores and Delta version."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    try:
        model = mlflow_client.get_registered_model(settings.model_name)
    except MlflowException:
        return []
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    versions = mlflow_client.search_model_versions(f"name='{settings.model_name}'")
    rows = []
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = mv.tags or {}
        rows.append(
            {
                "version": str(mv.version),
                "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
                "accuracy": tags.get(TAG_ACCURACY, ""),
                "champion_accuracy": tags.get(TAG_CHAMPION_ACCURACY, ""),
                "decision": tags.get(TAG_DECISION, ""),
                "delta_version": tags.get(TAG_DELTA_VERSION, ""),
                "run_id": mv.run_id or "",
            }
        )
    return rows
