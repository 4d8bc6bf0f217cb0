"""What the scoring executors read of the configuration: a frozen view built on the driver.

The view is pickled into every task closure (the row mappers, the SQL functions), so it holds
only the dozen fields executor code reads and no secret: blob storage is reached through
:class:`infra.settings.ExecutorBlobAccess` (Azurite's public key derived again, any other
connection string from the executor's environment). The driver keeps the whole settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.settings import ExecutorBlobAccess, Settings
from streams.file_rows import FileChecks


@dataclass(frozen=True)
class ScoringConfig:
    """The executors' configuration: the model to score with, the file checks, the blob fetch."""

    model_name: str
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    champion_check_s: float  # how often a worker asks which version the alias names
    score_tf_threads: int
    shadow_fraction: float
    checks: FileChecks
    images_container: str
    blob_retry_s: float
    blob_fetch_threads: int
    blob_access: ExecutorBlobAccess

    @classmethod
    def of(cls, settings: Settings) -> ScoringConfig:
        return cls(
            model_name=settings.model_name,
            mlflow_tracking_uri=settings.mlflow_tracking_uri,
            mlflow_artifact_root=settings.mlflow_artifact_root,
            champion_check_s=settings.champion_check_s,
            score_tf_threads=settings.score_tf_threads,
            shadow_fraction=settings.shadow_fraction,
            checks=FileChecks.of(settings),
            images_container=settings.images_container,
            blob_retry_s=settings.blob_retry_s,
            blob_fetch_threads=settings.blob_fetch_threads,
            blob_access=ExecutorBlobAccess.of(settings),
        )

    @property
    def max_image_bytes(self) -> int:
        return self.checks.max_bytes

    def blob_connection(self) -> str:
        return self.blob_access.connection()
