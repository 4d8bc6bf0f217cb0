"""``lakesight demo``: the whole story on the digits data, unattended, on one machine.

1. start Azurite (and Label Studio), the webhook handler, the relay and the scoring stream (child processes);
2. ingest a small labeled seed set and train v1, which becomes champion;
3. upload the other training images to the images container: blob events drive scoring;
4. unsure images land in the labeling container. With Label Studio (the labeling service where it
   is installed) the handler makes them tasks there, and a scripted labeler submits their true
   labels through Label Studio's HTTP API as its page does; they come back by webhook. Otherwise
   the demo plays the labeling service and writes an export with their true labels;
5. labels merge, the retraining policy fires, v2 trains and is promoted if better, and the
   running stream scores later images with it;
6. print a summary.

Children talk to each other only as in production: through blob storage, events, the lake and
MLflow. Each run starts from a clean demo state dir; Ctrl-C stops every child.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from infra.core.labeling.label_studio import LABEL_STUDIO, LabelStudioClient, label_studio_url, labeling_service
from infra.errors import LakesightError
from infra.local.label_studio import LabelStudio
from infra.processes import SCORING_SERVICE, Service, free_port, lakesight_argv, port_open
from infra.settings import Settings


@dataclass(frozen=True)
class DemoPlan:
    """How big the story is. The defaults are the README demo; tests run a smaller one."""

    seed_per_class: int = 15  # a deliberately small seed set: v1 is unsure often enough to need humans
    incoming_per_class: int | None = None  # None: every other training image
    final_wave: int = 40  # images uploaded after promotion, to show the stream follows the champion
    v1_epochs: int = 25
    v2_epochs: int = 25
    min_new_labels: int = 25
    confidence_threshold: float = 0.9
    # The labels humans are asked for: the strategy spends them on the images that teach most.
    labeling_budget: int = 200
    # Where the labels come from: label-studio or container (an export); "" as LAKESIGHT_LABELING_SERVICE says.
    labeling_service: str = ""


class DemoError(LakesightError, RuntimeError):
    """A demo step did not complete; the message says which and where to look."""


@dataclass
class DemoReport:
    seconds: float = 0.0
    images_uploaded: int = 0
    images_scored: int = 0
    sent_to_labeling: int = 0
    labels_merged: int = 0
    labeling_service: str = ""
    labels_received: int = 0  # Label Studio's annotations received by webhook or pull
    v1: str | None = None
    v2: str | None = None
    champion: str | None = None
    v1_holdout_accuracy: float | None = None
    v2_holdout_accuracy: float | None = None
    labeling_strategy: str = ""
    labeling_outcomes: dict[str, int] = field(default_factory=dict)  # candidates: sent, near_duplicate, ...
    final_wave_versions: dict[str, int] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    state_dir: str = ""
    steps: dict[str, float] = field(default_factory=dict)


def _interrupted(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def wait_until(
    what: str,
    check: Callable[[], Any],
    *,
    timeout: float,
    every: float = 1.0,
    on_wait: Callable[[], None] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        if on_wait is not None:
            on_wait()
        time.sleep(every)


class Demo:
    def __init__(self, base: Settings, console: Console, plan: DemoPlan | None = None):
        self.console = console
        self.plan = plan = plan or DemoPlan()
        self.root = base.state_dir / "demo"
        self.blob_port = free_port()
        self.handler_port = free_port()
        self.label_studio_port = free_port()
        self.labeling_service = plan.labeling_service or labeling_service(base)
        self.label_studio: LabelStudio | None = None
        self.label_studio_pid = 0
        self.env = {
            "LAKESIGHT_STATE_DIR": str(self.root),
            "LAKESIGHT_BLOB_PORT": str(self.blob_port),
            "LAKESIGHT_HANDLER_PORT": str(self.handler_port),
            "LAKESIGHT_SPARK_MASTER": "local[2]",
            "LAKESIGHT_MODEL_NAME": base.model_name,
            "LAKESIGHT_CONFIDENCE_THRESHOLD": str(plan.confidence_threshold),
            "LAKESIGHT_LABELING_DAILY_BUDGET": str(plan.labeling_budget),
            # The story lasts minutes, not hours: each batch's candidates compete at once.
            "LAKESIGHT_LABELING_WINDOW_S": "0",
            "LAKESIGHT_RETRAIN_MIN_NEW_LABELS": str(plan.min_new_labels),
            "LAKESIGHT_RETRAIN_MIN_SAMPLE": str(min(10, plan.min_new_labels)),
            "LAKESIGHT_RETRAIN_COOLDOWN_S": "0",
            "LAKESIGHT_CHAMPION_CHECK_S": "2",
            # One labeling round: v2 is promoted on the split alone. Live evidence would need a
            # second round on images v2 shadow-scored (docs/PROMOTION.md).
            "LAKESIGHT_PROMOTION_MIN_PAIRS": "0",
            "LAKESIGHT_LABEL_CLASSES": json.dumps([str(i) for i in range(10)]),
            "LAKESIGHT_LABELING_SERVICE": self.labeling_service,
            "LAKESIGHT_LABEL_STUDIO_PORT": str(self.label_studio_port),
            "LAKESIGHT_LABEL_STUDIO_SYNC_S": "1",
            "LAKESIGHT_RETRAIN_COMMAND": shlex.join(
                lakesight_argv("train", "--version", "{version}", "--epochs", str(plan.v2_epochs), "--json")
            ),
        }
        self.settings = Settings(
            state_dir=self.root,
            blob_port=self.blob_port,
            handler_port=self.handler_port,
            spark_master="local[2]",
            model_name=base.model_name,
            labeling_service=self.labeling_service,
            label_studio_port=self.label_studio_port,
            label_studio_venv=base.label_studio_venv,
        )
        self.services: list[Service] = []
        self.report = DemoReport(state_dir=str(self.root))
        self.truth: dict[str, str] = {}

    # plumbing ----------------------------------------------------------------------------------
    def step(self, title: str) -> contextlib.AbstractContextManager[None]:
        @contextlib.contextmanager
        def timed() -> Iterator[None]:
            started = time.perf_counter()
            self.console.print(f"[bold cyan]▶[/] {title}")
            yield
            took = time.perf_counter() - started
            self.report.steps[title] = round(took, 1)
            self.console.print(f"  [green]✓[/] {title} [dim]({took:.1f}s)[/]")

        return timed()

    def spawn(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> Service:
        service = Service(name, self.settings)
        service.spawn(lakesight_argv(*args), env={**self.env, **(extra_env or {})})
        self.services.append(service)
        return service

    def wait_for_count(self, what: str, count: Callable[[], int], target: int, *, timeout: float) -> None:
        """Wait until ``count()`` reaches ``target``, showing the live count."""
        with self.console.status(f"{what}: 0 / {target}") as status:

            def done() -> bool:
                current = count()
                status.update(f"{what}: {current} / {target}")
                return current >= target

            wait_until(f"{target} images {what}", done, timeout=timeout, on_wait=self.check_children)

    def check_children(self) -> None:
        for service in self.services:
            if service.pid() is None:
                raise DemoError(service.exited("unexpectedly"))

    def stop_all(self) -> None:
        for service in reversed(self.services):
            service.stop(timeout=20)
        self.services.clear()

    def run_cli(self, *args: str, timeout: float = 600) -> str:
        import subprocess

        result = subprocess.run(
            lakesight_argv(*args), capture_output=True, text=True, env={**os.environ, **self.env}, timeout=timeout
        )
        if result.returncode != 0:
            raise DemoError(f"'lakesight {' '.join(args)}' failed: {result.stderr.strip()[-800:]}")
        return result.stdout

    # the story ---------------------------------------------------------------------------------
    def run(self) -> DemoReport:
        started = time.perf_counter()
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        # The demo's settings reach its child processes through the environment; the caller's
        # environment is given back afterwards (a test process runs other tests next).
        saved = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:  # SIGTERM too, and SIGINT even when the shell started us ignoring it
            signal.signal(sig, _interrupted)
        try:
            self._story()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop_all()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        self.report.seconds = round(time.perf_counter() - started, 1)
        return self.report

    def _story(self) -> None:
        from infra.local.sample_data import digits_images, write_images
        from infra.local.stack import Azurite, check_java

        check_java()
        with self.step("start Azurite and create the containers"):
            self.services.append(Azurite(self.settings))
            Azurite(self.settings).start()
        if self.labeling_service == LABEL_STUDIO:
            with self.step("launch Label Studio (it answers in a minute or two; the story goes on meanwhile)"):
                self.label_studio = LabelStudio(self.settings)
                self.label_studio_pid = self.label_studio.launch()
                self.services.append(self.label_studio)
        data = self.root / "data"
        with self.step("write scikit-learn digits (train / holdout)"):
            write_images(digits_images(), out_dir=data)
            seed = data / "seed"
            incoming: list[Path] = []
            plan = self.plan
            for label_dir in sorted((data / "train").iterdir()):
                files = sorted(label_dir.glob("*.png"))
                for path in files[: plan.seed_per_class]:
                    (seed / label_dir.name).mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, seed / label_dir.name / path.name)
                stop = None if plan.incoming_per_class is None else plan.seed_per_class + plan.incoming_per_class
                for path in files[plan.seed_per_class : stop]:
                    incoming.append(path)
                    self.truth[path.name] = label_dir.name
            # Interleave classes so every wave holds every class.
            incoming.sort(key=lambda p: p.name)
        with self.step("start the webhook handler and the relay"):
            self.spawn("handler", "serve-events", "--log-level", "warning")
            wait_until(
                "the handler",
                lambda: port_open("127.0.0.1", self.handler_port),
                timeout=60,
                on_wait=self.check_children,
            )
            self.spawn("relay", "relay", "--interval", "0.5")
        with self.step(f"ingest the labeled seed set ({self.plan.seed_per_class} images per class)"):
            self.run_cli("ingest", str(seed), "--labeled", "--classes", ",".join(str(i) for i in range(10)))
        with self.step("train v1 and register it as champion"):
            printed = self.run_cli("train", "--epochs", str(self.plan.v1_epochs), "--json")
            v1 = json.loads(printed.strip().splitlines()[-1])
            self.report.v1 = str(v1["model_version"])
            if not v1.get("promoted"):
                raise DemoError(f"v1 was not promoted: {v1}")
        with self.step("start the scoring stream on blob arrivals"):
            self.spawn(SCORING_SERVICE, "score", "--source", "arrivals")
        final_wave = incoming[-self.plan.final_wave :]
        first_wave = incoming[: -self.plan.final_wave]
        with self.step(f"upload {len(first_wave)} unlabeled images: blob events drive scoring"):
            self._upload(first_wave)
            self.wait_for_count("scored", self._scored, len(first_wave), timeout=300)
        labeled = self._label_in_label_studio() if self.labeling_service == LABEL_STUDIO else self._label_by_export()
        with self.step("labels merge, the policy fires, v2 trains and is promoted if better"):
            wait_until(
                "human labels in the images table",
                lambda: self._human_labels() >= labeled > 0,
                timeout=120,
                on_wait=self.check_children,
            )
            self.report.labels_merged = self._human_labels()
            self.report.labels_received = self._annotations_received()
            self.report.v2 = wait_until(
                "a retrained model version", self._newer_version, timeout=420, every=2.0, on_wait=self.check_children
            )
            wait_until("the promotion decision", lambda: self._alias_settled(self.report.v2), timeout=120)
        self._final_wave(final_wave)
        self.report.labeling_service = self.labeling_service
        self.report.labeling_strategy = self.settings.labeling_strategy
        self.report.labeling_outcomes = self._labeling_outcomes()
        self.report.images_scored = self._scored()
        self.report.champion = self._champion()
        self.report.decisions = self._decisions()

    def _upload(self, paths: list[Path]) -> None:
        from infra.blob import BlobStore

        store = BlobStore(self.settings)
        for path in paths:
            store.upload(
                self.settings.images_container, f"incoming/{path.name}", path.read_bytes(), content_type="image/png"
            )
        self.report.images_uploaded += len(paths)

    def _final_wave(self, final_wave: list[Path]) -> None:
        with self.step(f"upload {len(final_wave)} more images: scored by the current champion"):
            self._upload(final_wave)
            self.wait_for_count("scored", self._scored, self.report.images_uploaded, timeout=240)
            self.report.final_wave_versions = self._versions_of([f"incoming/{p.name}" for p in final_wave])
        with self.step("evaluate v1 and v2 on the holdout images"):
            holdout = sorted((self.root / "data" / "holdout").rglob("*.png"))
            self.report.v1_holdout_accuracy = self._accuracy(self.report.v1, holdout)
            self.report.v2_holdout_accuracy = self._accuracy(self.report.v2, holdout)

    def _truth_of(self, line: dict[str, Any]) -> str | None:
        return self.truth.get(line["source_url"].rsplit("/", 1)[-1])

    def _label_in_label_studio(self) -> int:
        """A scripted labeler in Label Studio: the handler made the picks its tasks (with v1's answer
        as the pre-annotation); the labeler submits each true label through the HTTP API, as the
        labeling page does, and Label Studio's webhooks bring them back. The labels submitted."""
        with self.step("label the unsure images in Label Studio: a scripted labeler submits them over its API"):
            requested = wait_until("labeling manifests", self._manifest_lines, timeout=60)
            self.report.sent_to_labeling = len(requested)
            if self.label_studio is None:
                raise DemoError("Label Studio was not launched")
            self.label_studio.wait_healthy(self.label_studio_pid, timeout=420)
            settings = self.settings
            client = LabelStudioClient(
                label_studio_url(settings), settings.label_studio_email, settings.label_studio_secret()
            )
            try:
                project = wait_until(
                    "the model's Label Studio project",
                    lambda: client.find_project(settings.model_name),
                    timeout=120,
                    on_wait=self.check_children,
                )

                def all_tasks() -> list[dict[str, Any]] | None:
                    found = client.tasks(project)
                    return found if len(found) >= len(requested) else None

                tasks = wait_until(
                    f"{len(requested)} Label Studio tasks", all_tasks, timeout=120, on_wait=self.check_children
                )
                submitted = 0
                for task in tasks:
                    truth = self._truth_of({"source_url": task["data"]["source_url"]})
                    if truth is not None:
                        client.annotate(task["id"], truth)
                        submitted += 1
            finally:
                client.close()
        return submitted

    def _label_by_export(self) -> int:
        """The labeling service played by the demo: an export of the true labels (the labels in it)."""
        from infra.blob import BlobStore

        with self.step("play the labeling service: export true labels of the unsure images"):
            # What a labeling service has: the manifests' copies in the labeling container.
            requested = wait_until("labeling manifests", self._manifest_lines, timeout=60)
            self.report.sent_to_labeling = len(requested)
            labeled_at = dt.datetime.now(dt.UTC).isoformat()
            lines = [
                json.dumps(
                    {
                        "image_url": line["image_url"],
                        "task_id": line["task_id"],
                        "label": self._truth_of(line),
                        "labeled_at": labeled_at,
                    }
                )
                for line in requested
                if self._truth_of(line) is not None
            ]
            BlobStore(self.settings).upload(
                self.settings.exports_container,
                "exports/round-1.jsonl",
                ("\n".join(lines) + "\n").encode(),
                content_type="application/x-ndjson",
            )
        return len(lines)

    # observations --------------------------------------------------------------------------------
    def _images(self, columns: list[str]) -> Any:
        from infra.lake import Lake
        from infra.tables import IMAGES

        lake = Lake(self.settings)
        return lake.read(IMAGES, columns=columns) if lake.exists(IMAGES) else None

    def _scored(self) -> int:
        import pyarrow.compute as pc

        table = self._images(["path", "scored_at", "error"])
        if table is None:
            return 0
        incoming = pc.match_substring(table.column("path"), f"/{self.settings.images_container}/incoming/")
        done = pc.or_(pc.is_valid(table.column("scored_at")), pc.is_valid(table.column("error")))
        return int(pc.sum(pc.and_(incoming, done)).as_py() or 0)

    def _labeling_outcomes(self) -> dict[str, int]:
        from infra.lake import Lake
        from infra.tables import LABELING_CANDIDATES

        lake = Lake(self.settings)
        if not lake.exists(LABELING_CANDIDATES):
            return {}
        outcomes = lake.read(LABELING_CANDIDATES, columns=["outcome"]).column("outcome").to_pylist()
        return dict(sorted(Counter(o for o in outcomes if o).items()))

    def _annotations_received(self) -> int:
        from infra.lake import Lake
        from infra.tables import LABEL_STUDIO_ANNOTATIONS

        lake = Lake(self.settings)
        return lake.read(LABEL_STUDIO_ANNOTATIONS).num_rows if lake.exists(LABEL_STUDIO_ANNOTATIONS) else 0

    def _human_labels(self) -> int:
        import pyarrow.compute as pc

        table = self._images(["label_source"])
        return 0 if table is None else int(pc.sum(pc.equal(table.column("label_source"), "human")).as_py() or 0)

    def _manifest_lines(self) -> list[dict[str, Any]]:
        """Every line of the hand-off's manifests in the labeling container (what a labeler receives)."""
        from infra.blob import BlobStore

        store = BlobStore(self.settings)
        container = self.settings.labeling_container
        lines: list[dict[str, Any]] = []
        for blob in store.list(container, prefix="manifests/"):
            text = store.download(container, str(getattr(blob, "name", ""))).decode()
            lines.extend(json.loads(line) for line in text.splitlines() if line.strip())
        return lines

    def _versions_of(self, names: list[str]) -> dict[str, int]:
        table = self._images(["path", "model_version"])
        wanted = {n.rsplit("/", 1)[-1] for n in names}
        counts: dict[str, int] = {}
        for row in table.to_pylist():
            if row["path"].rsplit("/", 1)[-1] in wanted and "/incoming/" in row["path"]:
                counts[str(row["model_version"])] = counts.get(str(row["model_version"]), 0) + 1
        return counts

    def _newer_version(self) -> str | None:
        from infra import registry

        versions = registry.client(self.settings).search_model_versions(f"name = '{self.settings.model_name}'")
        newer = [int(v.version) for v in versions if int(v.version) > int(self.report.v1 or 0)]
        return str(min(newer)) if newer else None

    def _alias_settled(self, version: str | None) -> bool:
        """Whether ``version`` has its promotion decision (a rejected version gets no alias, only the tag)."""
        from infra import registry

        if version is None:
            return False
        details = registry.client(self.settings).get_model_version(self.settings.model_name, version)
        return bool((details.tags or {}).get(registry.TAG_DECISION))

    def _champion(self) -> str | None:
        from infra import registry

        current = registry.champion_version(self.settings)
        return None if current is None else str(current.version)

    def _accuracy(self, version: str | None, holdout: list[Path]) -> float | None:
        from infra import registry

        if version is None:
            return None
        classifier, _ = registry.load_classifier(self.settings, version)
        result = classifier.classify([p.read_bytes() for p in holdout])
        correct = sum(1 for label, p in zip(result["label"], holdout, strict=True) if label == p.parent.name)
        return round(correct / len(holdout), 4)

    def _decisions(self) -> list[dict[str, Any]]:
        from infra.core.status import snapshot

        return snapshot(self.settings).get("decisions") or []


def run_demo(base: Settings, console: Console, plan: DemoPlan | None = None) -> DemoReport:
    return Demo(base, console, plan).run()
