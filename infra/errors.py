"""The one exception root of lakesight.

Every error the project raises on purpose derives from :class:`LakesightError`, so the CLI's
single error boundary (``infra.cli._output``) can print it as one line and exit, while a bug (any
other exception) still shows its traceback. Subclasses keep the builtin base they had
(``ValueError`` for bad input, ``RuntimeError`` for an unusable environment), so callers that
catch those keep working.
"""

from __future__ import annotations


class LakesightError(Exception):
    """Base of every error lakesight raises on purpose; its message is one line for a person."""


class UsageError(LakesightError, ValueError):
    """Options or input that a person gave are not valid (say which, and what would be)."""


class SettingsError(LakesightError, ValueError):
    """The settings cannot be used as given (a missing secret in azure mode, a bad combination)."""
