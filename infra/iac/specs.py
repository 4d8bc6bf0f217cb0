"""Paths, loaders and offline checks for the infrastructure-as-code files shipped in ``infra/iac``.

The files themselves are the deployable artifacts (``az deployment group create``, ``databricks jobs
create``, ``az ml job create``); this module lets code and tests find them in an installed package and
reject a broken one before it reaches the cloud.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.ai.ml.entities import Command

IAC_DIR = Path(__file__).resolve().parent
AZURE_DIR = IAC_DIR / "azure"
DATABRICKS_DIR = IAC_DIR / "databricks"
AZUREML_DIR = IAC_DIR / "azureml"

DATABRICKS_JOBS = ("training", "scoring")
# Jobs API 2.1 task types; a task names exactly one.
TASK_TYPES = (
    "python_wheel_task",
    "spark_python_task",
    "notebook_task",
    "spark_jar_task",
    "spark_submit_task",
    "sql_task",
    "dbt_task",
    "run_job_task",
    "condition_task",
    "for_each_task",
    "pipeline_task",
)
_JOB_PARAM_REF = re.compile(r"\{\{\s*job\.parameters\.([A-Za-z0-9_.-]+)\s*\}\}")


class SpecError(ValueError):
    """An infrastructure file is missing or does not describe a valid deployment."""


# ------------------------------------------------------------------------------------------------
# paths
def bicep_template() -> Path:
    """The Azure entry template (storage, Event Grid, Azure ML)."""
    return AZURE_DIR / "main.bicep"


def bicep_parameters() -> Path:
    """The ARM deployment parameters file for :func:`bicep_template` (holds no secret)."""
    return AZURE_DIR / "main.parameters.json"


def bicep_files() -> list[Path]:
    """Every Bicep file: the entry template first, then its modules."""
    return [bicep_template(), *sorted((AZURE_DIR / "modules").glob("*.bicep"))]


def databricks_job_path(name: str) -> Path:
    """The Jobs API 2.1 JSON of one workflow (``training`` or ``scoring``)."""
    if name not in DATABRICKS_JOBS:
        raise SpecError(f"unknown Databricks job {name!r}; known: {', '.join(DATABRICKS_JOBS)}")
    return DATABRICKS_DIR / f"{name}-job.json"


def retrain_job_path() -> Path:
    """The Azure ML command job YAML for GPU retraining."""
    return AZUREML_DIR / "retrain-job.yml"


def all_files() -> list[Path]:
    """Every infrastructure file that a deployment uses (what the package must ship)."""
    return [
        *bicep_files(),
        bicep_parameters(),
        *(databricks_job_path(n) for n in DATABRICKS_JOBS),
        retrain_job_path(),
        AZUREML_DIR / "conda.yml",
    ]


# ------------------------------------------------------------------------------------------------
# Databricks
def load_databricks_job(name: str) -> dict[str, Any]:
    """Load one Databricks job spec and return it after :func:`validate_databricks_job` passed."""
    path = databricks_job_path(name)
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SpecError(f"{path} is missing") from exc
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: not valid JSON ({exc})") from exc
    validate_databricks_job(spec)
    return spec


def validate_databricks_job(spec: dict[str, Any]) -> None:
    """Raise :class:`SpecError` unless ``spec`` is a well-formed Jobs API 2.1 create request.

    Checks: name and tasks present; task keys unique; every ``depends_on`` names a task and the graph
    is acyclic; every ``job_cluster_key`` is defined and every defined cluster is used; each task has
    one task type; wheel tasks name package and entry point; ``{{job.parameters.x}}`` references a
    declared parameter; a continuous job has no schedule, trigger or retries.
    """
    for key in ("name", "tasks"):
        if not spec.get(key):
            raise SpecError(f"job spec needs {key!r}")
    tasks = spec["tasks"]
    keys = [t.get("task_key") for t in tasks]
    if not all(keys):
        raise SpecError("every task needs a task_key")
    if len(set(keys)) != len(keys):
        raise SpecError(f"duplicate task_key in {keys}")
    task_order(spec)  # raises on unknown dependencies and cycles

    clusters = {c.get("job_cluster_key"): c for c in spec.get("job_clusters", [])}
    for key, cluster in clusters.items():
        _check_cluster(key, cluster.get("new_cluster") or {})
    used = set()
    for task in tasks:
        kinds = [k for k in TASK_TYPES if k in task]
        if len(kinds) != 1:
            raise SpecError(f"task {task['task_key']!r} must have exactly one task type, has {kinds}")
        wheel = task.get("python_wheel_task")
        if wheel is not None and not (wheel.get("package_name") and wheel.get("entry_point")):
            raise SpecError(f"task {task['task_key']!r}: python_wheel_task needs package_name and entry_point")
        cluster_key = task.get("job_cluster_key")
        if cluster_key is not None:
            if cluster_key not in clusters:
                raise SpecError(f"task {task['task_key']!r} uses undefined job_cluster_key {cluster_key!r}")
            used.add(cluster_key)
    if unused := set(clusters) - used:
        raise SpecError(f"job clusters defined but not used: {sorted(unused)}")

    declared = {p["name"] for p in spec.get("parameters", [])}
    if missing := set(_JOB_PARAM_REF.findall(json.dumps(tasks))) - declared:
        raise SpecError(f"tasks reference undeclared job parameters: {sorted(missing)}")

    if "continuous" in spec:
        if spec["continuous"].get("pause_status") not in ("PAUSED", "UNPAUSED"):
            raise SpecError("continuous.pause_status must be PAUSED or UNPAUSED")
        # Databricks restarts continuous runs itself and rejects these settings on them.
        if "schedule" in spec or "trigger" in spec:
            raise SpecError("a continuous job cannot also have a schedule or trigger")
        if spec.get("max_concurrent_runs", 1) != 1:
            raise SpecError("a continuous job runs one instance at a time (max_concurrent_runs 1)")
        if any("max_retries" in t for t in tasks):
            raise SpecError("continuous jobs retry on their own; tasks may not set max_retries")


def _check_cluster(key: str, cluster: dict[str, Any]) -> None:
    for required in ("spark_version", "node_type_id"):
        if not cluster.get(required):
            raise SpecError(f"job cluster {key!r} needs new_cluster.{required}")
    if "num_workers" not in cluster and "autoscale" not in cluster:
        raise SpecError(f"job cluster {key!r} needs num_workers or autoscale")
    if "-ml-" not in cluster["spark_version"]:
        raise SpecError(f"job cluster {key!r}: {cluster['spark_version']} is not an ML runtime")


def task_order(spec: dict[str, Any]) -> list[str]:
    """Task keys in an order that respects ``depends_on`` (ties keep file order); raise on a cycle."""
    tasks = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in spec["tasks"]}
    for key, deps in tasks.items():
        if unknown := [d for d in deps if d not in tasks]:
            raise SpecError(f"task {key!r} depends on unknown tasks {unknown}")
    order: list[str] = []
    pending = dict(tasks)
    while pending:
        ready = [k for k, deps in pending.items() if all(d in order for d in deps)]
        if not ready:
            raise SpecError(f"task dependencies form a cycle among {sorted(pending)}")
        order.extend(ready)
        for key in ready:
            del pending[key]
    return order


def wheel_commands(spec: dict[str, Any]) -> dict[str, list[str]]:
    """For each wheel task, the ``lakesight`` command line it runs (its parameters)."""
    return {
        t["task_key"]: list(t["python_wheel_task"].get("parameters", []))
        for t in spec["tasks"]
        if "python_wheel_task" in t
    }


def spark_env_vars(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    """(job_cluster_key, spark_env_vars) for every job cluster."""
    for cluster in spec.get("job_clusters", []):
        yield cluster["job_cluster_key"], dict(cluster["new_cluster"].get("spark_env_vars", {}))


# ------------------------------------------------------------------------------------------------
# Azure ML
def load_retrain_job(
    *,
    delta_table: str | None = None,
    delta_version: int | None = None,
    compute: str | None = None,
    experiment_name: str | None = None,
    code: str | Path | None = None,
) -> Command:
    """Load the retraining command job with azure-ai-ml's own loader, with optional overrides.

    ``code`` is the folder uploaded as the job's snapshot; the YAML names the repository root, so a
    caller running from an installed package (not a checkout) must pass its own. The returned job
    is ready for ``MLClient.jobs.create_or_update``; nothing is contacted here.
    """
    from azure.ai.ml import load_job
    from azure.ai.ml.entities import Command

    overrides: list[dict[str, Any]] = []
    if delta_table is not None:
        overrides.append({"inputs.delta_table.path": delta_table})
    if delta_version is not None:
        overrides.append({"inputs.delta_version": int(delta_version)})
    if compute is not None:
        overrides.append({"compute": compute if compute.startswith("azureml:") else f"azureml:{compute}"})
    if experiment_name is not None:
        overrides.append({"experiment_name": experiment_name})
    if code is not None:
        overrides.append({"code": str(Path(code).resolve())})
    job = load_job(retrain_job_path(), params_override=overrides)
    if not isinstance(job, Command):
        raise SpecError(f"{retrain_job_path()} is a {type(job).__name__}, not a command job")
    for name in ("delta_table", "delta_version"):
        if name not in job.inputs or "${{inputs." + name + "}}" not in job.command:
            raise SpecError(f"retrain job must take input {name!r} and use it in its command")
    return job


# ------------------------------------------------------------------------------------------------
# Bicep
@dataclass(frozen=True)
class BicepParam:
    """One ``param`` declaration: its type, raw default expression (None: required) and decorators."""

    name: str
    type: str
    default: str | None
    decorators: tuple[str, ...] = ()

    @property
    def secure(self) -> bool:
        return any(d.startswith("@secure(") for d in self.decorators)


@dataclass
class BicepOutline:
    """The declarations of a Bicep file, read line by line (no compiler needed)."""

    params: dict[str, BicepParam] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)  # symbol -> 'Type@apiVersion'
    modules: dict[str, str] = field(default_factory=dict)  # symbol -> relative path
    outputs: dict[str, str] = field(default_factory=dict)  # name -> expression
    module_params: dict[str, set[str]] = field(default_factory=dict)  # module symbol -> params it passes
    text: str = ""


_PARAM = re.compile(r"^param\s+(\w+)\s+(\w+)(?:\s*=\s*(.+))?$")
_RESOURCE = re.compile(r"^resource\s+(\w+)\s+'([^']+)'")
_MODULE = re.compile(r"^module\s+(\w+)\s+'([^']+)'")
_OUTPUT = re.compile(r"^output\s+(\w+)\s+\w+\s*=\s*(.+)$")


def bicep_outline(path: Path) -> BicepOutline:
    """Top-level params, resources, modules and outputs of a Bicep file; raise on unbalanced brackets."""
    text = path.read_text()
    outline = BicepOutline(text=text)
    decorators: list[str] = []
    code_lines = []
    module: str | None = None  # the module block being read
    params_indent: int | None = None  # indentation of its `params: {` line
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("//"):
            continue
        code_lines.append(_strip_strings(line))
        if raw[0].isspace():  # nested: not a top-level declaration
            indent = len(raw) - len(raw.lstrip())
            if module and line == "params: {":
                params_indent = indent
            elif module and params_indent is not None:
                if indent == params_indent and line.startswith("}"):
                    params_indent = None
                elif indent == params_indent + 2 and (key := re.match(r"(\w+):", line)):
                    outline.module_params[module].add(key[1])
            continue
        module = None
        if line.startswith("@"):
            decorators.append(line)
            continue
        if m := _PARAM.match(line):
            outline.params[m[1]] = BicepParam(m[1], m[2], m[3], tuple(decorators))
        elif m := _RESOURCE.match(line):
            outline.resources[m[1]] = m[2]
        elif m := _MODULE.match(line):
            outline.modules[m[1]] = m[2]
            module = m[1]
            outline.module_params[module] = set()
        elif m := _OUTPUT.match(line):
            outline.outputs[m[1]] = m[2]
        decorators = []
    code = "\n".join(code_lines)
    for open_, close in ("{}", "[]", "()"):
        if code.count(open_) != code.count(close):
            raise SpecError(f"{path}: unbalanced {open_}{close}")
    return outline


def _strip_strings(line: str) -> str:
    """The line with the contents of '...' strings removed, interpolations kept (for bracket counts)."""
    parts = re.split(r"'((?:[^'\\]|\\.)*)'", line)
    kept = [p if i % 2 == 0 else "".join(re.findall(r"\$\{[^}]*\}", p)) for i, p in enumerate(parts)]
    return "".join(kept)


def bicep_executable() -> list[str] | None:
    """The command that compiles Bicep here (``bicep`` or the Azure CLI's copy), or None."""
    if found := shutil.which("bicep"):
        return [found]
    cli_copy = Path.home() / ".azure" / "bin" / "bicep"
    return [str(cli_copy)] if cli_copy.exists() else None


def build_bicep(path: Path | None = None) -> dict[str, Any]:
    """Compile a Bicep file with the real compiler and return the ARM template it produces."""
    command = bicep_executable()
    if command is None:
        raise SpecError("no bicep executable found (install the Bicep CLI or `az bicep install`)")
    source = path or bicep_template()
    done = subprocess.run([*command, "build", str(source), "--stdout"], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SpecError(f"bicep build {source} failed:\n{done.stderr}")
    return json.loads(done.stdout)
