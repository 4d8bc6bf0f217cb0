"""One typed settings object, read from ``LAKESIGHT_*`` variables and an optional TOML file.

Precedence: explicit keyword arguments > environment > TOML file > defaults. The TOML file
is ``$LAKESIGHT_CONFIG`` when set, else ``./lakesight.toml`` when present.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from infra.blob_names import HADOOP_STORAGE_FORM, BlobNameError, storage_folder, validate_container_name
from infra.errors import SettingsError
from infra.locations import default_artifact_root, is_loopback, local_path, names_driver_storage, names_driver_tracking

if TYPE_CHECKING:
    from infra.tables import TableSpec

# Azurite's documented development account: public, and refused outside local mode.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEFAULT_EVENT_KEY = "local-dev-key"
# Images whose header claims more pixels are refused before any decoding (infra.images reads it).
MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_MODEL_API_KEY = "local-model-key"
# An event key shorter than this is guessable; azure mode refuses it.
MIN_EVENT_KEY_CHARS = 32
LAKE_ENGINES = ("delta-rs", "spark")
# The selection strategies a user may name; infra.core.labeling.strategies implements each one
# (tests/infra/test_settings.py keeps the two lists equal).
LABELING_STRATEGIES = ("threshold", "random", "least_confidence", "margin", "entropy", "margin_diversity")
SECRET_FIELDS = (
    "blob_connection_string",
    "event_key",
    "event_key_next",
    "status_cookie_secret",
    "model_api_key",
    "label_studio_password",
)
DEFAULT_LABEL_STUDIO_PASSWORD = "local-label-studio"
# Where an executor reads the blob connection string (the cluster sets it: a cluster secret, or
# spark.executorEnv.*); what task closures carry holds no secret (ScoringConfig, for_executors).
BLOB_CONNECTION_ENV = "LAKESIGHT_BLOB_CONNECTION_STRING"
# The same for delta-rs's storage options (a service principal's secret), as JSON.
LAKE_STORAGE_OPTIONS_ENV = "LAKESIGHT_LAKE_STORAGE_OPTIONS"


def azurite_connection(port: int) -> str:
    """The connection string of Azurite's public development account on ``port`` (local mode's default)."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


def executor_environment(name: str, what: str) -> str:
    """A secret a Spark executor reads from its environment (never from its task closure)."""
    value = os.environ.get(name, "")
    if not value:
        raise SettingsError(
            f"this Spark executor has no {what}: set {name} in the executors' environment "
            f"(a cluster secret, or spark.executorEnv.{name})"
        )
    return value


@dataclass(frozen=True)
class ExecutorBlobAccess:
    """How Spark executor code reaches blob storage with no secret in its task closure (a closure is
    shipped with every task, and its bytes end up in task logs and dumps): local mode's Azurite
    default, a public development key, is derived again from the port; any other connection string
    is read from the executor's environment (:data:`BLOB_CONNECTION_ENV`)."""

    azurite_port: int | None  # None: the connection string comes from the environment

    @classmethod
    def of(cls, settings: Settings) -> ExecutorBlobAccess:
        conn = settings.blob_connection_string.get_secret_value()
        return cls(settings.blob_port if conn == azurite_connection(settings.blob_port) else None)

    def connection(self) -> str:
        if self.azurite_port is not None:
            return azurite_connection(self.azurite_port)
        return executor_environment(BLOB_CONNECTION_ENV, "blob connection string")


def _config_file() -> Path | None:
    explicit = os.environ.get("LAKESIGHT_CONFIG")
    if explicit:
        return Path(explicit)
    local = Path("lakesight.toml")
    return local if local.exists() else None


class Settings(BaseSettings):
    """Everything lakesight can be configured with. Paths may be local or ``abfss://`` URIs."""

    model_config = SettingsConfigDict(
        env_prefix="LAKESIGHT_", extra="ignore", validate_default=True, populate_by_name=True
    )
    # Set on the copy for executors (for_executors): how an executor reaches blob storage; None on the driver.
    _executor_blob: ExecutorBlobAccess | None = PrivateAttr(None)
    # True on the copy for executors when the driver had storage options: they come from the environment.
    _executor_storage_env: bool = PrivateAttr(False)

    mode: Literal["local", "azure"] = Field("local", description="local: embedded stack; azure: real cloud")
    state_dir: Path = Field(Path(".lakesight"), description="Where local state lives (lake, logs, MLflow)")
    lake_root: str = Field("", description="Delta tables root; default <state_dir>/lake")
    checkpoint_root: str = Field("", description="Streaming checkpoints; default <state_dir>/checkpoints")
    arrivals_root: str = Field("", description="Arrival records folder; default <state_dir>/arrivals")
    lake_storage_options: dict[str, str] = Field(default_factory=dict, description="delta-rs storage options")
    petastorm_cache_url: str = Field(
        "",
        description="Where Petastorm's Spark converter materialises training rows (legacy stack, --feed petastorm); "
        "a URL every worker reads; default file://<state_dir>/petastorm",
    )

    spark_master: str = Field("local[*]", description="Spark master URL")
    # A cluster's workers cannot see the driver's disk (docs/DEPLOY.md, Nothing driver-local on a cluster).
    allow_local_paths_on_cluster: bool = Field(
        False,
        description="Let a Spark session on a non-local master use local paths for the lake, checkpoints, arrival "
        "records and MLflow (only when every worker shares this machine's disk)",
    )
    spark_conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark configuration")
    lake_engine: str = Field(
        "",
        description="Who writes the Delta tables: delta-rs on the driver, or spark (delta-spark MERGE on the "
        "executors); default delta-rs on a local[*] master, spark on any other",
    )
    jars_dir: str = Field("", description="The spark engine's JVM packages (make install); default <project>/.jars")

    blob_port: int = Field(10000, description="Azurite blob port (local mode)")
    blob_connection_string: SecretStr = Field(SecretStr(""), description="Blob storage connection string")
    images_container: str = Field("images", description="Container where new images land")
    labeling_container: str = Field("labeling", description="Container for images sent to humans")
    exports_container: str = Field("labeling-exports", description="Container for labeling exports")
    labeling_service: Literal["", "label-studio", "azureml", "container"] = Field(
        "",
        description="Where the hand-off's picks go to humans: label-studio (tasks in the embedded Label Studio), "
        "azureml (the labeling container as an Azure ML labeling datastore) or container (copies and a JSONL "
        "manifest only); default label-studio in local mode when it is installed, else container",
    )
    label_studio_sync_s: float = Field(
        30.0,
        gt=0,
        description="How often the handler pushes new picks into Label Studio and pulls its annotations "
        "(the pull reconciles what a missed webhook dropped)",
    )
    label_studio_port: int = Field(8767, description="Port of the Label Studio that 'lakesight up' starts (loopback)")
    label_studio_email: str = Field(
        "admin@lakesight.local", description="Label Studio admin user lakesight creates and signs in as"
    )
    label_studio_password: SecretStr = Field(
        SecretStr(DEFAULT_LABEL_STUDIO_PASSWORD), description="Label Studio admin password (azure mode: set one)"
    )
    label_studio_venv: str = Field(
        "", description="Label Studio's virtualenv (make labelstudio); default <project>/.venv-labelstudio"
    )
    labeling_datastore: str = Field(
        "lakesight_labeling",
        description="Azure ML datastore registered on the labeling container: azureml:// and AmlDatastore:// "
        "references in exports must name it",
    )

    mlflow_tracking_uri: str = Field("", description="MLflow tracking URI; default SQLite in state_dir")
    mlflow_artifact_root: str = Field(
        "",
        description="MLflow artifact root; default <state_dir>/mlartifacts, or the tracking server's proxy "
        "(mlflow-artifacts:/) when the tracking URI is http(s)",
    )
    mlflow_ui_port: int = Field(5000, description="Port of the MLflow UI started by 'lakesight up'")
    model_name: str = Field("lakesight-classifier", description="Registered model name")

    max_image_bytes: int = Field(10 * 1024 * 1024, gt=0, description="Larger images are refused")
    # What ingest and the scoring stream accept from files (docs/STREAMING.md, "What a row gets").
    max_image_pixels: int = Field(
        MAX_IMAGE_PIXELS, gt=0, description="Images whose header claims more pixels (width x height) are refused"
    )
    keep_undecodable_bytes: bool = Field(
        False, description="Keep the bytes of refused files in the row's content (off: the row and its error only)"
    )
    confidence_threshold: float = Field(0.95, ge=0, le=1, description="Below this, send for labeling")
    labeling_fraction: float = Field(1.0, ge=0, le=1, description="Share of unsure images sent")
    labeling_daily_budget: int = Field(1000, ge=0, description="Most images sent for labeling per day")
    # Which unsure images are worth a label, and when they are sent (docs/LABELING.md).
    labeling_strategy: str = Field(
        "margin_diversity",
        description="threshold, random, least_confidence, margin, entropy or margin_diversity (ranked by "
        "margin, spread by k-center over embeddings, near-duplicates skipped)",
    )
    labeling_window_s: int = Field(
        3600,
        ge=0,
        le=86400,
        description="Candidates compete within windows of this many seconds, and each window spends its share "
        "of the daily budget plus what earlier windows left; 0 sends from each micro-batch at once (unpaced)",
    )
    labeling_min_distance: float = Field(
        0.02, ge=0, le=1, description="Cosine distance under which an image is a near-duplicate of a sent one"
    )
    labeling_max_class_share: float = Field(
        0.5, gt=0, le=1, description="Most of a day's budget one predicted class may take"
    )
    labeling_explore_share: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of every window's allowance drawn at random (a stable hash) from all images scored in it",
    )
    labeling_explore_sample: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Share of confident scored images queued (by a stable hash) for the exploration draw",
    )
    labeling_warm_floor: float = Field(
        0.5,
        ge=0,
        le=1,
        description="margin_diversity chooses by typicality (cold) while live accuracy is under this or twice chance",
    )
    labeling_duplicate_fraction: float = Field(
        0.4,
        gt=0,
        lt=1,
        description="A candidate is a pixel near-duplicate under this fraction of the median thumbnail residual "
        "to the nearest distinct image",
    )
    # The stream's image-drift monitor (docs/DRIFT.md).
    drift_window_batches: int = Field(
        20, ge=1, description="A drift window closes after this many micro-batches (or drift_window_s)"
    )
    drift_window_s: float = Field(600.0, gt=0, description="...or after this many seconds, whichever comes first")
    drift_min_images: int = Field(100, ge=10, description="A window is assessed only once it holds this many images")
    drift_psi_threshold: float = Field(
        0.25, gt=0, description="PSI of confidence or predicted classes above which a window has drifted"
    )
    drift_alpha: float = Field(
        0.005, gt=0, lt=1, description="False-alarm rate of the embedding (MMD permutation) test"
    )
    drift_events: bool = Field(True, description="Publish lakesight.drift.detected to the handler when a window drifts")
    drift_event_url: str = Field(
        "",
        description="Where drift events go (default: this machine's handler, http://handler_host:handler_port/api/events)",
    )
    promotion_margin: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Test-split accuracy gain over the champion a new version needs to become challenger (champion "
        "when promotion_min_pairs is 0)",
    )
    # Promotion on live evidence (docs/PROMOTION.md): a split winner waits as challenger, shadow-scored,
    # until human labels show it is not worse than the champion (an exact McNemar test).
    promotion_min_pairs: int = Field(
        20,
        ge=0,
        description="Discordant live pairs (human-labeled images exactly one of champion and challenger got right) "
        "a challenger needs before its live decision; 0: the split alone promotes",
    )
    promotion_alpha: float = Field(
        0.05, gt=0, lt=1, description="Significance at which live labels refuse a challenger as worse than the champion"
    )
    shadow_fraction: float = Field(
        1.0, ge=0, le=1, description="Share of each batch the stream also scores with the challenger (by path hash)"
    )
    retrain_min_new_labels: int = Field(50, ge=1, description="New human labels that trigger retraining")
    # Label shift (the class mix of new human labels against the champion's training labels), not the
    # stream's image drift; the old name LAKESIGHT_RETRAIN_DRIFT_THRESHOLD is still read.
    retrain_label_shift_threshold: float = Field(
        0.2,
        ge=0,
        validation_alias=AliasChoices(
            "retrain_label_shift_threshold",
            "LAKESIGHT_RETRAIN_LABEL_SHIFT_THRESHOLD",
            "LAKESIGHT_RETRAIN_DRIFT_THRESHOLD",
        ),
        description="Label-shift PSI (new labels' class mix vs the champion's training labels) that triggers; "
        "also the score a drift event must reach",
    )
    retrain_min_accuracy: float = Field(0.9, ge=0, le=1, description="Champion accuracy floor on new labels")
    retrain_cooldown_s: float = Field(60.0, ge=0, description="Quiet time between retrainings")
    retrain_run_deadline_s: float = Field(
        86_400.0,
        gt=0,
        description="A submitted retraining run that has not ended after this is failed (the launcher is freed)",
    )

    score_trigger_s: float = Field(
        0.5,
        gt=0,
        description="Scoring stream processing-time trigger interval (each idle trigger lists the source folder)",
    )
    score_max_bytes_per_trigger: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Most image bytes per micro-batch, with score_max_files_per_trigger (Spark's file sources: "
        "as a file count from the typical image, or record file's announced bytes; 0: files only)",
    )
    score_max_files_per_trigger: int = Field(2000, ge=1, description="Most files (or records) per micro-batch")
    score_source_format: Literal["binaryFile", "cloudFiles"] = Field(
        "binaryFile", description="Directory source: Spark binaryFile, or Databricks Auto Loader (cloudFiles)"
    )
    score_clean_source: Literal["off", "archive", "delete"] = Field(
        "off",
        description="What happens to a source file (image, arrival record) after its batch commits (keeps listings "
        "and memory short)",
    )
    score_archive_dir: str = Field(
        "", description="Where score_clean_source=archive moves files (outside the watched folder)"
    )
    score_checkpoint_max_files: int = Field(
        50_000,
        ge=0,
        description="With score_clean_source on: start a fresh stream checkpoint after this many source files "
        "(bounds what Spark remembers; 0: never)",
    )
    score_compact_every: int = Field(
        50, ge=0, description="Scoring stream compacts the images partitions it wrote every N batches (0: never)"
    )
    champion_check_s: float = Field(5.0, ge=0, description="Seconds between checks of the champion alias")
    score_tf_threads: int = Field(1, ge=1, description="TensorFlow threads per scoring worker process")
    score_workers: Literal["auto", "pool", "spark"] = Field(
        "auto",
        description="Where a local folder's images are scored: pool (long-lived processes of the stream's own, "
        "one per core; needs a local master), spark (Spark's Python workers), "
        "auto (pool where it can run, else spark)",
    )
    score_keep_warm_s: float = Field(
        40.0,
        ge=0,
        lt=60,
        description="A continuous scoring stream idle this long runs a small job on its Python workers, so Spark "
        "(which ends workers idle for 60 s) keeps them and their loaded model (0: never)",
    )
    blob_fetch_threads: int = Field(8, ge=1, description="Parallel blob downloads per scoring task")
    blob_retry_s: float = Field(
        10.0,
        ge=0,
        description="Seconds a scoring task retries unreachable blob storage before its batch fails; the stream "
        "then retries the batch after as long (nothing is committed meanwhile)",
    )
    retrain_min_sample: int = Field(20, ge=1, description="New labels needed before drift/accuracy rules apply")
    retrain_backend: Literal["local", "azureml"] = Field("local", description="Where retraining runs")
    retrain_command: str = Field("", description="Local training command override; {version} is replaced")
    label_classes: list[str] = Field(default_factory=list, description="Classes exports may use; empty: seen labels")
    azureml_subscription_id: str = Field("", description="Azure ML workspace subscription (retrain_backend=azureml)")
    azureml_resource_group: str = Field("", description="Azure ML workspace resource group")
    azureml_workspace: str = Field("", description="Azure ML workspace name")
    azureml_compute: str = Field("gpu-cluster", description="Azure ML GPU compute cluster for retraining")
    score_when_idle: bool = Field(False, description="Handlers run an availableNow scoring pass when no stream runs")

    handler_host: str = Field("127.0.0.1", description="Webhook service bind address")
    handler_port: int = Field(8765, description="Webhook service port")
    event_key: SecretStr = Field(SecretStr(DEFAULT_EVENT_KEY), description="Shared key for Event Grid calls")
    event_key_next: SecretStr = Field(
        SecretStr(""),
        description="During a key rotation, the key replacing LAKESIGHT_EVENT_KEY: both are accepted until it "
        "becomes the current one (docs/DEPLOY.md, Rotating the event key)",
    )
    status_cookie_secret: SecretStr = Field(
        SecretStr(""),
        description="Server-side secret the status page's cookie is signed with (the same on every instance); "
        "empty: a random one per process",
    )
    trusted_proxies: str = Field(
        "127.0.0.1",
        description="Comma-separated addresses of TLS-terminating proxies whose X-Forwarded-Proto/-For the "
        "servers believe (uvicorn's forwarded_allow_ips); the status cookie is Secure when they say https",
    )
    max_event_body_bytes: int = Field(1024 * 1024, gt=0, description="Larger webhook bodies get 413")
    max_export_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Larger labeling exports are refused (and dead-lettered)"
    )
    status_public: bool = Field(
        False, description="Azure mode: serve the status page and /api/status without the event key"
    )
    status_cache_s: float = Field(
        3.0, ge=0, description="The status page's data is taken at most this often, however many pages are open"
    )
    openapi: bool = Field(False, description="Serve the webhook's OpenAPI schema and docs (/openapi.json, /docs)")
    web_limit_concurrency: int = Field(
        256,
        ge=1,
        description="Connections and requests a web service (webhook, model server) takes at once; more get 503",
    )
    web_keep_alive_s: int = Field(
        5, ge=1, description="Idle keep-alive connections of the web services close after this"
    )
    web_max_header_bytes: int = Field(
        16_384, ge=1024, description="Larger request heads (request line and headers) are refused by the web services"
    )
    handler_lease_s: float = Field(
        30.0, gt=0, description="An event a handler process claimed stays its own this long without a renewal"
    )
    handler_retry_base_s: float = Field(
        2.0, gt=0, description="First back-off before failed event work is retried (doubles per attempt)"
    )
    handler_retry_max_s: float = Field(300.0, gt=0, description="Longest back-off between retries of failed event work")
    handler_max_attempts: int = Field(
        20, ge=1, description="Attempts before failed event work is given up (status failed, dead-lettered)"
    )
    handler_stuck_s: float = Field(
        600.0, gt=0, description="A handler lane busy on one piece of work longer than this is reported stuck"
    )
    handler_max_queued: int = Field(
        50_000, ge=1, description="Events queued in a handler's lanes beyond which deliveries get 503 (retried)"
    )
    handler_log_wait_s: float = Field(
        5.0,
        gt=0,
        description="How long a handler waits for the event log's write lock (held by another process) before"
        " a delivery is answered 503 and the work is retried",
    )
    event_log_retention_days: float = Field(7.0, gt=0, description="Finished events older than this are pruned")
    event_log_max_rows: int = Field(1_000_000, ge=1, description="Finished events kept at most (oldest pruned first)")
    dead_letter_retention_days: float = Field(30.0, gt=0, description="Dead letters older than this are pruned")
    dead_letter_max_rows: int = Field(10_000, ge=1, description="Dead letters kept at most (oldest pruned first)")

    model_host: str = Field("127.0.0.1", description="Model server (lakesight serve-model) bind address")
    model_port: int = Field(8766, description="Model server port")
    model_api_key: SecretStr = Field(
        SecretStr(DEFAULT_MODEL_API_KEY), description="Key callers of the model server send as X-API-Key"
    )
    serve_alias: str = Field(
        "champion", min_length=1, description="Registry alias the model server serves (a green deployment: challenger)"
    )
    max_batch_images: int = Field(
        32, ge=1, description="Most parts (images or fields) in one multipart request to the model server"
    )
    max_part_header_bytes: int = Field(
        2048, ge=256, description="Longest header line of a multipart part (Content-Disposition with its file name)"
    )
    serve_max_inflight_bytes: int = Field(
        512 * 1024 * 1024,
        gt=0,
        description="Request body bytes the model server holds at once (declared or streaming in); past it a "
        "request gets 503 with Retry-After, and its batcher queues no more",
    )
    serve_max_inflight_requests: int = Field(
        256, ge=1, description="Requests the model server holds at once; past it 503 with Retry-After"
    )
    serve_batch_wait_ms: float = Field(
        4.0, ge=0, description="How long the model server gathers concurrent requests into one model batch"
    )
    serve_batch_images: int = Field(64, ge=1, description="Most images the model server runs through the model at once")
    online_to_labeling: bool = Field(
        False, description="Unsure images answered by the model server go to labeling like the stream's"
    )
    online_log_queue: int = Field(
        20000, ge=1, description="Answered images waiting for the online_predictions table; beyond it they are dropped"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            if not path.exists():
                raise ValueError(f"LAKESIGHT_CONFIG names {path}, which does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("labeling_strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in LABELING_STRATEGIES:
            raise ValueError(f"unknown labeling strategy {value!r}; choose one of {', '.join(LABELING_STRATEGIES)}")
        return value

    @field_validator("labeling_window_s")
    @classmethod
    def _window_divides_day(cls, value: int) -> int:
        if value and 86400 % value:
            raise ValueError(f"labeling_window_s={value} does not divide a day (86400 s) into whole windows")
        return value

    @field_validator("images_container", "labeling_container", "exports_container")
    @classmethod
    def _container_name(cls, value: str) -> str:
        return validate_container_name(value)

    @field_validator("arrivals_root")
    @classmethod
    def _reachable_arrivals_root(cls, value: str) -> str:
        """The handlers write records where the stream reads them: a local folder, or a folder the
        Blob API can write and Spark's Hadoop connector read (docs/DEPLOY.md); anything else used to
        become a local folder named after the URI, which the stream on another machine never saw."""
        if value and (local_path(value) is None or not names_driver_storage(value)):
            try:
                storage_folder(value)
            except BlobNameError as exc:
                raise ValueError(
                    f"arrivals_root {value} cannot be written by the handlers: use a local folder or "
                    f"{HADOOP_STORAGE_FORM} of the blob connection's account"
                ) from exc
        return value

    @field_validator("lake_engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        if value and value not in LAKE_ENGINES:
            raise ValueError(f"unknown lake engine {value!r}: choose one of {', '.join(LAKE_ENGINES)}")
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        state = self.state_dir.expanduser().absolute()
        self.state_dir = state
        if not self.lake_root:
            self.lake_root = str(state / "lake")
        if not self.checkpoint_root:
            self.checkpoint_root = str(state / "checkpoints")
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{state / 'mlflow.db'}"
        if not self.mlflow_artifact_root:
            self.mlflow_artifact_root = default_artifact_root(self.mlflow_tracking_uri, state)
        if not self.arrivals_root:
            self.arrivals_root = str(state / "arrivals")
        if not self.petastorm_cache_url:
            self.petastorm_cache_url = (state / "petastorm").as_uri()
        if not self.lake_engine:
            self.lake_engine = "delta-rs" if self.spark_master.startswith("local") else "spark"
        conn = self.blob_connection_string.get_secret_value()
        if not conn and self.mode == "local":
            self.blob_connection_string = SecretStr(azurite_connection(self.blob_port))
        if self.score_clean_source == "archive" and not self.score_archive_dir:
            raise ValueError("score_clean_source=archive needs score_archive_dir (where processed files go)")
        if self.mode != "local" and AZURITE_KEY in conn:
            raise ValueError("mode=azure refuses Azurite's development account key in LAKESIGHT_BLOB_CONNECTION_STRING")
        return self

    # Derived locations -------------------------------------------------------------------------
    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    def table_uri(self, table: str | TableSpec) -> str:
        return f"{self.lake_root.rstrip('/')}/{table}"

    def checkpoint_uri(self, name: str) -> str:
        return f"{self.checkpoint_root.rstrip('/')}/{name}"

    def require_cluster_paths(self, master: str) -> None:
        """Refuse driver-local storage for a Spark session on ``master`` when it is a cluster.

        Checked when a session starts (``infra.spark.get_spark``), not when settings load: local
        tooling that never starts Spark (``lakesight config``, ``status``) keeps working with them.
        Workers on other machines would write checkpoints and lake files to their own disks, or
        find nothing, silently.
        """
        if master.startswith("local") or self.allow_local_paths_on_cluster:
            return
        local = [
            f"{name}={value}"
            for name, value in (
                ("lake_root", self.lake_root),
                ("checkpoint_root", self.checkpoint_root),
                ("arrivals_root", self.arrivals_root),
                ("mlflow_artifact_root", self.mlflow_artifact_root),
            )
            if value and names_driver_storage(value)  # an empty artifact root: the tracking service's store
        ]
        if names_driver_tracking(self.mlflow_tracking_uri):
            local.append(f"mlflow_tracking_uri={self.mlflow_tracking_uri}")
        if local:
            raise SettingsError(
                f"spark master {master} is a cluster, whose workers cannot see this machine's files: "
                f"{', '.join(local)}; use shared storage (abfss://, an MLflow server) or set "
                "LAKESIGHT_ALLOW_LOCAL_PATHS_ON_CLUSTER=true when every worker shares this disk"
            )

    # Secrets, checked where they are used ------------------------------------------------------
    # A process checks only the secrets it uses: a retraining job that never touches blob storage
    # or the webhook starts in azure mode without them (docs/ARCHITECTURE.md, "Settings").
    def blob_connection(self) -> str:
        """The blob connection string; in azure mode an empty one is a :class:`SettingsError`."""
        if self._executor_blob is not None:
            return self._executor_blob.connection()
        conn = self.blob_connection_string.get_secret_value()
        if not conn:
            raise SettingsError("mode=azure needs a real blob connection string (LAKESIGHT_BLOB_CONNECTION_STRING)")
        return conn

    def for_executors(self) -> Settings:
        """A copy to pickle into Spark task closures, its secrets blank: a closure is shipped with every
        task, and its bytes end up in task logs and dumps. Executors read the blob connection string
        from their environment (:data:`BLOB_CONNECTION_ENV`); local mode's Azurite default, a public
        development key, is derived again from ``blob_port``."""
        blanks: dict[str, Any] = {name: SecretStr("") for name in SECRET_FIELDS}
        # Storage options hold a service principal's secret and Spark confs account keys: neither
        # travels in a closure (executors read the options from LAKE_STORAGE_OPTIONS_ENV).
        view = self.model_copy(update={**blanks, "lake_storage_options": {}, "spark_conf": {}})
        view._executor_blob = ExecutorBlobAccess.of(self)
        view._executor_storage_env = bool(self.lake_storage_options)
        return view

    def storage_options(self) -> dict[str, str]:
        """delta-rs's storage options: the setting on the driver, the environment on an executor."""
        if not self._executor_storage_env:
            return dict(self.lake_storage_options)
        raw = executor_environment(LAKE_STORAGE_OPTIONS_ENV, "lake storage options")
        return {str(k): str(v) for k, v in json.loads(raw).items()}

    def events_url(self) -> str:
        """The handler's Event Grid webhook on this machine."""
        return f"http://{self.handler_host}:{self.handler_port}/api/events"

    def event_secret(self, *, bind_host: str | None = None) -> str:
        """The webhook's shared key, checked by :func:`_shared_key` (pass the bind address when serving)."""
        return _shared_key(self, self.event_key, DEFAULT_EVENT_KEY, "event key", "LAKESIGHT_EVENT_KEY", bind_host)

    def event_secrets(self, *, bind_host: str | None = None) -> tuple[str, ...]:
        """The event keys the webhook accepts: the current one, and the next one during a rotation
        (checked by the same rules)."""
        current = self.event_secret(bind_host=bind_host)
        if not self.event_key_next.get_secret_value():
            return (current,)
        upcoming = _shared_key(
            self, self.event_key_next, DEFAULT_EVENT_KEY, "next event key", "LAKESIGHT_EVENT_KEY_NEXT", bind_host
        )
        return (current, upcoming)

    def label_studio_secret(self) -> str:
        """The Label Studio admin password, under the rules of :func:`_shared_key` (loopback only locally)."""
        return _shared_key(
            self,
            self.label_studio_password,
            DEFAULT_LABEL_STUDIO_PASSWORD,
            "Label Studio password",
            "LAKESIGHT_LABEL_STUDIO_PASSWORD",
            None,
        )

    def model_secret(self, *, bind_host: str | None = None) -> str:
        """The model server's API key, checked by :func:`_shared_key` (pass the bind address when serving)."""
        return _shared_key(
            self, self.model_api_key, DEFAULT_MODEL_API_KEY, "model API key", "LAKESIGHT_MODEL_API_KEY", bind_host
        )

    # Serialised forms --------------------------------------------------------------------------
    def public_dict(self) -> dict[str, Any]:
        """Settings as plain values with secrets masked, for printing and logging (infra.redaction:
        the secret fields, secret-named storage options and Spark confs, credentials in URLs)."""
        from infra.redaction import MASK, redact

        out: dict[str, Any] = redact(self.model_dump(mode="json"))
        for name in SECRET_FIELDS:
            out[name] = MASK
        return out

    def to_env(self, *, secrets: bool = True, only: tuple[str, ...] | None = None) -> dict[str, str]:
        """``LAKESIGHT_*`` variables that rebuild these settings in a child process.

        ``secrets=False`` leaves the secret fields out (a job definition others can read);
        ``only`` limits the variables to those fields.
        """
        env = {}
        for name, value in self.model_dump(mode="python").items():
            if value is None or (only is not None and name not in only):
                continue  # the child's default is None too; "None" would not parse
            if name in SECRET_FIELDS:
                if not secrets:
                    continue
                value = value.get_secret_value()
            if isinstance(value, dict | list):
                value = json.dumps(value)
            env[f"LAKESIGHT_{name.upper()}"] = str(value)
        return env


def _shared_key(
    settings: Settings, secret: SecretStr, default: str, what: str, variable: str, bind_host: str | None
) -> str:
    """A service's shared key. Azure mode, and local mode on a bind others can reach, refuse an
    empty key (authentication off), the published default and a short (guessable) one; only local
    mode on a loopback bind takes them (``bind_host`` None: a client of the key, not a server)."""
    key = secret.get_secret_value()
    if settings.mode != "local":
        refusal = weak_key_reason(key, default, what, variable)
        if refusal:
            raise SettingsError(f"mode=azure {refusal}")
    elif bind_host is not None and not is_loopback(bind_host):
        refusal = weak_key_reason(key, default, what, variable)
        if refusal:
            raise SettingsError(
                f"a bind on {bind_host!r} {refusal}; an empty or default key is allowed only on a loopback bind "
                "(127.0.0.1)"
            )
    return key


def weak_key_reason(key: str, default: str, what: str, variable: str) -> str | None:
    """Why ``key`` cannot guard a service others can reach, or None."""
    if not key:
        return f"needs a {what}: {variable} is empty"
    if key == default:
        return f"refuses the default {what}: set {variable}"
    if len(key) < MIN_EVENT_KEY_CHARS:
        return f"needs a {what} of at least {MIN_EVENT_KEY_CHARS} characters ({variable})"
    return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once); invalid ones are a one-line :class:`SettingsError`."""
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError, or a missing config file
        raise SettingsError(f"invalid settings: {_one_line(exc)}") from exc


def _one_line(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}" for e in errors()
        )
    return str(exc)
