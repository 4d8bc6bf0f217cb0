from pathlib import Path

import pytest

from infra.settings import AZURITE_KEY, Settings


def test_defaults_live_under_state_dir(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "s")
    assert settings.lake_root == str(tmp_path / "s" / "lake")
    assert settings.checkpoint_root == str(tmp_path / "s" / "checkpoints")
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 's' / 'mlflow.db'}"
    assert f"127.0.0.1:{settings.blob_port}" in settings.blob_connection_string.get_secret_value()


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


@pytest.mark.parametrize("field,value", [("confidence_threshold", 1.5), ("images_container", "Bad_Name"),
                                         ("max_image_bytes", 0)])
def test_invalid_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        Settings(**{field: value})


def test_azure_mode_refuses_default_secrets() -> None:
    with pytest.raises(ValueError, match="connection string"):
        Settings(mode="azure")
    conn = f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={AZURITE_KEY};EndpointSuffix=core.windows.net"
    with pytest.raises(ValueError, match="connection string"):
        Settings(mode="azure", blob_connection_string=conn)
    real = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net"
    with pytest.raises(ValueError, match="event key"):
        Settings(mode="azure", blob_connection_string=real)
    assert Settings(mode="azure", blob_connection_string=real, event_key="s3cret-key").mode == "azure"


def test_secrets_are_masked_when_printed() -> None:
    settings = Settings(event_key="very-secret")
    shown = str(settings.public_dict()) + repr(settings)
    assert "very-secret" not in shown
    assert AZURITE_KEY not in shown
