"""Blob names and URLs as pure rules: which names are safe, the one canonical form of a blob reference,
and the storage folders Spark's Hadoop connector and the Blob API both reach.

Nothing here talks to storage or reads settings, so the settings' validators and every peer can
use it; the client, its retries and what counts as an outage are :mod:`infra.blob`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from infra.errors import LakesightError

MAX_BLOB_NAME = 1024
CONTAINER_NAME_RULE = "3-63 lowercase letters, digits, '-'"
DEFAULT_PORTS = {"http": 80, "https": 443}
# Emulators (Azurite) serve path-style URLs: http://127.0.0.1:10000/<account>/<container>/<name>.
_EMULATOR_HOSTS = ("127.0.0.1", "localhost", "::1")


class BlobNameError(LakesightError, ValueError):
    """A blob name that lakesight refuses to read or write."""


class BlobUrlError(BlobNameError):
    """A blob URL that cannot be brought to canonical form (or names another account)."""


def _control_characters(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cf") for c in text)


def validate_blob_name(name: str) -> str:
    """Return ``name`` if it is a safe relative blob name, else raise :class:`BlobNameError`.

    Refused: empty names, absolute paths, ``..`` or ``.`` segments, backslashes, control
    characters and names longer than Azure's 1,024 characters.
    """
    if not name:
        raise BlobNameError("blob name is empty")
    if len(name) > MAX_BLOB_NAME:
        raise BlobNameError(f"blob name is {len(name)} characters long (limit {MAX_BLOB_NAME})")
    if _control_characters(name):
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


def validate_container_name(name: str) -> str:
    """Return ``name`` if Azure accepts it as a container name, else raise :class:`BlobNameError`.

    3-63 lower-case letters, digits and single hyphens, starting and ending with a letter or
    digit: the rule of the settings' container names and of every container a command is given.
    """
    ok = 3 <= len(name) <= 63 and name.replace("-", "").isalnum() and name.isascii() and name == name.lower()
    if not ok or name.startswith("-") or name.endswith("-") or "--" in name:
        raise BlobNameError(f"{name!r} is not a valid blob container name ({CONTAINER_NAME_RULE})")
    return name


@dataclass(frozen=True)
class BlobRef:
    """One blob of one account in canonical form; ``url`` is what lakesight stores and compares."""

    scheme: str
    netloc: str  # lower-case host (dfs endpoint mapped to blob), port only when not the default
    account: str  # the account segment of a path-style (emulator) URL; "" on Azure hosts
    container: str
    name: str

    @property
    def account_url(self) -> str:
        account = f"{quote(self.account, safe='')}/" if self.account else ""
        return f"{self.scheme}://{self.netloc}/{account}"

    @property
    def url(self) -> str:
        # The SDK's own quoting (``BlobClient.url``), so its URLs are already canonical.
        return f"{self.account_url}{quote(self.container, safe='')}/{quote(self.name, safe='/')}"


@dataclass(frozen=True)
class _Parsed:
    scheme: str
    host: str
    netloc: str
    segments: list[str]  # the decoded path, split at "/"


def _shown(url: str) -> str:
    """``url`` for a message, as sent but without userinfo, query (a SAS token) or fragment."""
    text = url.partition("?")[0].partition("#")[0]
    scheme, sep, rest = text.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        text = f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"
    return repr(text[:300])


def _parse(url: object) -> _Parsed:
    """Scheme, canonical host and decoded path segments of ``url``; refuses what would be lost.

    ``urlsplit`` silently removes TAB/LF/CR and leading or trailing spaces, and ``unquote``
    replaces bytes that are not UTF-8: such a URL is refused instead, so nothing is dropped.
    """
    if not isinstance(url, str) or not url:
        raise BlobUrlError("blob url is empty")
    if _control_characters(url) or url != url.strip():
        raise BlobUrlError(f"blob url {_shown(url)} contains control characters or surrounding spaces")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BlobUrlError(f"{_shown(url)} is not an http(s) blob url")
    try:
        port = parts.port
    except ValueError as exc:
        raise BlobUrlError(f"{_shown(url)} has an invalid port") from exc
    # ADLS Gen2 names the dfs endpoint of the same account; blobs are read from the blob endpoint.
    host = (parts.hostname or "").replace(".dfs.core.", ".blob.core.")
    if not host:
        raise BlobUrlError(f"{_shown(url)} names no host")
    bracketed = f"[{host}]" if ":" in host else host  # IPv6
    netloc = bracketed if port in (None, DEFAULT_PORTS[scheme]) else f"{bracketed}:{port}"
    try:
        path = unquote(parts.path, errors="strict")
    except UnicodeDecodeError as exc:
        raise BlobUrlError(f"{_shown(url)} is not UTF-8 once its %-escapes are decoded") from exc
    if _control_characters(path):
        raise BlobUrlError(f"{_shown(url)} contains control characters once its %-escapes are decoded")
    return _Parsed(scheme, host, netloc, path.removeprefix("/").split("/") if path else [])


def _looks_path_style(host: str) -> bool:
    return host in _EMULATOR_HOSTS or host.startswith("azurite")


def _account_rules(parsed: _Parsed, account_url: str | None) -> tuple[str, bool, tuple[str, str] | None]:
    """``(scheme, path-style?, the (netloc, account) the URL must name)`` for a URL of ``account_url``.

    The configured account decides whether the account sits in the path and which scheme is
    canonical; with none, emulator hosts are path-style and keep their scheme, Azure hosts get https.
    """
    if account_url is None:
        path_style = _looks_path_style(parsed.host)
        return (parsed.scheme if path_style else "https"), path_style, None
    base = _parse(account_url)
    base_segments = [s for s in base.segments if s]
    return base.scheme, bool(base_segments), (base.netloc, base_segments[0] if base_segments else "")


def blob_ref(url: str, *, account_url: str | None = None) -> BlobRef:
    """The canonical form of the blob ``url`` names: the one place blob references are canonicalised.

    Variants of one upload's URL (userinfo, http or https, upper-case host, a SAS query, a
    fragment, %-escapes, the dfs endpoint) give one :class:`BlobRef`; the path is decoded once and
    re-encoded as the SDK encodes it. With ``account_url`` (the configured account), the URL must
    name that account and takes its scheme; without, Azure hosts get https. Emulator URLs keep
    their account segment. :class:`BlobUrlError` (or :class:`BlobNameError`) for what cannot be
    canonicalised: control characters, empty container or name, ``..`` segments.
    """
    parsed = _parse(url)
    scheme, path_style, expected = _account_rules(parsed, account_url)
    account, segments = "", parsed.segments
    if path_style:
        account, segments = (segments[0], segments[1:]) if segments else ("", [])
    if expected is not None and (parsed.netloc, account) != expected:
        raise BlobUrlError(f"{_shown(url)} is outside the configured storage account")
    if len(segments) < 2 or segments[0] in ("", ".", "..") or (path_style and not account):
        raise BlobUrlError(f"{_shown(url)} names no blob inside a container")
    try:
        name = validate_blob_name("/".join(segments[1:]))
    except BlobNameError as exc:
        raise BlobUrlError(f"{_shown(url)}: {exc}") from exc
    return BlobRef(scheme, parsed.netloc, account, segments[0], name)


def canonical_blob_url(url: str, *, account_url: str | None = None) -> str:
    """The canonical URL of ``url`` (see :func:`blob_ref`): the dedupe key and the ``images`` row key."""
    return blob_ref(url, account_url=account_url).url


# A folder of an Azure storage account as Spark's Hadoop connectors name it (ADLS Gen2 or WASB).
HADOOP_STORAGE_URI = re.compile(
    r"(?P<scheme>abfss?|wasbs?)://(?P<container>[a-z0-9-]+)@(?P<account>[^./@]+)\.(?:dfs|blob)\.[^/]+(?:/(?P<path>.*))?"
)
HADOOP_STORAGE_FORM = "abfss://<container>@<account>.dfs.core.windows.net/<folder> (or wasbs://…blob…)"


@dataclass(frozen=True)
class StorageFolder:
    """A folder in a storage account's container, named the way Spark reads it (``abfss://``)."""

    account: str
    container: str
    prefix: str  # "" for the container's root, else ends with "/"

    def blob_name(self, name: str) -> str:
        return validate_blob_name(f"{self.prefix}{name}")


def storage_folder(uri: str) -> StorageFolder:
    """The account, container and folder of an ``abfss://``/``wasbs://`` URI; :class:`BlobUrlError` otherwise."""
    match = HADOOP_STORAGE_URI.fullmatch(uri)
    if match is None:
        raise BlobUrlError(f"{_shown(uri)} is not of the form {HADOOP_STORAGE_FORM}")
    container = validate_container_name(match["container"])
    path = (match["path"] or "").strip("/")
    prefix = f"{validate_blob_name(path)}/" if path else ""
    return StorageFolder(match["account"], container, prefix)


def split_blob_url(url: str) -> tuple[str, str]:
    """``(container, blob_name)`` of a blob URL, for Azurite (account in the path) or Azure."""
    ref = blob_ref(url)
    return ref.container, ref.name


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
