"""A labeler's view: Label Studio's own task page in a real browser (Debian's headless Chromium)
shows the copy from the labeling container and the champion's answer as the pre-annotation."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from handlers.intake.label_studio_sync import LabelStudioSync
from infra.core.labeling.handoff import hand_off
from infra.lake import Lake
from infra.local.label_studio import LabelStudio
from infra.settings import Settings
from tests.handlers.test_label_matching import NOW, scored_rows, sources
from tests.handlers.test_label_studio_sync import project_tasks, signed_in, with_label_studio
from tests.helpers.browser import CHROMIUM, Browser

pytestmark = [pytest.mark.azurite, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# Under CI a missing browser is a broken install (make install brings Debian's chromium): fail, do not skip.
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="Debian chromium is not installed ('make install' installs it where apt-get is usable)",
)

# The task's image as the page drew it: loaded (a broken image has no natural width), from the copy.
SHOWN_IMAGE = """(() => {
  const shown = [...document.querySelectorAll('img')].filter(i => i.src.includes(%s));
  return shown.length > 0 && shown.every(i => i.complete && i.naturalWidth > 0) && shown.length;
})()"""
# The pre-annotation: the choice the champion made is ticked for the labeler to confirm (a choice's
# text ends with its hotkey, "0[1]").
TICKED = """(() => [...document.querySelectorAll('.ant-checkbox-wrapper-checked, .ant-radio-wrapper-checked')]
  .map(w => w.innerText.trim().replace(/\\[\\d+\\]$/, '')).filter(Boolean))()"""
# The prediction's tab names the model version and its score ("1", "2 minutes ago · 50.00%").
PREDICTION_TAB = """(() => [...document.querySelectorAll('*')].some(e => e.children.length === 0
  && e.textContent.includes(%s)))()"""


def png(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (shade, 255 - shade, 128)).save(out, format="PNG")
    return out.getvalue()


def send_pictures(settings: Settings, paths: list[str]) -> list[dict]:
    """Hand real pictures off (a browser must be able to draw them); the ledger's rows, as the manifest says."""
    rows = scored_rows(paths)
    pictures = [png(40 * i) for i in range(len(paths))]
    rows = rows.set_column(rows.schema.get_field_index("content"), "content", pa.array(pictures, pa.binary()))
    hashes = pa.array([hashlib.sha256(p).hexdigest() for p in pictures])
    rows = rows.set_column(rows.schema.get_field_index("content_hash"), "content_hash", hashes)
    lake = Lake(settings)
    handed = hand_off(settings, lake, rows, app_id="score:q", batch_id=0, now=NOW)
    assert handed.sent == len(paths)
    return lake.read("labeling_requests").to_pylist()


@needs_chromium
def test_the_task_page_shows_the_image_and_the_champions_pre_annotation(
    label_studio: LabelStudio, labeling: Settings, tmp_path: Path
) -> None:
    settings = with_label_studio(labeling, label_studio)
    ledger = send_pictures(settings, sources(settings, 1)[:1])
    LabelStudioSync(settings).sync_once()
    client = signed_in(settings)
    task = next(t for t in project_tasks(client, settings) if t["data"]["task_id"] == ledger[0]["task_id"])
    line = ledger[0]
    copy_name = line["image_url"].rsplit("/", 1)[-1]
    url = f"http://127.0.0.1:{settings.label_studio_port}"

    with Browser(tmp_path / "chromium", width=1280, height=1000) as browser:
        for name in ("sessionid", "csrftoken"):  # the labeler is signed in (as the admin)
            browser.send("Network.setCookie", {"name": name, "value": client.http.cookies[name], "url": url}, page=True)
        browser.open(f"{url}/projects/{task['project']}/data?task={task['id']}")
        try:
            shown = browser.wait_for(SHOWN_IMAGE % json.dumps(copy_name), timeout=90)
            ticked = browser.wait_for(TICKED, timeout=30)
            scored = browser.wait_for(PREDICTION_TAB % json.dumps(f"{100 * line['confidence']:.2f}%"), timeout=30)
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            browser.screenshot(ARTIFACTS / "label-studio-task.png")
    client.close()
    assert shown >= 1
    assert ticked == [str(line["predicted_label"])]
    assert scored
