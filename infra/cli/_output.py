"""What every command shares: the root app with its error boundary, output helpers and logging set-up."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from infra.blob import quiet_azure_sdk
from infra.errors import LakesightError, executor_error

console = Console(stderr=True, soft_wrap=True)
out = Console()


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with ``error: message`` on stderr and exit status ``code``."""
    # Escaped: a message quoting a file name such as "img [1].png" is text, not markup.
    console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(code)


class _Boundary(TyperGroup):
    """The single error boundary: a project error is one line and exit 1, also when a Spark task
    raised it (it arrives wrapped in pyspark's or py4j's exception); anything else is a bug and
    keeps its traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except LakesightError as exc:
            fail(str(exc))
        except Exception as exc:
            remote = executor_error(exc)
            if remote is None:
                raise
            fail(str(remote))


app = typer.Typer(
    name="lakesight",
    help="Event-driven deep-learning image classification on a lakehouse.",
    cls=_Boundary,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def sub_app(name: str, help_text: str) -> typer.Typer:
    """A group of subcommands (``lakesight NAME …``) under the root app."""
    group = typer.Typer(help=help_text, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


# lakesight's own loggers (its packages, and ``lakesight.*`` names); every other library logs at
# WARNING unless asked for DEBUG: at INFO for every logger, one scoring batch logged thousands of
# lines of other libraries' chatter.
PROJECT_LOGGERS = ("infra", "streams", "training", "handlers", "serving", "lakesight")


def configure_logging(level: str = "INFO", *, force: bool = False) -> None:
    """One log format for every long-running command (stderr): ``level`` for lakesight's own loggers,
    WARNING for the rest unless ``level`` is DEBUG (the Azure SDK's: ``infra.blob.quiet_azure_sdk``)."""
    level = level.upper()
    debug = level == "DEBUG"
    root_level = level if debug or logging.getLevelName(level) > logging.WARNING else "WARNING"
    logging.basicConfig(level=root_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=force)
    if not debug:
        _quiet_libraries(logging.getLevelName(root_level))
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)
    quiet_azure_sdk(level)


def _quiet_libraries(floor: int) -> None:
    """Raise libraries' own loggers to ``floor``: some set INFO on themselves when imported (MLflow's
    ``mlflow`` logger), which the root's level does not reach."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        ours = any(name == p or name.startswith(p + ".") for p in PROJECT_LOGGERS)
        if not ours and isinstance(logger, logging.Logger) and logging.NOTSET < logger.level < floor:
            logger.setLevel(floor)


def print_json(payload: Any) -> None:
    out.print_json(json.dumps(payload, default=str))


def progress_bar() -> Any:
    """A rich progress bar on stderr, shared by long commands."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def render_rows(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        out.print(f"{title}: none")
        return
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*("–" if v is None else str(v) for v in row.values()))  # a person reads "–", not None
    out.print(table)


def say(message: str) -> None:
    """A progress line on stderr (dim), for callbacks of long work."""
    console.print(f"[dim]{escape(message)}[/]", highlight=False)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (ours, TensorFlow's, Spark's) to stderr while the block
    runs, so that ``--json`` leaves exactly one line on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# Start-up chatter that native libraries write straight to file descriptor 2, before any logging
# is set up and whatever TF_CPP_MIN_LOG_LEVEL says: absl's pre-initialisation notice, TensorFlow's
# CPU-feature and oneDNN notes (glog-style I/W lines), and XLA's "failed call to cuInit" on a
# machine without a GPU. Any other line, an error included, passes.
_NATIVE_NOISE = re.compile(
    rb"^(?:[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] "
    rb"|E\d{4} [^\]]*cuda_\w+\.cc:\d+\] failed call to cuInit"
    rb"|WARNING: All log messages before absl::InitializeLog"
    rb"|To enable the following instructions: .* rebuild TensorFlow"
    rb"|This TensorFlow binary is optimized to use available CPU instructions)"
)


@contextlib.contextmanager
def native_noise_filtered() -> Iterator[None]:
    """Within the block, what is written to file descriptor 2 (by native code, or by child processes
    that inherit it) goes through a filter that drops native start-up chatter; Python's own
    ``sys.stderr`` writes straight to the terminal, so progress lines are not held back."""
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    python_stderr = sys.stderr
    sys.stderr = os.fdopen(os.dup(original), "w", buffering=1, encoding="utf-8", errors="replace")
    forwarder = threading.Thread(
        target=_forward_lines, args=(read_end, original), name="lakesight-stderr-filter", daemon=True
    )
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(original, 2)  # the pipe's last writer here: the forwarder sees its end
        forwarder.join(timeout=5)  # a child still holding the pipe keeps it open; not waited for


def _forward_lines(read_end: int, target: int) -> None:
    with os.fdopen(read_end, "rb") as lines:
        for line in lines:
            if not _NATIVE_NOISE.match(line):
                os.write(target, line)
