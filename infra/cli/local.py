"""The local runtime's commands: ``stack``, ``up``/``down``/``supervise``, ``status`` and ``demo``."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import typer

from infra.cli._output import console, fail, native_noise_filtered, out, print_json, render_rows, sub_app
from infra.settings import get_settings


def register(app: typer.Typer) -> None:
    stack = sub_app(
        "stack",
        "Start, stop and inspect the local services (Azurite; with --spark-cluster a Spark cluster and MLflow).",
    )
    stack.command("start")(stack_start)
    stack.command("stop")(stack_stop)
    stack.command("status")(stack_status)
    app.command()(demo)
    app.command()(up)
    app.command()(down)
    app.command(hidden=True)(supervise)
    app.command()(status)


SparkClusterOption = Annotated[
    bool,
    typer.Option(
        "--spark-cluster",
        help="Also a Spark standalone cluster (master and workers) and an MLflow tracking server on loopback",
    ),
]
WorkersOption = Annotated[int, typer.Option("--workers", min=1, help="Spark workers (1 core each)")]


def stack_start(spark_cluster: SparkClusterOption = False, workers: WorkersOption = 2) -> None:
    """Start Azurite (from the project's npm install) and create the containers, and Label Studio when it is
    the labeling service (LAKESIGHT_LABELING_SERVICE); --spark-cluster: a Spark
    standalone cluster and an MLflow tracking server too, and print the environment that points commands at them."""
    from infra.local import label_studio
    from infra.local.stack import Azurite, check_java

    settings = get_settings()
    check_java()
    pid = Azurite(settings).start()
    console.print(f"azurite running (pid {pid}) on port {settings.blob_port}")
    console.print(label_studio.start_quietly(settings))
    if spark_cluster:
        _start_cluster(settings, workers)


def _start_cluster(settings: Any, workers: int) -> None:
    """Start the cluster and print, on stdout, the environment lakesight's commands need to use it."""
    from infra.local.cluster import start_local_cluster

    started = start_local_cluster(settings, workers=workers)
    console.print(
        f"spark cluster running: {started.cluster.master_url} ({workers} workers); "
        f"MLflow tracking server {started.tracking.uri}. Use it with:"
    )
    for name, value in started.env.items():
        out.print(f"export {name}={value}", markup=False, highlight=False, soft_wrap=True)


def stack_stop() -> None:
    """Stop the local services started by 'stack start' (the Spark cluster too, if it was started)."""
    from infra.local.cluster import running_local_cluster, stop_local_cluster
    from infra.local.label_studio import LabelStudio
    from infra.local.stack import Azurite

    settings = get_settings()
    stopped = Azurite(settings).stop()
    console.print("azurite stopped" if stopped else "azurite was not running")
    labeling = LabelStudio(settings).stop()
    console.print("label studio stopped" if labeling else "label studio was not running")
    if running_local_cluster(settings) is not None:
        console.print("spark cluster stopped" if stop_local_cluster(settings) else "spark cluster was not running")


def stack_status() -> None:
    """Show whether the local services are running (the Spark cluster's too, once started)."""
    from infra.local.cluster import cluster_status
    from infra.local.label_studio import status_row
    from infra.local.stack import stack_status as services

    settings = get_settings()
    render_rows("local stack", [*services(settings), status_row(settings), *cluster_status(settings)])


def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Run the whole story on the digits data: stream, label hand-off, retraining, promotion (≈5-10 min)."""
    from infra.local.demo import run_demo

    settings = get_settings()
    try:
        with native_noise_filtered():  # TensorFlow's start-up lines are not the demo's story
            report = run_demo(settings, console)
    except KeyboardInterrupt:
        fail("interrupted; every demo process was stopped", code=130)
    if as_json:
        print_json(report.__dict__)
        return
    render_rows("demo summary", _demo_rows(report))
    out.print(
        f"state: {report.state_dir}  ·  MLflow UI: mlflow ui --backend-store-uri "
        f"sqlite:///{report.state_dir}/mlflow.db  ·  status page: lakesight serve-events, then http://127.0.0.1:"
        f"{settings.handler_port}/  ·  label yourself: lakesight up, then Label Studio at http://127.0.0.1:"
        f"{settings.label_studio_port}/"
    )


def _label_spend(report: Any) -> str:
    """``120 labels (margin_diversity): holdout 0.812 -> 0.905 (+0.093)``."""
    before, after = report.v1_holdout_accuracy, report.v2_holdout_accuracy
    spent = f"{report.labels_merged} labels ({report.labeling_strategy})"
    if before is None or after is None:
        return spent
    return f"{spent}: holdout {before:.3f} -> {after:.3f} ({after - before:+.3f})"


def _labeling_service(report: Any) -> str:
    """``label-studio: 41 labels received`` (by webhook or pull), or the service alone."""
    if report.labeling_service == "label-studio":
        return f"label-studio: {report.labels_received} labels received"
    return f"{report.labeling_service or 'container'}: an export of the true labels"


def _demo_rows(report: Any) -> list[dict[str, str]]:
    return [
        {"what": "images uploaded / scored", "value": f"{report.images_uploaded} / {report.images_scored}"},
        {"what": "sent to labeling / labels merged", "value": f"{report.sent_to_labeling} / {report.labels_merged}"},
        {"what": "labeling service", "value": _labeling_service(report)},
        {"what": "labels spent for accuracy", "value": _label_spend(report)},
        {"what": "labeling candidates", "value": json.dumps(report.labeling_outcomes)},
        {"what": "v1 holdout accuracy", "value": f"{report.v1_holdout_accuracy} (version {report.v1})"},
        {"what": "v2 holdout accuracy", "value": f"{report.v2_holdout_accuracy} (version {report.v2})"},
        {"what": "champion now", "value": str(report.champion)},
        {"what": "last images scored by version", "value": json.dumps(report.final_wave_versions)},
        {"what": "retraining decisions", "value": str(len(report.decisions))},
        {"what": "total time", "value": f"{report.seconds}s"},
    ]


def up() -> None:
    """Start every local service (Azurite, MLflow UI, Label Studio, handler, relay, scoring stream), supervised."""
    from infra.local.stack import check_java
    from infra.local.supervisor import up as start_supervisor

    settings = get_settings()
    check_java()
    pid = start_supervisor(settings)
    console.print(f"supervisor running (pid {pid}); logs in {settings.logs_dir}; 'lakesight status' to watch")


def down() -> None:
    """Stop the supervisor and every service it runs."""
    from infra.local.supervisor import down as stop_supervisor

    console.print("stopped" if stop_supervisor(get_settings()) else "nothing was running")


def supervise() -> None:
    """Run the supervisor in the foreground (what 'up' starts detached)."""
    from infra.local.supervisor import serve_forever

    serve_forever(get_settings())


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole snapshot as JSON")] = False,
) -> None:
    """Show the live pipeline: services, stream progress and backlog, champion, pending labels, decisions."""
    from infra.core.status import snapshot

    snap = snapshot(get_settings())
    if as_json:
        print_json(snap)
        return
    render_rows("pipeline", _pipeline_rows(snap))
    render_rows("model versions", _version_rows(snap))
    services = (snap.get("services") or {}).get("children") or []
    render_rows("services", [{k: c.get(k) for k in ("name", "pid", "restarts", "last_exit")} for c in services])
    columns = ("decided_at", "trigger", "retrain", "new_labels", "psi", "reasons")
    decisions = snap.get("decisions") or []
    render_rows(
        "recent retraining decisions", [{k: _decision_cell(k, d.get(k)) for k in columns} for d in decisions[:5]]
    )
    promotions = (snap.get("promotion") or {}).get("recent") or []
    live = ("decided_at", "challenger_version", "champion_version", "b", "c", "p_value", "outcome", "reason")
    render_rows(
        "recent promotion decisions (live labels)",
        [{k: _decision_cell(k, d.get(k)) for k in live} for d in promotions[:5]],
    )
    _render_dead_letters(snap)


def _render_dead_letters(snap: dict[str, Any]) -> None:
    """Events acknowledged but not acted on (the handlers' dead-letter table): count and latest reasons."""
    letters = snap.get("dead_letters") or {}
    recent = letters.get("recent") or []
    columns = ("recorded_at", "event_type", "status", "reason")
    title = f"dead letters ({letters.get('count')} in all, latest first)" if recent else "dead letters"
    render_rows(title, [{k: r.get(k) for k in columns} for r in recent])


def _stream_line(stream: dict[str, Any]) -> str:
    """``running (pid …, model …)``, or ``stopped`` with its last batch time and why: the state as
    :func:`infra.status_files.judge_stream` judged it, not as a left-behind status file claims."""
    state = stream.get("state")
    if state is None:
        return "never ran"
    last = f"last batch {_when(stream.get('last_batch_at'))}" if stream.get("last_batch_at") else "no batch yet"
    if state == "running":
        return f"running (pid {stream.get('pid')}, model {stream.get('model_version')}, {last})"
    return f"{state} ({'; '.join(filter(None, [last, stream.get('stale_reason')]))})"


def _model_server_line(online: dict[str, Any]) -> str:
    if online.get("state") != "serving":
        return f"{online.get('state')} ({online.get('stale_reason') or 'shut down'})"
    return (
        f"serving {online.get('serve_alias')} version {online.get('model_version')}: "
        f"{online.get('requests_per_s')} requests/s, p50 {online.get('p50_ms')} ms, p99 {online.get('p99_ms')} ms"
    )


def _when(iso: str | None) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM:SS UTC`` (seconds are precise enough for a status line)."""
    if not iso:
        return "–"
    moment = dt.datetime.fromisoformat(iso)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)  # the lake's naive times are UTC
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _decision_cell(key: str, value: Any) -> Any:
    """A decision's value as printed: times in one form, fractions (PSI) to three significant digits."""
    if key == "decided_at" and isinstance(value, str):
        return _when(value)
    return f"{value:.3g}" if isinstance(value, float) else value


def _champion_line(snap: dict[str, Any]) -> str:
    models = snap.get("models")
    if models is None:
        failed = (snap.get("unavailable") or {}).get("models")
        return f"unavailable: {failed}" if failed else "no registry yet"
    champion = models.get("champion")
    return f"version {champion}" if champion is not None else "none yet"


def _challenger_line(snap: dict[str, Any]) -> str | None:
    """``version 3 (split 0.950 vs 0.900): waiting for live evidence: …``; None without a challenger."""
    live = (snap.get("promotion") or {}).get("challenger")
    if not live:
        return None
    split = ""
    if live.get("split_accuracy") is not None and live.get("champion_split_accuracy") is not None:
        split = f" (split {live['split_accuracy']:.3f} vs {live['champion_split_accuracy']:.3f})"
    tally = (
        f"b={live['b']}, c={live['c']}, both right {live['both_right']}, both wrong {live['both_wrong']}, "
        f"p={live['p_value']:.3g}"
    )
    return f"version {live['challenger_version']}{split}: {live['reason']}; {tally}"


def _version_rows(snap: dict[str, Any]) -> list[dict[str, Any]]:
    """The registered versions, newest first, as the registry holds them (aliases included)."""
    versions = (snap.get("models") or {}).get("versions") or []
    return [
        {
            "version": v["version"],
            "aliases": ",".join(v["aliases"]),
            "accuracy": "" if v.get("accuracy") is None else f"{v['accuracy']:.3f}",
            "delta_version": v.get("delta_version"),
            "decision": v.get("decision") or "",
            "live": v.get("live_decision") or "",
        }
        for v in reversed(versions)
    ]


def _drift_rows(windows: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    if not windows:
        return []
    last = windows[0]
    verdict = f"drifted ({last['reasons']})" if last["drifted"] else "no drift"
    p_value = "" if last.get("mmd_p_value") is None else f", MMD p {last['mmd_p_value']:.3g}"
    figures = f"PSI confidence {last['psi_confidence']:.3g}, classes {last['psi_classes']:.3g}{p_value}"
    drifted = sum(1 for w in windows if w["drifted"])
    return [
        {
            "what": "last drift window",
            "value": f"{_when(last['window_end'])}: {last['images']} images, {verdict}; {figures} "
            f"({drifted} of the last {len(windows)} windows drifted)",
        }
    ]


def _labeling_rows(queue: dict[str, Any] | None) -> list[dict[str, str]]:
    if not queue:
        return []
    pace = f"windows of {queue['window_s']} s" if queue.get("window_s") else "each batch at once"
    rows = [
        {
            "what": "labeling queue",
            "value": f"{queue['waiting']} waiting, {queue['sent_today']} of {queue['daily_budget']} sent today, "
            f"{queue['budget_left_now']} may go now ({queue['strategy']}, {pace}), "
            f"{queue['near_duplicates_skipped_today']} near-duplicates skipped today",
        }
    ]
    live = queue.get("prequential") or {}
    if live.get("accuracy") is not None:
        rows.append(
            {
                "what": "live accuracy",
                "value": f"{live['accuracy']:.3f} on {live['labels']} exploration labels "
                f"(model version {live['model_version']})",
            }
        )
    if queue.get("fallback"):
        rows.append({"what": "labeling strategy", "value": str(queue["fallback"])})
    if queue.get("service"):
        rows.append({"what": "labeling service", "value": _service_line(queue["service"])})
    return rows


def _service_line(service: dict[str, Any]) -> str:
    """``label-studio: 3 tasks open, 12 annotations received (11 by webhook, 1 by pull); labels refused:
    unknown class 2``."""
    parts = []
    if service.get("tasks_open") is not None:
        parts.append(f"{service['tasks_open']} tasks open")
    if service.get("name") == "label-studio" or service.get("annotations_received"):
        parts.append(
            f"{service['annotations_received']} annotations received "
            f"({service['by_webhook']} by webhook, {service['by_pull']} by pull)"
        )
    rejects = service.get("rejects") or {}
    refused = ", ".join(f"{reason} {count}" for reason, count in rejects.items()) or "none"
    return f"{service.get('name')}: {', '.join(parts) + '; ' if parts else ''}labels refused: {refused}"


def _handler_rows(handlers: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    """One row per handler process: its state, its problems (or "ok") and its event backlog."""
    rows = []
    for handler in handlers or []:
        backlog = handler.get("backlog") or {}
        problems = "; ".join(handler.get("problems") or []) or "ok"
        state = handler.get("state")
        if handler.get("stale_reason"):
            problems = f"{state}: {handler['stale_reason']}"
        pending, retrying = _count(backlog.get("pending")), _count(backlog.get("retrying"))
        value = f"{problems}; {pending} pending, {retrying} waiting for a retry"
        rows.append({"what": f"event handler (pid {handler.get('pid')})", "value": value})
    return rows


def _count(value: Any) -> str:
    """A figure as printed: never a raw ``None``."""
    return "–" if value is None else str(value)


def _batch_line(progress: dict[str, Any]) -> str:
    """``120 rows, 35.2 rows/s, backlog 0``; before the stream's first batch, that."""
    if not progress or progress.get("input_rows") is None:
        return "no batch yet"
    return (
        f"{progress['input_rows']} rows, {_count(progress.get('processed_rows_per_s'))} rows/s, "
        f"backlog {_count(progress.get('backlog'))}"
    )


def _pipeline_rows(snap: dict[str, Any]) -> list[dict[str, str]]:
    stream = snap.get("stream") or {}
    progress = stream.get("last_progress") or {}
    images = snap.get("images") or {}
    rows = [
        {"what": "scoring stream", "value": _stream_line(stream)},
        {"what": "last batch", "value": _batch_line(progress)},
        {
            "what": "images / scored / errors",
            "value": " / ".join(_count(images.get(k)) for k in ("images", "scored", "errors"))
            if images
            else "no images yet",
        },
        {
            "what": "pending labels / human labels",
            "value": f"{_count(images.get('pending_labels'))} / {_count(images.get('human_labels'))}"
            if images
            else "no images yet",
        },
        {"what": "champion", "value": _champion_line(snap)},
        *_labeling_rows(snap.get("labeling")),
        *_drift_rows(snap.get("drift")),
    ]
    challenger = _challenger_line(snap)
    if challenger:
        rows.append({"what": "challenger", "value": challenger})
    online = snap.get("model_server")
    if online:
        rows.append({"what": "model server", "value": _model_server_line(online)})
    for who, state in (("scoring stream", stream), ("model server", online or {})):
        if state.get("champion_load_error") and state.get("state") not in (None, "stopped"):
            rows.append({"what": f"{who}: champion not loaded", "value": str(state["champion_load_error"])})
    rows.extend(_handler_rows(snap.get("handlers")))
    if stream.get("storage"):  # only while the stream cannot reach blob storage (its batch waits)
        rows.append({"what": "blob storage", "value": f"{stream['storage']}: {stream.get('storage_error')}"})
    return rows
