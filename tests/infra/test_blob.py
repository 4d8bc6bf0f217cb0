import pytest

from infra.blob import BlobNameError, BlobStore, split_blob_url, validate_blob_name
from infra.settings import Settings


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


def test_split_blob_url_handles_azurite_and_azure() -> None:
    assert split_blob_url("http://127.0.0.1:10000/devstoreaccount1/images/a/b%20c.png") == ("images", "a/b c.png")
    assert split_blob_url("https://acct.blob.core.windows.net/images/x.png") == ("images", "x.png")
    with pytest.raises(BlobNameError):
        split_blob_url("https://acct.blob.core.windows.net/images/../secrets")
    with pytest.raises(BlobNameError):
        split_blob_url("file:///etc/passwd")


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
