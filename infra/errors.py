"""The one exception root of lakesight.

Every error the project raises on purpose derives from :class:`LakesightError`, so the CLI's
single error boundary (``infra.cli._output``) can print it as one line and exit, while a bug (any
other exception) still shows its traceback. Subclasses keep the builtin base they had
(``ValueError`` for bad input, ``RuntimeError`` for an unusable environment), so callers that
catch those keep working.
"""

from __future__ import annotations

import re


class LakesightError(Exception):
    """Base of every error lakesight raises on purpose; its message is one line for a person."""


class UsageError(LakesightError, ValueError):
    """Options or input that a person gave are not valid (say which, and what would be)."""


class SettingsError(LakesightError, ValueError):
    """The settings cannot be used as given (a missing secret in azure mode, a bad combination)."""


# Errors raised on a Spark executor -----------------------------------------------------------
# A project error raised inside a Spark task reaches the driver wrapped (pyspark's PythonException,
# py4j's Py4JJavaError, StreamingQueryException) as the text of the worker's Python traceback.
_TRACEBACK = "Traceback (most recent call last):"
# Where the Python traceback ends inside the JVM's text: its SQL state, a Java frame, the driver's
# stack trace or a streaming query's description.
_TRACEBACK_END = re.compile(r"\n ?SQLSTATE: |\n\s+at [\w$.]+\(|\nDriver stacktrace:|\n=== Streaming Query ===")
_EXCEPTION_LINE = re.compile(r"^(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+): ", re.MULTILINE)
_WRAPPER_MODULES = ("py4j", "pyspark")


class ExecutorError(LakesightError):
    """A project error raised in a Spark task, read back from the traceback text the driver got.

    ``name`` is the remote class (``infra.blob.StorageUnavailable``); ``detail`` its whole
    message, which may run over several lines (a training worker's log tail); ``str()`` is one line.
    """

    def __init__(self, name: str, detail: str):
        self.name, self.detail = name, detail
        first = detail.strip().splitlines()[0] if detail.strip() else ""
        super().__init__(f"{first} ({name.rsplit('.', 1)[-1]} on a Spark executor)")


def executor_error(exc: BaseException) -> ExecutorError | None:
    """The project error inside ``exc`` (or the exceptions it was raised from) when a Spark task
    raised one; None for anything else, which keeps its traceback."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__module__.startswith(_WRAPPER_MODULES):
            found = project_error_in(str(current))
            if found is not None:
                return found
        current = current.__cause__ or current.__context__
    return None


def project_error_in(text: str) -> ExecutorError | None:
    """The last project error named in the first Python traceback of ``text``."""
    start = text.find(_TRACEBACK)
    if start < 0:
        return None
    block = text[start:]
    end = _TRACEBACK_END.search(block)
    block = block[: end.start()] if end else block
    names = _project_error_names()
    found = [m for m in _EXCEPTION_LINE.finditer(block) if m.group("name") in names]
    if not found:
        return None
    last = found[-1]
    return ExecutorError(last.group("name"), block[last.end() :].rstrip())


def _project_error_names() -> set[str]:
    """``module.Class`` of every LakesightError subclass this process has imported (the driver
    imported the module of the code it sent to the executors, so its errors are known)."""
    names, pending = set(), [LakesightError]
    while pending:
        cls = pending.pop()
        names.add(f"{cls.__module__}.{cls.__qualname__}")
        pending.extend(cls.__subclasses__())
    return names
