import pytest

from infra.blob import BlobStore
from infra.blob_names import (
    BlobNameError,
    BlobUrlError,
    blob_ref,
    canonical_blob_url,
    split_blob_url,
    validate_blob_name,
    validate_container_name,
)
from infra.settings import Settings

AZURE = "https://acct.blob.core.windows.net/"
AZURITE = "http://127.0.0.1:10000/devstoreaccount1/"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "a/../b",
        "../up",
        "./here",
        "a//b",
        "bad\x00name",
        "tab\there",
        "new\nline",
        "c:/windows",
        "back\\slash",
        "x" * 1025,
    ],
)
def test_unsafe_blob_names_are_refused(name: str) -> None:
    with pytest.raises(BlobNameError):
        validate_blob_name(name)


@pytest.mark.parametrize("name", ["a.png", "train/3/digit-0001.png", "odd name ü #1.png", "..dots-in-name.png"])
def test_ordinary_names_pass(name: str) -> None:
    assert validate_blob_name(name) == name


@pytest.mark.parametrize("name", ["Bad_Name", "ab", "x" * 64, "-lead", "trail-", "two--hyphens", "imagé", "a.b", ""])
def test_invalid_container_names_are_refused_by_the_one_rule(name: str) -> None:
    with pytest.raises(BlobNameError, match="not a valid blob container name"):
        validate_container_name(name)
    with pytest.raises(ValueError, match="not a valid blob container name"):  # the settings use the same rule
        Settings(images_container=name)


@pytest.mark.parametrize("name", ["images", "labeling-exports", "abc", "a1-b2", "x" * 63])
def test_valid_container_names_pass(name: str) -> None:
    assert validate_container_name(name) == name


def test_split_blob_url_handles_azurite_and_azure() -> None:
    assert split_blob_url("http://127.0.0.1:10000/devstoreaccount1/images/a/b%20c.png") == ("images", "a/b c.png")
    assert split_blob_url("https://acct.blob.core.windows.net/images/x.png") == ("images", "x.png")
    with pytest.raises(BlobNameError):
        split_blob_url("https://acct.blob.core.windows.net/images/../secrets")
    with pytest.raises(BlobNameError):
        split_blob_url("file:///etc/passwd")


@pytest.mark.parametrize(
    "variant",
    [
        "https://acct.blob.core.windows.net/images/dir/a%20b.png",
        "https://user:secret@acct.blob.core.windows.net/images/dir/a%20b.png",
        "http://acct.blob.core.windows.net/images/dir/a%20b.png",
        "https://ACCT.Blob.Core.Windows.NET:443/images/dir/a%20b.png",
        "https://acct.blob.core.windows.net/images/dir/a%20b.png?sv=2024&sig=abc%2Bdef",
        "https://acct.blob.core.windows.net/images/dir/a%20b.png#fragment",
        "https://acct.blob.core.windows.net/images/%64ir/%61 b.png",
        "https://acct.dfs.core.windows.net/images/dir/a%20b.png",
    ],
)
def test_variants_of_one_azure_blob_url_have_one_canonical_form(variant: str) -> None:
    canonical = "https://acct.blob.core.windows.net/images/dir/a%20b.png"
    assert canonical_blob_url(variant) == canonical
    assert canonical_blob_url(variant, account_url=AZURE) == canonical


@pytest.mark.parametrize(
    "variant",
    [
        "http://127.0.0.1:10000/devstoreaccount1/images/dir/a%20b.png",
        "http://user:pw@127.0.0.1:10000/devstoreaccount1/images/dir/a%20b.png?sv=1&sig=x#f",
        "HTTP://127.0.0.1:10000/devstoreaccount1/images/dir/a b.png",
        "http://127.0.0.1:10000/devstore%61ccount1/images/%64ir/a%20b.png",
    ],
)
def test_azurite_urls_keep_their_account_segment(variant: str) -> None:
    ref = blob_ref(variant, account_url=AZURITE)
    assert (ref.account, ref.container, ref.name) == ("devstoreaccount1", "images", "dir/a b.png")
    assert ref.url == "http://127.0.0.1:10000/devstoreaccount1/images/dir/a%20b.png"


def test_the_canonical_url_is_the_sdks_own() -> None:
    """URLs the SDK builds (uploads, the relay) are already canonical: existing row keys stay."""
    from azure.storage.blob import BlobServiceClient

    name = "odd/ü name #1 ~ 100%;x?y=z&a+b.png"
    local = Settings().blob_connection()
    for conn in (
        local,
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=YWJj;EndpointSuffix=core.windows.net",
    ):
        url = BlobServiceClient.from_connection_string(conn).get_blob_client("images", name).url
        assert canonical_blob_url(url) == url
        assert split_blob_url(url) == ("images", name)


def test_split_blob_url_drops_no_character() -> None:
    # urlparse cut ";x.png" off as "params" and silently removed TAB and LF.
    assert split_blob_url(f"{AZURITE}images/a;x.png") == ("images", "a;x.png")
    for raw in (f"{AZURITE}images/a\tb.png", f"{AZURITE}images/a\nb.png", f" {AZURITE}images/a.png"):
        with pytest.raises(BlobUrlError, match="control characters"):
            split_blob_url(raw)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"{AZURE}images/a%09b.png", "control characters"),
        (f"{AZURE}images/a%0Ab.png", "control characters"),
        (f"{AZURE}images/", "blob name is empty"),
        (f"{AZURE}images", "names no blob inside a container"),
        (f"{AZURE}/images/a.png", "names no blob inside a container"),
        (f"{AZURE}../images/a.png", "names no blob inside a container"),
        (f"{AZURE}images/a/../b.png", "'..' segment"),
        (f"{AZURE}images/%2E%2E/labeling-exports/x.json", "'..' segment"),
        (f"{AZURE}images/%FF.png", "not UTF-8"),
        ("ftp://acct.blob.core.windows.net/images/a.png", "not an http"),
        ("https://acct.blob.core.windows.net:99999/images/a.png", "invalid port"),
        ("", "empty"),
    ],
)
def test_urls_that_cannot_be_canonicalised_are_refused(url: str, reason: str) -> None:
    with pytest.raises(BlobNameError, match=reason):
        blob_ref(url, account_url=AZURE)


def test_a_url_of_another_account_is_refused_without_echoing_secrets() -> None:
    for url in (
        "https://evil.blob.core.windows.net/images/a.png?sig=SECRET",
        "http://127.0.0.1:10001/devstoreaccount1/images/a.png",
        "http://127.0.0.1:10000/otheraccount/images/a.png",
    ):
        with pytest.raises(BlobUrlError, match="outside the configured storage account") as refused:
            blob_ref(url, account_url=AZURITE if "127.0.0.1" in url else AZURE)
        assert "SECRET" not in str(refused.value)


@pytest.mark.azurite
def test_upload_and_download_through_azurite(blob_settings: Settings) -> None:
    store = BlobStore(blob_settings)
    url = store.upload(blob_settings.images_container, "t/blob test.png", b"\x89PNG...", content_type="image/png")
    assert split_blob_url(url) == (blob_settings.images_container, "t/blob test.png")
    assert store.download(blob_settings.images_container, "t/blob test.png") == b"\x89PNG..."
    names = [b.name for b in store.list(blob_settings.images_container, prefix="t/")]
    assert "t/blob test.png" in names
    with pytest.raises(BlobNameError):
        store.upload(blob_settings.images_container, "../escape.png", b"x")
