"""The local relay: Azurite blobs → BlobCreated events through the SDK → the handler, each upload once."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from azure.core.exceptions import HttpResponseError
from pydantic import SecretStr
from typer.testing import CliRunner

from handlers.api.app import create_app
from handlers.relay import Relay
from handlers.server import running
from infra.blob import BlobStore
from infra.cli import app as cli
from infra.processes import free_port
from infra.settings import Settings
from tests.helpers.handlers import arrival_lines, serving
from tests.helpers.images import solid_png

pytestmark = pytest.mark.azurite


def test_relay_announces_each_upload_once(blob_settings: Settings) -> None:
    # Containers of its own: the session's Azurite holds other tests' blobs.
    tag = uuid.uuid4().hex[:8]
    settings = blob_settings.model_copy(update={"images_container": f"img-{tag}", "exports_container": f"exp-{tag}"})
    store = BlobStore(settings)
    store.ensure_containers([settings.images_container, settings.exports_container, "elsewhere"])
    images = {f"cam1/{i}.png": solid_png(10 * i) for i in range(3)}
    for name, data in images.items():
        store.upload(settings.images_container, name, data, content_type="image/png")
    store.upload(settings.images_container, "cam1/empty.png", b"")  # a placeholder: never announced
    store.upload("elsewhere", "x.png", solid_png(1))  # not a watched container

    with serving(settings) as (url, service):
        forged = Relay(settings.model_copy(update={"event_key": SecretStr("wrong")}), endpoint=url)
        with pytest.raises(HttpResponseError):
            forged.poll()  # refused with 401: nothing is recorded as announced
        forged.close()

        relay = Relay(settings, endpoint=url)
        assert relay.poll() == 3
        assert relay.poll() == 0
        relay.close()
        restarted = Relay(settings, endpoint=url)  # the announced set persists under state_dir
        assert restarted.poll() == 0
        store.upload(settings.images_container, "cam1/0.png", solid_png(99), content_type="image/png")  # new eTag
        assert restarted.poll() == 1
        restarted.close()
        assert service.wait_idle()

    records = arrival_lines(settings)
    assert sorted(r["name"] for r in records) == ["cam1/0.png", "cam1/0.png", "cam1/1.png", "cam1/2.png"]
    first = next(r for r in records if r["name"] == "cam1/1.png")
    props = store.service.get_blob_client(settings.images_container, "cam1/1.png").get_blob_properties()
    assert first["etag"] == props.etag.strip('"') and first["content_length"] == props.size
    assert first["content_type"] == "image/png" and len(first["sequencer"]) == 32
    assert first["url"] == store.url(settings.images_container, "cam1/1.png")
    assert len({r["etag"] for r in records if r["name"] == "cam1/0.png"}) == 2


def test_relay_loop_keeps_going_while_the_handler_is_down(blob_settings: Settings) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = blob_settings.model_copy(
        update={"images_container": f"img-{tag}", "exports_container": f"exp-{tag}", "handler_port": free_port()}
    )
    BlobStore(settings).ensure_containers()
    BlobStore(settings).upload(settings.images_container, "late.png", solid_png(), content_type="image/png")
    relay = Relay(settings)  # aims at settings.handler_port, where nothing listens yet
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, kwargs={"interval": 0.1, "stop": stop}, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # a few failed polls: logged, retried
        with running(create_app(settings), port=settings.handler_port):
            deadline = time.monotonic() + 20
            while [r["name"] for r in arrival_lines(settings)] != ["late.png"]:
                assert time.monotonic() < deadline, "the relay never delivered once the handler came up"
                time.sleep(0.05)
    finally:
        stop.set()
        thread.join(5)
        relay.close()


def test_cli_relay_once(env_settings, azurite_port: int) -> None:
    env_settings.setenv("LAKESIGHT_BLOB_PORT", str(azurite_port))
    settings = Settings()
    BlobStore(settings).upload(settings.images_container, "cli/one.png", solid_png(), content_type="image/png")
    with running(create_app(settings)) as url:
        result = CliRunner().invoke(cli, ["relay", "--once", "--url", url])
        again = CliRunner().invoke(cli, ["relay", "--once", "--url", url])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["announced"] >= 1  # the session's Azurite may hold other tests' blobs
    assert json.loads(again.stdout) == {"announced": 0}
