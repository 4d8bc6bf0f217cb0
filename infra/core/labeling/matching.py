"""Which image a label names: matched exactly through the hand-off ledger and ``images``, never guessed.

A labeler names an image the way the hand-off showed it: the copy's URL in the labeling container
(the manifest's ``image_url``), that copy as an Azure ML datastore path (``azureml://…/datastores/
<name>/paths/<blob>`` or ``AmlDatastore://<name>/<blob>``), its blob name in the labeling container,
the request's task id (the manifest's ``task_id``), or the source image itself (its blob URL or
``file:`` path). Each reference is brought to one canonical form (``infra.blob``) and looked up by
key: copies, task ids and file names in ``labeling_requests``, sources in ``images``. Nothing is
matched by a suffix: a URL of another account or container is simply not a key of either table.
A bare file name matches only a copy in the labeling container, and only when exactly one has it.

The lookups read only the rows they name (:meth:`Lake.lookup`: files are pruned by the key
column's statistics), never every path of ``images`` into memory.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from infra.blob import account_url
from infra.blob_names import BlobNameError, canonical_blob_url, validate_blob_name
from infra.lake import Lake
from infra.settings import Settings
from infra.tables import IMAGES, LABELING_REQUESTS, TableSpec

# The reasons an entry is not applied (the ``reason`` of a ``label_rejects`` row).
UNKNOWN_IMAGE = "unknown image"
AMBIGUOUS_NAME = "ambiguous file name"
OTHER_DATASTORE = "another datastore"
BAD_REFERENCE = "not an image reference"

# Ways of naming an image, in the order an entry's references are tried.
COPY = "copy"  # a blob of the labeling container (URL, datastore path or relative blob name)
TASK = "task"  # the hand-off's task id
NAME = "name"  # a bare file name: a copy's, when unique
SOURCE = "source"  # the image's own path in ``images`` (a blob URL or a file: path)

_AZUREML = re.compile(r"azureml://(?:[^?#]*/)?datastores/(?P<store>[^/]+)/paths/(?P<blob>[^?#]+)", re.IGNORECASE)
_AML_DATASTORE = re.compile(r"amldatastore://(?P<store>[^/]+)/(?P<blob>[^?#]+)", re.IGNORECASE)
LEDGER_COLUMNS = ["path", "image_url", "task_id", "image_name", "content_hash", "sent_at"]
IMAGE_COLUMNS = [
    "path",
    "load_date",
    "content_hash",
    "label",
    "label_source",
    "labeled_at",
    "labeled_content_hash",
]


@dataclass(frozen=True)
class Ref:
    """One reference of an entry in lookup form: ``kind`` (COPY, TASK, NAME, SOURCE) and its key."""

    kind: str
    key: str


@dataclass(frozen=True)
class Target:
    """The image a label is for, as ``images`` has it now, and the bytes the human saw."""

    path: str
    load_date: dt.date
    labeled_hash: str | None  # the content hash sent to labeling (or the image's, named by its source)
    current: dict[str, Any]  # the image's row now: IMAGE_COLUMNS


class Matcher:
    """Turns an entry's raw references into :class:`Ref` and finds their images, a batch at a time."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.labeling_prefix = _container_prefix(account_url(settings), settings.labeling_container)

    # Raw reference -> Ref -------------------------------------------------------------------------
    def ref(self, raw: str) -> Ref | str:
        """The lookup form of ``raw``, or the reason it cannot name an image."""
        if not isinstance(raw, str) or not raw.strip():
            return BAD_REFERENCE
        datastore = _AZUREML.fullmatch(raw) or _AML_DATASTORE.fullmatch(raw)
        if datastore is not None:
            if datastore["store"] != self.settings.labeling_datastore:
                return OTHER_DATASTORE
            return self._copy(unquote(datastore["blob"]))
        scheme = urlsplit(raw).scheme.lower()
        if scheme in ("http", "https"):
            try:
                url = canonical_blob_url(raw)
            except ValueError:
                return BAD_REFERENCE
            return Ref(COPY if url.startswith(self.labeling_prefix) else SOURCE, url)
        if scheme == "file":
            return Ref(SOURCE, raw)
        if raw.startswith("/"):
            return Ref(SOURCE, f"file:{raw}")
        if scheme:
            return BAD_REFERENCE
        return Ref(NAME, raw) if "/" not in raw else self._copy(raw)

    def _copy(self, blob: str) -> Ref | str:
        """A blob name inside the labeling container, as the copy's canonical URL."""
        try:
            name = validate_blob_name(blob)
        except BlobNameError:
            return BAD_REFERENCE
        return Ref(COPY, canonical_blob_url(self.labeling_prefix + quote(name, safe="/")))

    # Refs -> images -------------------------------------------------------------------------------
    def resolve(self, lake: Lake, refs: list[list[Ref | str]]) -> list[Target | str]:
        """For each entry's references (tried in order), its :class:`Target` or why none was found."""
        ledger = _Ledger.read(lake, [r for entry in refs for r in entry if isinstance(r, Ref)])
        sources = [r.key for entry in refs for r in entry if isinstance(r, Ref) and r.kind == SOURCE]
        ledger.add_sent(lake, sources)
        images = _by_key(lake, IMAGES, "path", [*ledger.paths(), *sources], IMAGE_COLUMNS)
        return [self._one(entry, ledger, images) for entry in refs]

    def _one(self, entry: list[Ref | str], ledger: _Ledger, images: dict[str, list[dict[str, Any]]]) -> Target | str:
        reasons: list[str] = []
        for ref in entry:
            if isinstance(ref, str):
                reasons.append(ref)
                continue
            found = ledger.find(ref)
            if isinstance(found, str):
                reasons.append(found)
                continue
            path, sent_hash = found
            rows = images.get(path)
            if not rows:
                reasons.append(UNKNOWN_IMAGE)
                continue
            row = max(rows, key=lambda r: r["load_date"])  # a path once stored under two days: the newest
            return Target(path, row["load_date"], sent_hash or row["content_hash"], row)
        # The most telling reason: an ambiguous name or a foreign datastore says more than "unknown".
        for reason in (AMBIGUOUS_NAME, OTHER_DATASTORE, BAD_REFERENCE):
            if reason in reasons:
                return reason
        return UNKNOWN_IMAGE


class _Ledger:
    """The ledger rows an export's references name, looked up by key."""

    def __init__(self, rows: dict[str, dict[str, list[dict[str, Any]]]]):
        self.rows = rows  # column -> key -> ledger rows

    @classmethod
    def read(cls, lake: Lake, refs: list[Ref]) -> _Ledger:
        keys = {COPY: "image_url", TASK: "task_id", NAME: "image_name"}
        rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for kind, column in keys.items():
            wanted = [r.key for r in refs if r.kind == kind]
            rows[column] = _by_key(lake, LABELING_REQUESTS, column, wanted, LEDGER_COLUMNS)
        rows["path"] = {}
        return cls(rows)

    def add_sent(self, lake: Lake, paths: list[str]) -> None:
        """What the ledger sent of the images named by their source: the bytes the human was shown."""
        self.rows["path"] = _by_key(lake, LABELING_REQUESTS, "path", paths, LEDGER_COLUMNS)

    def paths(self) -> list[str]:
        return [row["path"] for column in self.rows.values() for rows in column.values() for row in rows]

    def find(self, ref: Ref) -> tuple[str, str | None] | str:
        """``(path, content hash sent)`` of ``ref``, or the reason there is none."""
        if ref.kind == SOURCE:
            sent = self.rows["path"].get(ref.key, [])
            return ref.key, _latest(sent)["content_hash"] if sent else None
        column = {COPY: "image_url", TASK: "task_id", NAME: "image_name"}[ref.kind]
        rows = self.rows[column].get(ref.key, [])
        if not rows:
            return UNKNOWN_IMAGE
        if ref.kind == NAME and len({r["image_url"] for r in rows}) > 1:
            return AMBIGUOUS_NAME
        row = _latest(rows)
        return row["path"], row["content_hash"]


def _latest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return max(rows, key=lambda r: r["sent_at"] or epoch)


def _by_key(lake: Lake, spec: TableSpec, column: str, keys: list[str], columns: list[str]) -> dict[str, list[dict]]:
    """Rows of ``spec`` whose ``column`` is one of ``keys``, grouped by it (:meth:`Lake.lookup`)."""
    grouped: dict[str, list[dict]] = {}
    for row in lake.lookup(spec, column, keys, columns).to_pylist():
        grouped.setdefault(row[column], []).append(row)
    return grouped


def _container_prefix(base_url: str, container: str) -> str:
    """The canonical URL prefix of ``container``'s blobs (``…/<container>/``)."""
    return canonical_blob_url(f"{base_url.rstrip('/')}/{container}/x")[: -len("x")]
