"""Offline checks of the infrastructure-as-code files: the Databricks bundle rendered as the CLI would,
its jobs validated, the Bicep files outlined, the Azure ML online endpoint loaded.

Test code: the runtime keeps only the paths and the retraining-job loader (``infra/iac/specs.py``);
this module re-exports those so a test reads every IaC fact from one place.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.iac.specs import (
    AZURE_DIR,
    AZUREML_DIR,
    DATABRICKS_DIR,
    IAC_DIR,
    JOB_SECRET_VARIABLES,
    RETRAINING_TAG,
    SpecError,
    bicep_files,
    bicep_parameters,
    bicep_template,
    bundle_path,
    load_retrain_job,
    online_deployment_path,
    online_endpoint_path,
    retrain_job_path,
)

__all__ = [
    "AZUREML_DIR",
    "AZURE_DIR",
    "DATABRICKS_DIR",
    "IAC_DIR",
    "JOB_SECRET_VARIABLES",
    "RETRAINING_TAG",
    "SpecError",
    "bicep_files",
    "bicep_parameters",
    "bicep_template",
    "bundle_path",
    "load_retrain_job",
    "online_deployment_path",
    "online_endpoint_path",
    "retrain_job_path",
]

# The jobs of the Databricks bundle, by their key under resources.jobs.
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
_BUNDLE_REF = re.compile(r"\$\{([A-Za-z0-9_.\[\]-]+)\}")
# Substitutions the Databricks CLI fills at deploy time, from the login and the deployed resources; the
# offline rendering leaves them as written.
_DEPLOY_TIME_REFS = ("workspace.", "resources.")

# Keys of infra.spark.DEFAULT_CONF that a Databricks cluster must not get; every other key is in every
# cluster's spark_conf (tests/infra/iac/test_iac.py), because on Databricks get_spark() returns the
# cluster's own session and DEFAULT_CONF is not applied there.
LOCAL_ONLY_SPARK_CONF = (
    # Sized for the few cores of the embedded local[*] session; a cluster's cores change with
    # autoscaling, and Spark's default with adaptive execution fits them.
    "spark.sql.shuffle.partitions",
    # Off locally because nothing reads it; Databricks serves the cluster's Spark UI from the driver.
    "spark.ui.enabled",
    # In local mode this one heap holds driver and executors (docs/STREAMING.md, Memory); on a cluster
    # the node type sizes the driver, and 2g would shrink it.
    "spark.driver.memory",
)


def bundle_files(path: Path | None = None) -> list[Path]:
    """The bundle's root file and the files its ``include`` globs name, in load order."""
    root = path or bundle_path()
    return [root, *_included(root, _read_yaml(root))]


def all_files() -> list[Path]:
    """Every infrastructure file that a deployment uses (what the package must ship)."""
    return [
        *bicep_files(),
        bicep_parameters(),
        *bundle_files(),
        retrain_job_path(),
        AZUREML_DIR / "conda.yml",
        online_endpoint_path(),
        online_deployment_path(),
        AZUREML_DIR / "serve" / "Dockerfile",
    ]


# ------------------------------------------------------------------------------------------------
# Databricks bundle, rendered offline
def load_bundle(
    target: str | None = None, variables: Mapping[str, Any] | None = None, *, path: Path | None = None
) -> dict[str, Any]:
    """The bundle as ``databricks bundle validate -t <target>`` resolves it, without a workspace.

    The ``include`` files are merged in, YAML anchors and merge keys resolved (by the YAML loader), and
    every ``${var.x}``, ``${bundle.name}`` and ``${bundle.target}`` replaced. A variable's value is,
    first to last: ``variables`` (what ``--var x=...`` gives the CLI), the target's ``variables``, the
    declared default. ``target`` None means the target marked ``default: true``. Substitutions of
    deploy-time values (``${workspace.*}``, ``${resources.*}``) stay as written; anything else that
    cannot be resolved is a :class:`SpecError`. The targets themselves are left out of the result.
    """
    root = path or bundle_path()
    bundle = _read_yaml(root)
    for included in _included(root, bundle):
        _merge(bundle, _read_yaml(included), included.name)
    targets = bundle.pop("targets", None) or {}
    name = target or _default_target(targets)
    context = {"bundle.name": (bundle.get("bundle") or {}).get("name"), "bundle.target": name}
    values = _variable_values(bundle.pop("variables", None) or {}, name, _target(targets, name), variables or {})
    context.update({f"var.{k}": v for k, v in _substitute(values, context, "variables").items()})
    rendered = _substitute(bundle, context, "")
    rendered.setdefault("bundle", {})["target"] = name
    return rendered


def load_databricks_job(
    name: str, target: str | None = None, variables: Mapping[str, Any] | None = None, *, path: Path | None = None
) -> dict[str, Any]:
    """One job of the rendered bundle (:func:`load_bundle`), after :func:`validate_databricks_job` passed."""
    if name not in DATABRICKS_JOBS:
        raise SpecError(f"unknown Databricks job {name!r}; known: {', '.join(DATABRICKS_JOBS)}")
    jobs = (load_bundle(target, variables, path=path).get("resources") or {}).get("jobs") or {}
    if name not in jobs:
        raise SpecError(f"the bundle defines no job {name!r} under resources.jobs")
    validate_databricks_job(jobs[name])
    return jobs[name]


def bundle_targets(path: Path | None = None) -> list[str]:
    """The names of the bundle's targets."""
    return list(_read_yaml(path or bundle_path()).get("targets") or {})


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise SpecError(f"{path} is missing") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(document, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    return document


def _included(root: Path, bundle: dict[str, Any]) -> list[Path]:
    found: list[Path] = []
    for pattern in bundle.get("include") or []:
        matches = sorted(root.parent.glob(pattern))
        if not matches:
            raise SpecError(f"{root}: include {pattern!r} matches no file")
        found.extend(m for m in matches if m not in found)
    return found


def _merge(into: dict[str, Any], other: dict[str, Any], where: str) -> None:
    """Merge ``other`` into ``into``; one key set in two files is an error (the CLI refuses it too)."""
    for key, value in other.items():
        if isinstance(into.get(key), dict) and isinstance(value, dict):
            _merge(into[key], value, f"{where}: {key}")
        elif key in into:
            raise SpecError(f"{where}: {key!r} is already defined by another bundle file")
        else:
            into[key] = value


def _default_target(targets: dict[str, Any]) -> str:
    defaults = [name for name, spec in targets.items() if (spec or {}).get("default")]
    if len(defaults) != 1:
        raise SpecError(f"the bundle needs exactly one target with default: true to pick one, has {defaults}")
    return defaults[0]


def _target(targets: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in targets:
        raise SpecError(f"unknown bundle target {name!r}; the bundle has: {', '.join(targets) or 'no targets'}")
    spec = targets[name] or {}
    if "resources" in spec:
        # Databricks merges these into the jobs by task and cluster key; the offline rendering does not.
        raise SpecError(f"target {name!r} overrides resources, which the offline rendering cannot check")
    return spec


def _variable_values(
    declared: dict[str, Any], target: str, spec: dict[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    given = {**(spec.get("variables") or {}), **overrides}
    if unknown := sorted(set(given) - set(declared)):
        raise SpecError(f"target {target!r}: values given for undeclared variables {unknown}")
    values = {}
    for name, declaration in declared.items():
        if name in given:
            values[name] = given[name]
        elif "default" in (declaration or {}):
            values[name] = declaration["default"]
        else:
            raise SpecError(
                f"variable {name!r} has no value for target {target!r}: set targets.{target}.variables.{name}, "
                f"pass --var {name}=... or export BUNDLE_VAR_{name}"
            )
    return values


def _substitute(node: Any, context: dict[str, Any], where: str) -> Any:
    if isinstance(node, dict):
        return {key: _substitute(value, context, f"{where}.{key}".lstrip(".")) for key, value in node.items()}
    if isinstance(node, list):
        return [_substitute(value, context, f"{where}[{i}]") for i, value in enumerate(node)]
    if isinstance(node, str):
        return _substitute_text(node, context, where)
    return node


def _substitute_text(text: str, context: dict[str, Any], where: str) -> Any:
    whole = _BUNDLE_REF.fullmatch(text)
    if whole and whole[1] in context:
        return context[whole[1]]  # a reference on its own keeps the value's type (numbers, complex values)

    def one(match: re.Match[str]) -> str:
        ref = match[1]
        if ref in context and not isinstance(context[ref], dict | list):
            return str(context[ref])
        if ref in context:
            raise SpecError(f"{where}: the complex value of ${{{ref}}} cannot be part of a longer string")
        if ref.startswith(_DEPLOY_TIME_REFS):
            return match[0]
        known = sorted(k.removeprefix("var.") for k in context if k.startswith("var."))
        what = f"unknown variable {ref.removeprefix('var.')!r}" if ref.startswith("var.") else "unknown reference"
        raise SpecError(f"{where}: {what} in ${{{ref}}}; declared variables: {', '.join(known) or 'none'}")

    return _BUNDLE_REF.sub(one, text)


# ------------------------------------------------------------------------------------------------
# Databricks jobs
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
    used = {_check_task(task, clusters) for task in tasks}
    if unused := set(clusters) - used:
        raise SpecError(f"job clusters defined but not used: {sorted(unused)}")

    declared = {p["name"] for p in spec.get("parameters", [])}
    if missing := set(_JOB_PARAM_REF.findall(json.dumps(tasks))) - declared:
        raise SpecError(f"tasks reference undeclared job parameters: {sorted(missing)}")
    if "continuous" in spec:
        _check_continuous(spec)


def _check_task(task: dict[str, Any], clusters: dict[str, Any]) -> str | None:
    """Raise on a malformed task; return the job cluster it runs on (None: none of the job's)."""
    kinds = [k for k in TASK_TYPES if k in task]
    if len(kinds) != 1:
        raise SpecError(f"task {task['task_key']!r} must have exactly one task type, has {kinds}")
    wheel = task.get("python_wheel_task")
    if wheel is not None and not (wheel.get("package_name") and wheel.get("entry_point")):
        raise SpecError(f"task {task['task_key']!r}: python_wheel_task needs package_name and entry_point")
    cluster_key = task.get("job_cluster_key")
    if cluster_key is not None and cluster_key not in clusters:
        raise SpecError(f"task {task['task_key']!r} uses undefined job_cluster_key {cluster_key!r}")
    return cluster_key


def _check_continuous(spec: dict[str, Any]) -> None:
    if spec["continuous"].get("pause_status") not in ("PAUSED", "UNPAUSED"):
        raise SpecError("continuous.pause_status must be PAUSED or UNPAUSED")
    # Databricks restarts continuous runs itself and rejects these settings on them.
    if "schedule" in spec or "trigger" in spec:
        raise SpecError("a continuous job cannot also have a schedule or trigger")
    if spec.get("max_concurrent_runs", 1) != 1:
        raise SpecError("a continuous job runs one instance at a time (max_concurrent_runs 1)")
    if any("max_retries" in t for t in spec["tasks"]):
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


def wheel_commands(spec: dict[str, Any], *, bind: bool = False) -> dict[str, list[str]]:
    """For each wheel task, the ``lakesight`` command line it runs (its parameters).

    ``bind``: ``{{job.parameters.x}}`` replaced by the parameter's default, as in a run started
    without parameter overrides; otherwise the references stay as written.
    """
    defaults = {p["name"]: str(p.get("default", "")) for p in spec.get("parameters", [])}

    def bound(parameter: str) -> str:
        return _JOB_PARAM_REF.sub(lambda m: defaults[m[1]], parameter) if bind else parameter

    return {
        t["task_key"]: [bound(p) for p in t["python_wheel_task"].get("parameters", [])]
        for t in spec["tasks"]
        if "python_wheel_task" in t
    }


def task_cluster(spec: dict[str, Any], task_key: str) -> dict[str, Any]:
    """The ``new_cluster`` of the job cluster that task ``task_key`` runs on."""
    task = next(t for t in spec["tasks"] if t["task_key"] == task_key)
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in spec.get("job_clusters", [])}
    return clusters[task["job_cluster_key"]]


def spark_env_vars(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    """(job_cluster_key, spark_env_vars) for every job cluster."""
    for cluster in spec.get("job_clusters", []):
        yield cluster["job_cluster_key"], dict(cluster["new_cluster"].get("spark_env_vars", {}))


def spark_confs(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    """(job_cluster_key, spark_conf) for every job cluster."""
    for cluster in spec.get("job_clusters", []):
        yield cluster["job_cluster_key"], dict(cluster["new_cluster"].get("spark_conf", {}))


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
    reader = _OutlineReader(outline)
    code_lines = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("//"):
            continue
        code_lines.append(_strip_strings(line))
        if raw[0].isspace():  # nested: not a top-level declaration
            reader.nested(len(raw) - len(raw.lstrip()), line)
        else:
            reader.top_level(line)
    code = "\n".join(code_lines)
    for open_, close in ("{}", "[]", "()"):
        if code.count(open_) != code.count(close):
            raise SpecError(f"{path}: unbalanced {open_}{close}")
    return outline


@dataclass
class _OutlineReader:
    """Fills a :class:`BicepOutline` one line at a time."""

    outline: BicepOutline
    decorators: list[str] = field(default_factory=list)
    module: str | None = None  # the module block being read
    params_indent: int | None = None  # indentation of its `params: {` line

    def nested(self, indent: int, line: str) -> None:
        """A line inside a block: only the keys of a module's ``params`` matter."""
        if not self.module:
            return
        if line == "params: {":
            self.params_indent = indent
        elif self.params_indent is not None:
            if indent == self.params_indent and line.startswith("}"):
                self.params_indent = None
            elif indent == self.params_indent + 2 and (key := re.match(r"(\w+):", line)):
                self.outline.module_params[self.module].add(key[1])

    def top_level(self, line: str) -> None:
        """A declaration (or a decorator of the next one)."""
        self.module = None
        if line.startswith("@"):
            self.decorators.append(line)
            return
        outline = self.outline
        if m := _PARAM.match(line):
            outline.params[m[1]] = BicepParam(m[1], m[2], m[3], tuple(self.decorators))
        elif m := _RESOURCE.match(line):
            outline.resources[m[1]] = m[2]
        elif m := _MODULE.match(line):
            outline.modules[m[1]] = m[2]
            self.module = m[1]
            outline.module_params[m[1]] = set()
        elif m := _OUTPUT.match(line):
            outline.outputs[m[1]] = m[2]
        self.decorators = []


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


# ------------------------------------------------------------------------------------------------
# Azure ML online endpoint, loaded offline
# A deployment's slot and the registry alias it serves: blue takes the traffic, green is mirrored.
DEPLOYMENT_ALIASES = {"blue": "champion", "green": "challenger"}


def load_online_endpoint() -> Any:
    """The managed online endpoint, loaded with azure-ai-ml's own loader (nothing is contacted)."""
    from azure.ai.ml import load_online_endpoint as load

    return load(online_endpoint_path())


def load_online_deployment(slot: str = "blue") -> Any:
    """The online deployment for ``slot`` ("blue" or "green"), as ``--set`` overrides make it."""
    from azure.ai.ml import load_online_deployment as load

    if slot not in DEPLOYMENT_ALIASES:
        raise SpecError(f"deployment slot must be one of {', '.join(DEPLOYMENT_ALIASES)}, not {slot!r}")
    overrides = [{"name": slot}, {"environment_variables.LAKESIGHT_SERVE_ALIAS": DEPLOYMENT_ALIASES[slot]}]
    deployment = load(online_deployment_path(), params_override=overrides)
    if leaked := sorted(set(deployment.environment_variables or {}) & set(JOB_SECRET_VARIABLES)):
        raise SpecError(f"an online deployment's definition is readable by the workspace; {leaked} must not be in it")
    return deployment
