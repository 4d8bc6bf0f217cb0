"""``lakesight featurize``: the embeddings of any images, written to a Delta table of their own.

The images come from a local folder (recursive; the files the scoring stream would read: the same
glob and hidden-name rules, links and special files refused unread), a blob container
(``container:NAME[/PREFIX]``) or a lake table with ``path`` and ``content`` columns (``images``).
They are run through the champion or a given registered version in batches and MERGEd on
``path`` into a table of :func:`infra.tables.embeddings_spec`, a few batches per commit, so memory
stays bounded and a second run updates rows instead of adding them. A file that cannot be read or
decoded becomes a row with ``error`` set; it never stops the run. No Spark: one process, one model.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from infra.blob import STORAGE_UNAVAILABLE, GiveUp, StorageUnavailable, is_transient, with_retries
from infra.blob_names import BlobNameError, blob_ref, validate_container_name
from infra.errors import UsageError
from infra.images import IMAGE_GLOB, content_hash, glob_matcher
from infra.lake import Lake, from_source
from infra.locations import local_path
from infra.registry import Classifier, RegistryError, load_classifier, registry_exists, versions
from infra.settings import Settings
from infra.tables import EMBEDDING, TABLES, TS, TableSpec, embeddings_spec
from streams.file_rows import FileChecks, checked_bytes
from streams.scoring.fetch import BlobFetcher
from streams.watched_folder import visible_files

FOLDER, CONTAINER, TABLE = "folder", "container", "table"
CONTAINER_PREFIX = "container:"
DEFAULT_BATCH = 256
# Rows (embeddings, not image bytes: ~0.6 KB each) collected before one MERGE commit.
FLUSH_ROWS = 2048
NO_TABLE_BYTES = "no image bytes in the table row"
TABLE_COLUMNS = ("path", "content")
# A table name is a folder under the lake root.
_TABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")
_OWN_TABLES = frozenset(spec.name.lower() for spec in TABLES)


@dataclass(frozen=True)
class ImageSource:
    """Where the images come from: a folder, a blob container (and name prefix) or a lake table."""

    kind: str
    location: str  # absolute folder path, container name or table name
    prefix: str = ""

    def __str__(self) -> str:
        if self.kind == CONTAINER:
            return f"{CONTAINER_PREFIX}{self.location}" + (f"/{self.prefix}" if self.prefix else "")
        return self.location if self.kind == FOLDER else f"table:{self.location}"


@dataclass(frozen=True)
class Item:
    """One image to featurize: its row key, its bytes, or why it has none usable."""

    path: str
    data: bytes | None
    error: str | None


@dataclass
class FeaturizeReport:
    """What a run did; ``as_dict`` is the command's JSON summary."""

    table: str
    source: str
    model_name: str
    model_version: str
    dims: int
    rows: int = 0
    errors: int = 0
    inserted: int = 0
    updated: int = 0
    commits: int = 0
    table_version: int | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


# Checks before any work --------------------------------------------------------------------------
def output_spec(lake: Lake, name: str) -> TableSpec:
    """The spec of the table ``--out`` names; refused when it is lakesight's own or another kind of table."""
    if not _TABLE_NAME.fullmatch(name):
        raise UsageError(f"--out {name!r} is not a table name: letters, digits, '_' and '-' (at most 128)")
    if name.lower() in _OWN_TABLES:
        own = ", ".join(sorted(_OWN_TABLES))
        raise UsageError(f"--out {name!r} is one of lakesight's own tables ({own}): choose another name")
    if lake.exists(name):
        present = {field.name for field in lake.table(name).schema().fields}
        if not {"path", "embedding"} <= present:
            raise UsageError(f"table {name!r} exists and is not an embeddings table (it has no path and embedding)")
    return embeddings_spec(name)


def resolve_source(lake: Lake, source: str) -> ImageSource:
    """What SOURCE names: ``container:NAME[/PREFIX]``, a lake table, else a local folder."""
    if source.startswith(CONTAINER_PREFIX):
        name, _, prefix = source.removeprefix(CONTAINER_PREFIX).partition("/")
        validate_container_name(name)  # BlobNameError: one line
        return ImageSource(CONTAINER, name, prefix)
    if _TABLE_NAME.fullmatch(source) and lake.exists(source):
        _check_table_columns(lake, source)
        return ImageSource(TABLE, source)
    folder = local_path(source)
    if folder is not None and folder.is_dir():
        return ImageSource(FOLDER, str(folder.absolute()))
    if folder is None:
        raise UsageError(f"{source!r}: blob storage is read as {CONTAINER_PREFIX}NAME[/PREFIX] (a container)")
    tables = ", ".join(lake.table_names()) or "none"
    raise UsageError(
        f"source {source!r} does not exist: not a folder, a lake table (the lake has: {tables}) "
        f"or {CONTAINER_PREFIX}NAME[/PREFIX]"
    )


def _check_table_columns(lake: Lake, name: str) -> None:
    present = {field.name for field in lake.table(name).schema().fields}
    missing = [column for column in TABLE_COLUMNS if column not in present]
    if missing:
        raise UsageError(f"table {name!r} has no {' or '.join(missing)} column: featurize reads path and content")


def load_embedder(settings: Settings, version: str | None = None) -> tuple[Classifier, str]:
    """The champion (or ``version``) of the registered model, refused unless it has embeddings."""
    name = settings.model_name
    if not registry_exists(settings):
        raise RegistryError(f"no model registry at {settings.mlflow_tracking_uri}: run 'lakesight train' first")
    if version is not None:
        known = [row.version for row in versions(settings)]
        if str(version) not in known:
            listed = ", ".join(known) or "none"
            raise RegistryError(f"model {name!r} has no version {version} (versions: {listed})")
    classifier, loaded = load_classifier(settings, version)
    if getattr(classifier, "embedding_dims", None) is None:
        raise RegistryError(
            f"version {loaded} of model {name!r} has no embeddings (its output is not a Dense layer named "
            "'probabilities'): featurize needs a model trained by 'lakesight train'"
        )
    return classifier, loaded


# Reading the images --------------------------------------------------------------------------------
def source_items(
    settings: Settings, source: ImageSource, *, glob: str = IMAGE_GLOB, batch: int = DEFAULT_BATCH
) -> Iterator[Item]:
    """Every image of ``source`` as an :class:`Item`, read lazily (bounded memory).

    A container is checked here, at once (:class:`UsageError` when it does not exist); the images
    are read only as the iterator is consumed.
    """
    if source.kind == FOLDER:
        return _folder_items(settings, Path(source.location), glob)
    if source.kind == CONTAINER:
        return _container_items(settings, source, glob, batch)
    return _table_items(settings, source.location, batch)


def _folder_items(settings: Settings, folder: Path, glob: str) -> Iterator[Item]:
    matches = glob_matcher(glob)
    checks = FileChecks.of(settings)
    for path, name in visible_files(folder):
        if matches(name):
            key = f"file:{path}"  # the ``images`` spelling of a local file (``normalise_path``)
            data, error = checked_bytes(key, None, checks, decode=False)
            yield Item(key, data, error)


def _table_items(settings: Settings, name: str, batch: int) -> Iterator[Item]:
    checks = FileChecks.of(settings)
    dataset = Lake(settings).table(name).to_pyarrow_dataset()
    for record_batch in dataset.to_batches(
        columns=list(TABLE_COLUMNS), batch_size=batch, batch_readahead=1, fragment_readahead=1
    ):
        for path, data in zip(*(record_batch.column(c).to_pylist() for c in TABLE_COLUMNS), strict=True):
            if path is None:
                continue  # no key to write it under
            if data is None:  # never read from disk here: the table is the source
                yield Item(path, None, NO_TABLE_BYTES)
                continue
            content, error = checked_bytes(path, data, checks, decode=False)
            yield Item(path, content, error)


def _container_items(settings: Settings, source: ImageSource, glob: str, batch: int) -> Iterator[Item]:
    fetcher = BlobFetcher(settings)
    container = fetcher.service.get_container_client(source.location)
    if not with_retries(container.exists, budget_s=settings.blob_retry_s):
        raise UsageError(f"blob container {source.location!r} does not exist")
    return _container_blobs(settings, fetcher, container, source.prefix, glob, batch)


def _container_blobs(
    settings: Settings, fetcher: BlobFetcher, container: Any, prefix: str, glob: str, batch: int
) -> Iterator[Item]:
    matches = glob_matcher(glob)
    checks = FileChecks.of(settings)
    give_up = GiveUp()  # one download giving up on storage fails the run at once

    def fetch(blob: Any) -> Item:
        url = container.get_blob_client(blob.name).url
        try:
            ref = blob_ref(url, account_url=fetcher.account_url)
        except BlobNameError as exc:
            return Item(url, None, f"refused blob name: {exc}")
        if blob.size is not None and blob.size > checks.max_bytes:
            return Item(ref.url, None, f"too large: {blob.size} bytes (limit {checks.max_bytes})")
        data, error = fetcher.download(ref, give_up)
        if error is None:
            data, error = checked_bytes(ref.url, data, checks, decode=False)
        return Item(ref.url, data, error)

    listed = (b for b in _listed(container, prefix) if matches(posixpath.basename(b.name)))
    with ThreadPoolExecutor(settings.blob_fetch_threads) as pool:
        for chunk in chunked(listed, batch):
            yield from pool.map(fetch, chunk)


def _listed(container: Any, prefix: str) -> Iterator[Any]:
    """The container's blobs under ``prefix``; an outage mid-listing is :class:`StorageUnavailable`."""
    try:
        yield from container.list_blobs(name_starts_with=prefix or None)
    except Exception as exc:
        if is_transient(exc):
            raise StorageUnavailable(f"{STORAGE_UNAVAILABLE} while listing: {exc}".splitlines()[0][:300]) from exc
        raise


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# Featurizing ---------------------------------------------------------------------------------------
def featurized_rows(classifier: Classifier, items: Sequence[Item], *, model_name: str, model_version: str) -> pa.Table:
    """One output row per item: the embedding and prediction, or the reason there is none."""
    errors = [item.error for item in items]  # an item without one has non-empty bytes (``image_error``)
    good = [i for i, error in enumerate(errors) if error is None]
    result = classifier.classify([items[i].data for i in good]) if good else None
    labels: list[str | None] = [None] * len(items)
    confidence: list[float | None] = [None] * len(items)
    vectors: list[Any] = [None] * len(items)
    if result is not None:
        for row, label, score, vector, error in zip(
            good, result["label"], result["confidence"], result["embedding"], result["error"], strict=True
        ):
            if error is not None:
                errors[row] = error
                continue
            labels[row], confidence[row], vectors[row] = label, float(score), vector
    now = dt.datetime.now(dt.UTC)
    return pa.table(
        {
            "path": pa.array([item.path for item in items], pa.string()),
            "content_hash": [content_hash(item.data) if item.data else None for item in items],
            "embedding": pa.array(vectors, EMBEDDING),
            "predicted_label": pa.array(labels, pa.string()),
            "confidence": pa.array(confidence, pa.float64()),
            "model_name": [model_name] * len(items),
            "model_version": [model_version] * len(items),
            "featurized_at": pa.array([now] * len(items), TS),
            "error": pa.array(errors, pa.string()),
        }
    )


class _Writer:
    """Collects output rows and MERGEs them on ``path``, one commit per ``flush_rows`` rows."""

    def __init__(self, lake: Lake, spec: TableSpec, report: FeaturizeReport, flush_rows: int):
        self.lake, self.spec, self.report, self.flush_rows = lake, spec, report, flush_rows
        self.update = from_source(f.name for f in spec.schema if f.name not in spec.keys)
        self.pending: list[pa.Table] = []

    def add(self, rows: pa.Table) -> bool:
        """Take ``rows``; True when this made a commit."""
        self.pending.append(rows)
        if sum(t.num_rows for t in self.pending) < self.flush_rows:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        if not self.pending:
            return
        rows = _last_per_path(pa.concat_tables(self.pending))
        self.pending = []
        outcome = self.lake.merge(self.spec, rows, update=self.update)
        self.report.inserted += outcome.inserted
        self.report.updated += outcome.updated
        self.report.commits += 0 if outcome.skipped else 1
        self.report.table_version = outcome.version


def _last_per_path(rows: pa.Table) -> pa.Table:
    """``rows`` with one row per path (the last): a MERGE refuses a source with a key twice."""
    last = {path: index for index, path in enumerate(rows.column("path").to_pylist())}
    return rows if len(last) == rows.num_rows else rows.take(sorted(last.values()))


def featurize(
    settings: Settings,
    source: str,
    out: str,
    *,
    version: str | None = None,
    batch: int = DEFAULT_BATCH,
    glob: str = IMAGE_GLOB,
    flush_rows: int = FLUSH_ROWS,
    on_progress: Callable[[FeaturizeReport], None] | None = None,
) -> FeaturizeReport:
    """Write the embeddings of ``source``'s images into the lake table ``out`` (MERGE on path).

    Everything that can be refused is refused before the model runs: ``out`` (lakesight's own
    tables, another kind of table), ``source``, ``version`` and a model without embeddings.
    ``on_progress`` gets the report after every commit.
    """
    started = time.perf_counter()
    if batch < 1:
        raise UsageError(f"--batch must be at least 1, not {batch}")
    lake = Lake(settings)
    spec = output_spec(lake, out)
    image_source = resolve_source(lake, source)
    if image_source.kind == TABLE and image_source.location.lower() == spec.name.lower():
        raise UsageError(f"--out {out!r} is the source table: write the embeddings to another table")
    images = source_items(settings, image_source, glob=glob, batch=batch)  # a missing container: refused here
    classifier, loaded = load_embedder(settings, version)
    report = FeaturizeReport(
        spec.name, str(image_source), settings.model_name, loaded, int(classifier.embedding_dims or 0)
    )
    lake.ensure(spec)
    writer = _Writer(lake, spec, report, max(flush_rows, 1))
    for items in chunked(images, batch):
        rows = featurized_rows(classifier, items, model_name=settings.model_name, model_version=loaded)
        report.rows += rows.num_rows
        report.errors += rows.num_rows - rows.column("error").null_count
        if writer.add(rows) and on_progress is not None:
            report.seconds = time.perf_counter() - started
            on_progress(report)
    writer.flush()
    report.seconds = time.perf_counter() - started
    return report
