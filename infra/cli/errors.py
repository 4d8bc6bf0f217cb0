"""Every lakesight error in one place: the catalogue a reader scans and a caller catches from.

Each error is defined beside the code that raises it, under the one root ``LakesightError``
(``infra/errors.py``); this module only re-exports them. It sits in the composition root because
it imports every peer; ``tests/infra/cli/test_errors.py`` fails when an error is missing here.
The CLI prints any of them as one line (``infra/cli/_output.py``), also when a Spark task raised it.
"""

from handlers.api.payloads import PayloadError
from handlers.api.safe_json import UntrustedJSONError
from handlers.intake.blob_created import Refused as BlobEventRefused
from handlers.intake.label_exports import ExportError, ExportTooLarge
from handlers.intake.service import LanesFull
from infra.arrivals import ArrivalsError
from infra.blob import StorageUnavailable
from infra.blob_names import BlobNameError, BlobUrlError
from infra.core.labeling.label_studio import LabelStudioError
from infra.errors import ExecutorError, LakesightError, SettingsError, UsageError
from infra.filesystem import FilesError
from infra.iac import SpecError
from infra.images import ImageRefused
from infra.jvm import JarsMissing
from infra.lake import LakeError
from infra.local.demo import DemoError
from infra.local.stack import StackError
from infra.registry import RegistryError, RegistryUnreachable
from infra.web import RequestRefused
from streams.checkpoint.names import CheckpointError
from streams.ingest import IngestError
from streams.scoring.pool import ScoringPoolError
from streams.scoring.query import ScoreError
from streams.scoring.sources import SourceError
from training.bench.processes import WorkerDiedError
from training.data.feed import TrainingDataError
from training.model.models import ModelError
from training.packaging import PackagingError
from training.run.distributed import DistributedError
from training.run.search import SearchError
from training.run.strategy import LegacyStackMissing
from training.run.worker import WorkerError

__all__ = [
    "ArrivalsError",
    "BlobEventRefused",
    "BlobNameError",
    "BlobUrlError",
    "CheckpointError",
    "DemoError",
    "DistributedError",
    "ExecutorError",
    "ExportError",
    "ExportTooLarge",
    "FilesError",
    "ImageRefused",
    "IngestError",
    "JarsMissing",
    "LabelStudioError",
    "LakeError",
    "LakesightError",
    "LanesFull",
    "LegacyStackMissing",
    "ModelError",
    "PackagingError",
    "PayloadError",
    "RegistryError",
    "RegistryUnreachable",
    "RequestRefused",
    "ScoreError",
    "ScoringPoolError",
    "SearchError",
    "SettingsError",
    "SourceError",
    "SpecError",
    "StackError",
    "StorageUnavailable",
    "TrainingDataError",
    "UntrustedJSONError",
    "UsageError",
    "WorkerDiedError",
    "WorkerError",
]
