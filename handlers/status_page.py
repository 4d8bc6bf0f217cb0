"""The live status page at ``/`` and its data at ``/api/status``.

Self-contained (inline CSS, JavaScript and SVG, nothing fetched from the internet), refreshed
every few seconds from :func:`infra.status.snapshot`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from infra.status import snapshot

router = APIRouter()


@router.get("/api/status")
async def status_json(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(snapshot, request.app.state.settings)


@router.get("/", response_class=HTMLResponse)
async def status_page() -> str:
    return PAGE


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lakesight status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
 header{background:#1d2330;color:#fff;padding:12px 20px;display:flex;justify-content:space-between;align-items:center}
 header a{color:#9cc3ff} main{padding:16px 20px;display:grid;gap:14px;grid-template-columns:repeat(auto-fill,minmax(420px,1fr))}
 .card{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 3px rgba(0,0,0,.12)}
 .card h2{font-size:14px;margin:0 0 8px;color:#4a5468;text-transform:uppercase;letter-spacing:.04em}
 .kpis{display:grid;grid-template-columns:repeat(4,1fr);gap:8px}.kpi b{display:block;font-size:22px}
 .kpi span{color:#6b7487;font-size:12px} table{border-collapse:collapse;width:100%}
 td,th{text-align:left;padding:3px 6px;border-bottom:1px solid #eceef2;font-size:12px}
 .ok{color:#1a7f37}.bad{color:#c62828} .muted{color:#8a93a6} svg{width:100%;height:170px}
 .legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
</style></head>
<body>
<header><div><b>lakesight</b> · live pipeline <span id="at" class="muted"></span></div>
<div><a id="mlflow" href="#" target="_blank">MLflow UI →</a></div></header>
<main>
 <section class="card" style="grid-column:1/-1"><h2>Pipeline</h2><div class="kpis" id="kpis"></div></section>
 <section class="card"><h2>Throughput (rows/s per batch)</h2><svg id="throughput"></svg></section>
 <section class="card"><h2>Confidence histogram</h2><svg id="confidence"></svg></section>
 <section class="card"><h2>Classes: predictions vs training labels</h2><svg id="classes"></svg>
  <div class="legend"><span style="background:#3f7be0"></span>predicted<span style="background:#f0a53c"></span>training</div></section>
 <section class="card"><h2>Model versions</h2><table id="models"></table></section>
 <section class="card"><h2>Retraining decisions</h2><table id="decisions"></table></section>
 <section class="card"><h2>Services</h2><table id="services"></table></section>
</main>
<script>
const NS = "http://www.w3.org/2000/svg";
function el(tag, attrs, text) { const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; return e; }
function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }
function bars(svg, labels, series, colours) {
  clear(svg); const W = svg.clientWidth || 400, H = 170, pad = 24;
  const max = Math.max(1, ...series.flat()); const n = Math.max(1, labels.length), group = (W - pad) / n;
  const w = Math.max(2, group / (series.length + 0.5));
  labels.forEach((label, i) => { series.forEach((s, j) => { const h = (H - 2 * pad) * (s[i] || 0) / max;
      svg.appendChild(el("rect", {x: pad + i * group + j * w, y: H - pad - h, width: w - 1, height: h, fill: colours[j]}));
    });
    svg.appendChild(el("text", {x: pad + i * group + group / 2 - 4, y: H - 8, "font-size": 10}, label)); });
  svg.appendChild(el("text", {x: 0, y: 12, "font-size": 10, fill: "#6b7487"}, String(max)));
}
function line(svg, values) {
  clear(svg); const W = svg.clientWidth || 400, H = 170, pad = 24;
  if (!values.length) { svg.appendChild(el("text", {x: pad, y: H / 2, fill: "#8a93a6"}, "no batches yet")); return; }
  const max = Math.max(1, ...values); const step = (W - 2 * pad) / Math.max(1, values.length - 1);
  const pts = values.map((v, i) => `${pad + i * step},${H - pad - (H - 2 * pad) * v / max}`).join(" ");
  svg.appendChild(el("polyline", {points: pts, fill: "none", stroke: "#3f7be0", "stroke-width": 2}));
  svg.appendChild(el("text", {x: 0, y: 12, "font-size": 10, fill: "#6b7487"}, max.toFixed(0) + " rows/s"));
}
function table(node, rows, columns) {
  node.innerHTML = ""; if (!rows || !rows.length) { node.innerHTML = "<tr><td class=muted>none yet</td></tr>"; return; }
  const head = document.createElement("tr"); columns.forEach(c => { const th = document.createElement("th");
    th.textContent = c; head.appendChild(th); }); node.appendChild(head);
  rows.forEach(r => { const tr = document.createElement("tr"); columns.forEach(c => { const td = document.createElement("td");
      let v = r[c]; if (Array.isArray(v)) v = v.join(", "); td.textContent = v === null || v === undefined ? "" : v;
      tr.appendChild(td); }); node.appendChild(tr); });
}
function kpi(label, value) { return `<div class="kpi"><b>${value ?? "–"}</b><span>${label}</span></div>`; }
async function refresh() {
  let s; try { s = await (await fetch("api/status")).json(); } catch (e) { document.getElementById("at").textContent = "unreachable"; return; }
  document.getElementById("at").textContent = new Date(s.at).toLocaleTimeString();
  document.getElementById("mlflow").href = s.mlflow_ui;
  const img = s.images || {}, stream = s.stream || {}, models = s.models || {};
  const batches = stream.recent_batches || [];
  const last = stream.last_progress || {};
  document.getElementById("kpis").innerHTML = [
    kpi("images", img.images), kpi("scored", img.scored), kpi("errors", img.errors),
    kpi("pending labels", img.pending_labels), kpi("human labels", img.human_labels),
    kpi("champion version", models.champion), kpi("stream", stream.state),
    kpi("rows/s (last batch)", last.processed_rows_per_s)].join("");
  line(document.getElementById("throughput"), batches.map(b => b.rows_per_s ?? b.processed_rows_per_s ?? b.rows ?? 0));
  const hist = img.confidence_histogram || [];
  bars(document.getElementById("confidence"), hist.map((_, i) => (i / 10).toFixed(1)), [hist], ["#3f7be0"]);
  const pred = img.predicted_classes || {}, train = img.label_classes || {};
  const names = [...new Set([...Object.keys(pred), ...Object.keys(train)])].sort();
  const total = o => Object.values(o).reduce((a, b) => a + b, 0) || 1;
  bars(document.getElementById("classes"), names,
       [names.map(n => (pred[n] || 0) / total(pred)), names.map(n => (train[n] || 0) / total(train))],
       ["#3f7be0", "#f0a53c"]);
  table(document.getElementById("models"), (models.versions || []).slice().reverse(),
        ["version", "aliases", "accuracy", "delta_version", "created"]);
  table(document.getElementById("decisions"), s.decisions, ["decided_at", "trigger", "retrain", "new_labels", "psi", "reasons", "launch"]);
  table(document.getElementById("services"), (s.services || {}).children, ["name", "pid", "restarts", "last_exit"]);
}
refresh(); setInterval(refresh, 3000);
</script></body></html>
"""
