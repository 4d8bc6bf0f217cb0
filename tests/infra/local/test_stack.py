import pytest

from infra.local.stack import Azurite, StackError, require_tool, stack_status
from infra.processes import free_port
from infra.settings import Settings


def test_missing_tool_names_what_to_install() -> None:
    with pytest.raises(StackError, match="install Node"):
        require_tool("definitely-not-a-real-tool", "Node.js 20")


@pytest.mark.azurite
def test_azurite_starts_creates_containers_and_stops(tmp_path) -> None:
    settings = Settings(state_dir=tmp_path / "state", blob_port=free_port())
    azurite = Azurite(settings)
    pid = azurite.start()
    try:
        assert azurite.healthy() and azurite.pid() == pid
        from infra.blob import BlobStore

        names = {c.name for c in BlobStore(settings).service.list_containers()}
        assert {"images", "labeling", "labeling-exports"} <= names
        assert stack_status(settings)[0]["healthy"] is True
        assert azurite.start() == pid  # already running: reused, not started twice
    finally:
        assert azurite.stop() is True
    assert not azurite.healthy()
    assert azurite.pid() is None
    assert azurite.stop() is False
