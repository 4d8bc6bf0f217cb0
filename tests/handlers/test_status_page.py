"""The status page, rendered by a real headless Chromium against a real server, a real registry and real processes."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
import uvicorn
from fastapi import HTTPException

from handlers.api.routes.status import asset_file
from infra import registry
from infra.core.status import snapshot
from infra.lake import Lake
from infra.processes import free_port, pid_alive
from infra.settings import Settings
from infra.tables import DRIFT_REPORTS, IMAGES, LABELING_CANDIDATES, LABELING_REQUESTS, RETRAINING_DECISIONS
from tests.helpers.browser import CHROMIUM, Browser
from tests.helpers.status import promote_versions, stream_process

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
NOW = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)


def seed_images(settings: Settings) -> None:
    """12 scored rows (3 errors, 2 sent for labeling, 1 human label) in the images table."""
    n = 12
    Lake(settings).merge(
        IMAGES,
        pa.table(
            {
                "path": [f"file:/img/{i}.png" for i in range(n)],
                "load_date": [NOW.date()] * n,
                "label": ["0", "1", "0"] + [None] * (n - 3),
                "label_source": ["path", "human", "path"] + [None] * (n - 3),
                "predicted_label": [str(i % 3) for i in range(n)],
                "confidence": [0.5 + i / 25 for i in range(n)],
                "model_version": ["1"] * 6 + ["2"] * 6,
                "scored_at": [NOW] * n,
                "sent_to_labeling_at": [NOW, NOW] + [None] * (n - 2),
                "error": [None] * (n - 3) + ["not an image"] * 3,
            }
        ),
    )


def seed_labeling(settings: Settings) -> None:
    """Today: 2 images sent, 1 candidate waiting, 1 skipped as a near-duplicate (the queue reads the real date)."""
    now = dt.datetime.now(dt.UTC)
    lake = Lake(settings)
    lake.merge(
        LABELING_REQUESTS,
        pa.table(
            {"path": ["file:/img/0.png", "file:/img/1.png"], "request_date": [now.date()] * 2, "sent_at": [now] * 2}
        ),
    )
    lake.merge(
        LABELING_CANDIDATES,
        pa.table(
            {
                "path": ["file:/img/5.png", "file:/img/6.png"],
                "window_date": [now.date()] * 2,
                "outcome": [None, "near_duplicate"],
                "decided_at": [None, now],
            }
        ),
    )


def seed_drift(settings: Settings) -> None:
    """Two drift windows of the stream: the later one drifted."""
    Lake(settings).merge(
        DRIFT_REPORTS,
        pa.table(
            {
                "report_id": ["score:q:0", "score:q:20"],
                "report_date": [NOW.date()] * 2,
                "window_end": [NOW - dt.timedelta(minutes=10), NOW],
                "images": [100, 120],
                "model_version": ["2", "2"],
                "drifted": [False, True],
                "reasons": ["", "embeddings"],
                "psi_confidence": [0.01, 0.3],
                "psi_classes": [0.02, 0.1],
                "mmd_p_value": [0.4, 0.0025],
            }
        ),
    )


def seed_decision(settings: Settings) -> None:
    """One retraining decision with an unrounded PSI and long unbroken texts (they must wrap)."""
    Lake(settings).merge(
        RETRAINING_DECISIONS,
        pa.table(
            {
                "decision_id": ["d-1"],
                "trigger": ["labels"],
                "decided_at": [NOW],
                "new_labels": [57],
                "psi": [0.123456789012],
                "retrain": [True],
                "reasons": ["new_labels=57>=50;psi=0.123456789012>=0.1;" + "x" * 120],
                "launch": ["local:" + "0123456789abcdef" * 6],
            }
        ),
    )


def seed_live_evidence(settings: Settings) -> None:
    """Human labels on 7 images challenger 3 shadow-scored (4 it got wrong, 3 right), and the decision they gave."""
    from infra.core.promotion import decide

    labeled = [("0", "0", "1")] * 4 + [("1", "0", "1")] * 3
    n = len(labeled)
    Lake(settings).merge(
        IMAGES,
        pa.table(
            {
                "path": [f"file:/live/{i}.png" for i in range(n)],
                "load_date": [NOW.date()] * n,
                "label": [r[0] for r in labeled],
                "label_source": ["human"] * n,
                "predicted_label": [r[1] for r in labeled],
                "model_version": ["2"] * n,
                "scored_at": [NOW] * n,
                "shadow_label": [r[2] for r in labeled],
                "shadow_model_version": ["3"] * n,
            }
        ),
    )
    decision = decide(settings, Lake(settings))
    assert decision is not None and decision.outcome == "waiting"


@pytest.fixture
def server(settings: Settings):
    from handlers.api.app import create_app

    seed_images(settings)
    seed_decision(settings)
    seed_labeling(settings)
    seed_drift(settings)
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


def test_snapshot_counts_the_images_table(settings: Settings) -> None:
    seed_images(settings)
    images = snapshot(settings)["images"]
    assert images["images"] == 12 and images["scored"] == 12 and images["errors"] == 3
    assert images["sent_to_labeling"] == 2 and images["pending_labels"] == 1 and images["human_labels"] == 1
    assert sum(images["confidence_histogram"]) == 12
    assert images["rows_by_model_version"] == {"1": 6, "2": 6}
    assert images["label_classes"] == {"0": 2, "1": 1}


def test_status_api_answers_without_a_key(server: str) -> None:
    body = httpx.get(f"{server}/api/status", timeout=30).json()
    assert body["images"]["images"] == 12
    assert body["mlflow_ui"].startswith("http://127.0.0.1:")


def test_the_chart_library_is_served_by_the_app_at_stable_paths(server: str) -> None:
    script = httpx.get(f"{server}/assets/uplot.js", timeout=30)
    style = httpx.get(f"{server}/assets/uplot.css", timeout=30)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "uPlot" in script.text and style.status_code == 200 and ".uplot" in style.text
    assert httpx.get(f"{server}/assets/..%2Fpackage.json", timeout=30).status_code == 404  # only the named files


def test_a_missing_npm_install_is_a_clear_404(tmp_path: Path) -> None:
    with pytest.raises(HTTPException) as refused:
        asset_file("uplot.js", dist=tmp_path)
    assert refused.value.status_code == 404 and "make install" in str(refused.value.detail)


# What the page shows, read from the live DOM and the chart objects once its script drew them.
PAGE_FIGURES = r"""(() => {
  if (typeof charts !== "object" || Object.keys(charts).length < 3) return null;
  const kpi = id => { const n = document.querySelector(`[data-kpi=${id}]`);
    return {value: n.querySelector("b").textContent, detail: n.querySelector("small")?.textContent ?? ""}; };
  // A heading cell reads as its column's key (th data-key), so the rows below compare by key.
  const rows = id => [...document.querySelectorAll(`#${id} tr`)].map(tr =>
    [...tr.children].map(c => c.dataset.key ?? c.textContent));
  // Every word (hyphenated parts apart) of a heading or short cell on one line: none broken inside.
  const broken = [...document.querySelectorAll("th, td:not(.long)")].flatMap(cell => {
    const text = cell.firstChild; if (!text || text.nodeType !== Node.TEXT_NODE) return [];
    const found = [], word = /[^\s-]+/g; let m;
    while ((m = word.exec(text.data))) { const r = document.createRange();
      r.setStart(text, m.index); r.setEnd(text, m.index + m[0].length);
      if (new Set([...r.getClientRects()].map(x => Math.round(x.top))).size > 1) found.push(m[0]); }
    return found; });
  return {
    champion: kpi("champion"), stream: kpi("stream"), images: kpi("images"), challenger: kpi("challenger"),
    models: rows("models"), decisions: rows("decisions"), labeling: rows("labeling"), spend: rows("label-spend"),
    drift: rows("drift"),
    live: rows("challenger"), promotions: rows("promotions"),
    liveReason: document.getElementById("challenger-reason").textContent,
    charts: Object.fromEntries(Object.entries(charts).map(([id, u]) =>
      [id, {axes: u.axes.map(a => a.label), time: !!u.scales.x.time, points: u.data[0].length}])),
    overflowing: [...document.querySelectorAll("td, th, .card")].filter(n => n.scrollWidth > n.clientWidth + 1)
      .map(n => n.textContent.slice(0, 80)),
    page: [document.documentElement.scrollWidth, innerWidth],
    headings: [...document.querySelectorAll("th")].map(th => th.textContent), broken,
  };
})()"""


def _figures(browser: Browser, stream_state: str) -> dict[str, Any]:
    """The page's figures once it shows ``stream_state`` (it refreshes every 3 s)."""
    return browser.wait_for(
        f"(() => {{ const f = {PAGE_FIGURES}; return f && f.stream.value === {stream_state!r} && f; }})()"
    )


# Under CI a missing browser is a broken install (make install brings Debian's chromium): fail, do not skip.
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="Debian chromium is not installed ('make install' installs it where apt-get is usable)",
)


@needs_chromium
def test_page_shows_the_registry_champion_and_the_stream_as_the_process_table_has_it(
    server: str, settings: Settings, tmp_path: Path
) -> None:
    champion = promote_versions(settings, [0.9, 0.95])  # as after the demo: v2 took the alias
    # Then version 3 beat it on the split and waits for live labels, shadow-scored.
    assert promote_versions(settings, [0.97], min_pairs=settings.promotion_min_pairs) == champion
    seed_live_evidence(settings)
    with Browser(tmp_path / "chromium", width=900, height=1400) as browser:
        with stream_process(settings, committed_at=NOW.timestamp(), model_version="2") as live:
            browser.open(f"{server}/")
            running = _figures(browser, "running")
        dead = _figures(browser, "stopped")  # the same status file, its process killed
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "status-page.png")

    assert champion == str(registry.champion_version(settings).version) == "2"
    assert running["champion"]["value"] == dead["champion"]["value"] == champion
    assert f"pid {live.pid}, model 2, last batch 2026-11-22 10:00:00 UTC" in running["stream"]["detail"]
    assert not pid_alive(live.pid)
    assert dead["stream"]["detail"] == f"last batch 2026-11-22 10:00:00 UTC · process {live.pid} is not running"
    assert dead["images"]["value"] == "19"
    # The versions table: aliases from the registry, accuracy rounded, the split decision.
    assert dead["models"][0] == ["version", "aliases", "accuracy", "delta_version", "decision", "created"]
    assert [row[:5] for row in dead["models"][1:]] == [
        ["3", "challenger", "0.97", "3", "challenger"],
        ["2", "champion", "0.95", "3", "champion"],
        ["1", "", "0.9", "3", "champion"],
    ]
    # The challenger: its live tally, the p-value, and why it waits; the decision recorded.
    assert dead["challenger"] == {"value": "3", "detail": "waiting"}
    live = dict(zip(*dead["live"], strict=True))
    assert live == {
        "challenger_version": "3",
        "champion_version": "2",
        "split": "0.97 vs 0.95",
        "pairs": "7 of 20",
        "b": "4",
        "c": "3",
        "both_right": "0",
        "both_wrong": "0",
        "p_value": "0.5",
        "outcome": "waiting",
    }
    assert dead["liveReason"] == "waiting for live evidence: 7 of 20 discordant pairs"
    promotion = dict(zip(*dead["promotions"], strict=True))
    assert (promotion["challenger_version"], promotion["outcome"], promotion["p_value"]) == ("3", "waiting", "0.5")
    # The labeling queue and what the labels bought.
    queue = dict(zip(*dead["labeling"], strict=True))
    assert queue["waiting"] == "1" and queue["sent_today"] == "2 of 1000"
    assert queue["near_duplicates_skipped_today"] == "1" and queue["strategy"] == "margin_diversity"
    assert dead["spend"][1:] == [["1", "2", "0.9"], ["2", "2", "0.95"], ["3", "2", "0.97"]]
    # Drift windows, newest first.
    assert [row[:5] for row in dead["drift"][1:]] == [
        ["2026-11-22 10:00:00 UTC", "120", "2", "true", "embeddings"],
        ["2026-11-22 09:50:00 UTC", "100", "2", "false", ""],
    ]
    # Decisions: PSI rounded, the time in one form, long cells wrapped inside the page's width.
    header, decision = dead["decisions"]
    assert dict(zip(header, decision, strict=True))["psi"] == "0.123"
    assert dict(zip(header, decision, strict=True))["decided_at"] == "2026-11-22 10:00:00 UTC"
    assert dead["overflowing"] == [] and dead["page"][0] <= dead["page"][1]
    # Headings in words a person reads, and no word broken inside, at this narrow width too.
    assert "near-duplicates skipped today" in dead["headings"] and "annotations received" in dead["headings"]
    assert not [h for h in dead["headings"] if "_" in h], dead["headings"]
    assert dead["broken"] == [], dead["broken"]
    # Every chart is uPlot's, with labelled axes (units), and the throughput over commit time.
    assert dead["charts"] == {
        "throughput": {"axes": ["commit time (UTC)", "rows/s", "MERGE (s)"], "time": True, "points": 1},
        "confidence": {"axes": ["confidence (top-class probability)", "images (count)"], "time": False, "points": 10},
        "classes": {"axes": ["class", "share of rows (%)"], "time": False, "points": 3},
    }
    assert (ARTIFACTS / "status-page.png").stat().st_size > 20_000
