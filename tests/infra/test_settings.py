from pathlib import Path

import pytest
from pydantic import SecretStr

from infra.errors import SettingsError
from infra.settings import AZURITE_KEY, DEFAULT_EVENT_KEY, Settings, get_settings


def test_defaults_live_under_state_dir(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "s")
    assert settings.lake_root == str(tmp_path / "s" / "lake")
    assert settings.checkpoint_root == str(tmp_path / "s" / "checkpoints")
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 's' / 'mlflow.db'}"
    assert f"127.0.0.1:{settings.blob_port}" in settings.blob_connection_string.get_secret_value()


def test_an_http_tracking_server_keeps_the_artifacts_by_default(tmp_path: Path) -> None:
    # Artifacts on the logging process's disk are out of reach of executors elsewhere.
    assert Settings(state_dir=tmp_path, mlflow_tracking_uri="http://127.0.0.1:5000").mlflow_artifact_root == (
        "mlflow-artifacts:/"
    )
    assert Settings(state_dir=tmp_path).mlflow_artifact_root == str(tmp_path / "mlartifacts")
    given = Settings(state_dir=tmp_path, mlflow_tracking_uri="https://mlflow.example", mlflow_artifact_root="s3://b/a")
    assert given.mlflow_artifact_root == "s3://b/a"


@pytest.mark.parametrize("uri", ["databricks", "databricks-uc", "azureml://eastus.api.azureml.ms/mlflow/v1.0/x"])
def test_a_tracking_service_keeps_the_artifacts_in_its_own_store(tmp_path: Path, uri: str) -> None:
    # A job cluster's local disk goes away with it: no local default, and a cluster accepts that.
    settings = Settings(state_dir=tmp_path, mlflow_tracking_uri=uri, lake_root="abfss://lake@a.dfs.core.windows.net")
    assert settings.mlflow_artifact_root == ""
    cluster = settings.model_copy(
        update={
            "checkpoint_root": "abfss://lake@a.dfs.core.windows.net/c",
            "arrivals_root": "abfss://lake@a.dfs.core.windows.net/a",
        }
    )
    cluster.require_cluster_paths("spark://10.0.0.1:7077")


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "lakesight.toml"
    config.write_text('model_name = "from-toml"\nconfidence_threshold = 0.8\nimages_container = "incoming"\n')
    monkeypatch.setenv("LAKESIGHT_CONFIG", str(config))
    monkeypatch.setenv("LAKESIGHT_CONFIDENCE_THRESHOLD", "0.7")
    settings = Settings(state_dir=tmp_path)
    assert settings.model_name == "from-toml"
    assert settings.images_container == "incoming"
    assert settings.confidence_threshold == 0.7


def test_missing_config_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKESIGHT_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ValueError, match="does not exist"):
        Settings()


@pytest.mark.parametrize(
    "field,value", [("confidence_threshold", 1.5), ("images_container", "Bad_Name"), ("max_image_bytes", 0)]
)
def test_invalid_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        Settings(**{field: value})


def test_azure_mode_checks_each_secret_where_it_is_used() -> None:
    # A process that uses neither secret (a retraining job) starts in azure mode without them.
    bare = Settings(mode="azure")
    with pytest.raises(SettingsError, match="connection string"):
        bare.blob_connection()
    with pytest.raises(SettingsError, match="default event key"):
        bare.event_secret()
    conn = f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={AZURITE_KEY};EndpointSuffix=core.windows.net"
    with pytest.raises(ValueError, match="development account key"):
        Settings(mode="azure", blob_connection_string=conn)
    real = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net"
    with pytest.raises(SettingsError, match="LAKESIGHT_EVENT_KEY is empty"):
        Settings(mode="azure", blob_connection_string=real, event_key="").event_secret(bind_host="127.0.0.1")
    for weak in ("s3cret-key", "k" * 31):
        with pytest.raises(SettingsError, match="at least 32 characters"):
            Settings(mode="azure", blob_connection_string=real, event_key=weak).event_secret()
    strong = "k" * 32
    settings = Settings(mode="azure", blob_connection_string=real, event_key=strong)
    assert settings.blob_connection() == real and settings.event_secret() == strong


def test_an_empty_or_default_event_key_is_allowed_only_on_a_loopback_bind() -> None:
    for weak in ("", DEFAULT_EVENT_KEY, "a-short-key"):
        settings = Settings(event_key=weak)
        for loopback in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
            assert settings.event_secret(bind_host=loopback) == weak
        for exposed in ("0.0.0.0", "::", "192.168.1.20", "handler.example.com"):
            with pytest.raises(SettingsError, match="allowed only on a loopback bind"):
                settings.event_secret(bind_host=exposed)
    strong = "k" * 32
    assert Settings(event_key=strong).event_secret(bind_host="0.0.0.0") == strong


def test_the_next_event_key_is_accepted_beside_the_current_one_and_checked_alike() -> None:
    assert Settings(event_key="k" * 32).event_secrets(bind_host="0.0.0.0") == ("k" * 32,)
    rotating = Settings(event_key="k" * 32, event_key_next="n" * 32)
    assert rotating.event_secrets(bind_host="0.0.0.0") == ("k" * 32, "n" * 32)
    with pytest.raises(SettingsError, match="LAKESIGHT_EVENT_KEY_NEXT"):
        Settings(event_key="k" * 32, event_key_next=DEFAULT_EVENT_KEY).event_secrets(bind_host="0.0.0.0")


def test_local_mode_fills_every_location_from_the_state_dir(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    assert settings.arrivals_root == str(tmp_path / "arrivals")
    assert settings.lake_root == str(tmp_path / "lake") and settings.checkpoint_root == str(tmp_path / "checkpoints")
    shown = settings.public_dict()  # what 'lakesight config' prints: resolved paths, not ""
    assert all(shown[name] for name in ("lake_root", "checkpoint_root", "arrivals_root", "mlflow_artifact_root"))


def test_settings_travel_to_a_child_process_through_to_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(
        state_dir=tmp_path / "s",
        label_classes=["a", "b"],
        spark_conf={"k": "v"},
        event_key=SecretStr("secret-key"),
        retrain_min_new_labels=7,
    )
    for name, value in original.to_env().items():
        monkeypatch.setenv(name, value)
    rebuilt = Settings()
    assert rebuilt.model_dump() == original.model_dump()
    assert rebuilt.event_key.get_secret_value() == "secret-key"
    public = original.to_env(secrets=False)
    assert "LAKESIGHT_EVENT_KEY" not in public and "LAKESIGHT_BLOB_CONNECTION_STRING" not in public
    assert original.to_env(only=("model_name",)) == {"LAKESIGHT_MODEL_NAME": original.model_name}


def test_invalid_environment_is_one_line_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKESIGHT_CONFIDENCE_THRESHOLD", "2")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match="confidence_threshold") as caught:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert "\n" not in str(caught.value)


def test_secrets_are_masked_when_printed() -> None:
    settings = Settings(event_key="very-secret")
    shown = str(settings.public_dict()) + repr(settings)
    assert "very-secret" not in shown
    assert AZURITE_KEY not in shown


def test_azure_mode_refuses_a_weak_model_api_key() -> None:
    for weak, reason in (("", "is empty"), ("local-model-key", "default model API key"), ("k" * 31, "at least 32")):
        with pytest.raises(SettingsError, match=reason):
            Settings(mode="azure", model_api_key=weak).model_secret()
    assert Settings(mode="azure", model_api_key="k" * 32).model_secret() == "k" * 32
    assert Settings(model_api_key="").model_secret() == ""  # local mode: the server decides (loopback only)
    assert "model_api_key" in Settings.model_fields and "k" * 32 not in str(
        Settings(model_api_key="k" * 32).public_dict()
    )


def test_a_cluster_refuses_driver_local_paths_unless_allowed(tmp_path: Path) -> None:

    cluster = "spark://10.0.0.4:7077"
    local = Settings(state_dir=tmp_path, spark_master=cluster)  # loading them is fine: no Spark yet
    local.require_cluster_paths("local[2]")  # a local master sees this disk
    with pytest.raises(SettingsError) as refused:
        local.require_cluster_paths(cluster)
    message = str(refused.value)
    assert "\n" not in message and "LAKESIGHT_ALLOW_LOCAL_PATHS_ON_CLUSTER=true" in message
    for name in ("lake_root", "checkpoint_root", "arrivals_root", "mlflow_artifact_root", "mlflow_tracking_uri"):
        assert f"{name}=" in message
    Settings(state_dir=tmp_path, allow_local_paths_on_cluster=True).require_cluster_paths(cluster)

    lake = "abfss://lake@acct.dfs.core.windows.net"
    shared = Settings(
        state_dir=tmp_path,
        lake_root=f"{lake}/tables",
        checkpoint_root=f"{lake}/checkpoints",
        arrivals_root=f"{lake}/arrivals",
        mlflow_tracking_uri="https://mlflow.example.com",
        mlflow_artifact_root="mlflow-artifacts:/",  # the server stores them: not this machine's
    )
    shared.require_cluster_paths(cluster)
    shared.model_copy(
        update={"mlflow_tracking_uri": "databricks", "mlflow_artifact_root": "dbfs:/x"}
    ).require_cluster_paths(cluster)
    for uri in ("http://127.0.0.1:5000", "sqlite:///m.db", "file:///m", "./mlruns"):
        with pytest.raises(SettingsError, match="mlflow_tracking_uri"):
            shared.model_copy(update={"mlflow_tracking_uri": uri}).require_cluster_paths(cluster)
    with pytest.raises(SettingsError, match=r"checkpoint_root=file:/tmp/c[;,]"):
        shared.model_copy(update={"checkpoint_root": "file:/tmp/c"}).require_cluster_paths(cluster)


def test_the_check_runs_when_a_spark_session_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from pyspark.sql import SparkSession

    from infra.spark import get_spark

    settings = Settings(state_dir=tmp_path, spark_master="spark://10.0.0.4:7077")
    monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: None))
    with pytest.raises(SettingsError, match="lake_root="):
        get_spark(settings)  # refused before any session is built
    databricks = SimpleNamespace(sparkContext=SimpleNamespace(master="spark://10.1.2.3:7077"))
    monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: databricks))
    with pytest.raises(SettingsError, match=r"spark master spark://10\.1\.2\.3:7077"):
        get_spark(Settings(state_dir=tmp_path))  # the session's master says, not the setting


def test_the_strategy_names_settings_accept_are_the_ones_implemented() -> None:
    from infra.core.labeling.strategies import STRATEGIES
    from infra.settings import LABELING_STRATEGIES

    assert set(LABELING_STRATEGIES) == set(STRATEGIES)


def test_the_label_studio_password_follows_the_secret_rules(tmp_path: Path) -> None:
    from tests.helpers.handlers import azure_settings

    assert Settings(state_dir=tmp_path).label_studio_secret() == "local-label-studio"  # local: the default is fine
    with pytest.raises(SettingsError, match="LAKESIGHT_LABEL_STUDIO_PASSWORD"):
        azure_settings(tmp_path).label_studio_secret()
    strong = azure_settings(tmp_path, label_studio_password="p" * 40)
    assert strong.label_studio_secret() == "p" * 40
    assert strong.public_dict()["label_studio_password"] == "**********"
