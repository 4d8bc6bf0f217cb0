"""Blob storage (Azurite locally, an Azure Storage account at scale) and blob-name safety."""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from infra.errors import LakesightError
from infra.settings import Settings

MAX_BLOB_NAME = 1024


class BlobNameError(LakesightError, ValueError):
    """A blob name that lakesight refuses to read or write."""


def validate_blob_name(name: str) -> str:
    """Return ``name`` if it is a safe relative blob name, else raise :class:`BlobNameError`.

    Refused: empty names, absolute paths, ``..`` or ``.`` segments, backslashes, control
    characters and names longer than Azure's 1,024 characters.
    """
    if not name:
        raise BlobNameError("blob name is empty")
    if len(name) > MAX_BLOB_NAME:
        raise BlobNameError(f"blob name is {len(name)} characters long (limit {MAX_BLOB_NAME})")
    bad = [c for c in name if unicodedata.category(c) in ("Cc", "Cf")]
    if bad:
        raise BlobNameError(f"blob name {name!r} contains control characters")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise BlobNameError(f"blob name {name!r} is an absolute path")
    if "\\" in name:
        raise BlobNameError(f"blob name {name!r} contains a backslash")
    parts = name.split("/")
    if any(p in ("..", ".") for p in parts):
        raise BlobNameError(f"blob name {name!r} contains a '.' or '..' segment")
    if any(p == "" for p in parts):
        raise BlobNameError(f"blob name {name!r} contains an empty segment")
    return name


def split_blob_url(url: str) -> tuple[str, str]:
    """``(container, blob_name)`` of a blob URL, for Azurite (account in the path) or Azure."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise BlobNameError(f"{url!r} is not an http(s) blob URL")
    parts = unquote(parsed.path).lstrip("/").split("/")
    # Azurite and other emulators put the account name first in the path.
    if parsed.hostname in ("127.0.0.1", "localhost") or (parsed.hostname or "").startswith("azurite"):
        parts = parts[1:]
    if len(parts) < 2:
        raise BlobNameError(f"{url!r} names no blob inside a container")
    return parts[0], validate_blob_name("/".join(parts[1:]))


class BlobStore:
    """Thin wrapper over ``azure-storage-blob`` bound to one account."""

    def __init__(self, settings: Settings):
        from azure.storage.blob import BlobServiceClient

        self.settings = settings
        self.service = BlobServiceClient.from_connection_string(settings.blob_connection())

    def containers(self) -> list[str]:
        s = self.settings
        return [s.images_container, s.labeling_container, s.exports_container]

    def ensure_containers(self, names: list[str] | None = None) -> None:
        from azure.core.exceptions import ResourceExistsError

        for name in names or self.containers():
            with contextlib.suppress(ResourceExistsError):
                self.service.create_container(name)

    def url(self, container: str, name: str) -> str:
        return self.service.get_blob_client(container, name).url

    def upload(self, container: str, name: str, data: bytes, *, content_type: str | None = None) -> str:
        from azure.storage.blob import ContentSettings

        validate_blob_name(name)
        client = self.service.get_blob_client(container, name)
        settings = ContentSettings(content_type=content_type) if content_type else None
        client.upload_blob(data, overwrite=True, content_settings=settings)
        return client.url

    def upload_file(self, container: str, name: str, path: Path) -> str:
        return self.upload(container, name, path.read_bytes(), content_type=guess_content_type(name))

    def download(self, container: str, name: str) -> bytes:
        return self.service.get_blob_client(container, validate_blob_name(name)).download_blob().readall()

    def list(self, container: str, prefix: str | None = None) -> Iterator[object]:
        return iter(self.service.get_container_client(container).list_blobs(name_starts_with=prefix))


def guess_content_type(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return {
        "png": "image/png",
        "jpg": "image/jpeg",
        "jpeg": "image/jpeg",
        "gif": "image/gif",
        "bmp": "image/bmp",
        "webp": "image/webp",
        "json": "application/json",
        "jsonl": "application/x-ndjson",
    }.get(suffix, "application/octet-stream")
