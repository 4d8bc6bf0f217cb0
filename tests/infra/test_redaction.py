"""One redaction rule: what ``lakesight config`` prints, what Spark hides, what MLflow records."""

from __future__ import annotations

import json
import re
from pathlib import Path

from infra.redaction import MASK, redact, redact_text
from infra.spark import REDACTION_REGEX
from tests.helpers.cli import lakesight

SP_SECRET = "sp-secret-value-1"
ACCOUNT_KEY = "account-key-value-2"
URL_PASSWORD = "url-password-3"
SAS_SIGNATURE = "sas-signature-4"


def test_config_prints_no_storage_option_spark_conf_or_url_secret(tmp_path: Path) -> None:
    result = lakesight(
        "config",
        state=tmp_path,
        LAKESIGHT_LAKE_STORAGE_OPTIONS=json.dumps({"azure_client_id": "the-client", "azure_client_secret": SP_SECRET}),
        LAKESIGHT_SPARK_CONF=json.dumps(
            {"fs.azure.account.key.acct.dfs.core.windows.net": ACCOUNT_KEY, "spark.executor.memory": "2g"}
        ),
        LAKESIGHT_MLFLOW_TRACKING_URI=f"https://lakesight:{URL_PASSWORD}@mlflow.example.com/",
        LAKESIGHT_DRIFT_EVENT_URL=f"https://h.example.com/api/events?code={SAS_SIGNATURE}",
    )
    assert result.returncode == 0, result.stderr
    for secret in (SP_SECRET, ACCOUNT_KEY, URL_PASSWORD, SAS_SIGNATURE):
        assert secret not in result.stdout
    shown = json.loads(result.stdout)
    # What is not secret is still shown, so the output stays useful.
    assert shown["lake_storage_options"] == {"azure_client_id": "the-client", "azure_client_secret": MASK}
    assert shown["spark_conf"]["spark.executor.memory"] == "2g"
    assert shown["mlflow_tracking_uri"] == f"https://lakesight:{MASK}@mlflow.example.com/"


def test_spark_hides_what_lakesight_hides() -> None:
    for name in (
        "fs.azure.account.key.acct.dfs.core.windows.net",
        "spark.executorEnv.LAKESIGHT_BLOB_CONNECTION_STRING",
        "spark.executorEnv.LAKESIGHT_LAKE_STORAGE_OPTIONS",
        "spark.hadoop.fs.azure.sas.token.provider",
        "azure_client_secret",
    ):
        assert re.search(REDACTION_REGEX, name), name  # Spark masks this conf in its UI and logs
        assert redact({name: "value"}) == {name: MASK}  # and lakesight when it prints it


def test_connection_strings_and_sas_urls_lose_only_their_secrets() -> None:
    conn = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net"
    assert redact_text(conn) == conn.replace("c2VjcmV0", MASK)
    sas = f"https://acct.blob.core.windows.net/images/a.png?sv=2024-01-01&sig={SAS_SIGNATURE}"
    assert redact_text(sas) == sas.replace(SAS_SIGNATURE, MASK)
    plain = "abfss://lake@acct.dfs.core.windows.net/tables"
    assert redact_text(plain) == plain


def test_an_unreachable_tracking_uri_is_named_without_its_password() -> None:
    import httpx

    from infra.processes import free_port
    from infra.registry import unreachable

    uri = f"http://lakesight:{URL_PASSWORD}@127.0.0.1:{free_port()}"
    try:
        httpx.get(uri, timeout=5)  # nothing listens there: a real connection error
    except httpx.HTTPError as exc:
        error = unreachable(uri, exc)
    assert URL_PASSWORD not in str(error)
    assert f"http://lakesight:{MASK}@127.0.0.1" in str(error) and "is not reachable" in str(error)


def test_the_status_snapshot_is_redacted(tmp_path: Path) -> None:
    # The registry section fails on this URI (nothing listens); its error quotes the URI.
    from infra.core.status import snapshot
    from infra.processes import free_port
    from infra.settings import Settings

    uri = f"http://lakesight:{URL_PASSWORD}@127.0.0.1:{free_port()}"
    shown = json.dumps(snapshot(Settings(state_dir=tmp_path / "state", mlflow_tracking_uri=uri)))
    assert URL_PASSWORD not in shown
