"""JSON from outside (webhook bodies, labeling exports) parsed with limits, so bad input is a clear refusal.

Python's :func:`json.loads` accepts more than a sender can mean and fails in ways that are not
``ValueError``: 10,000 nested arrays raise ``RecursionError``, a 5,000-digit integer hits the
interpreter's int-conversion limit, ``NaN`` and ``Infinity`` are accepted, a repeated key silently
keeps the last value, and a lone ``\\ud800`` escape makes a string that SQLite and UTF-8 writers
refuse later. :func:`loads` turns each of these into :class:`UntrustedJSONError` with a one-line
reason, and the values it returns are safe to store, log and serialise again.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from infra.errors import LakesightError

# Event Grid events nest about 4 levels, COCO exports about 5; deeper input is not one of them,
# and code that walks or re-serialises the value must not run out of stack.
MAX_DEPTH = 32
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # what a Delta long column (and Event Grid's .NET senders) can hold

# Only a \uD800-\uDFFF escape can produce a lone surrogate; a body without one skips that check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class UntrustedJSONError(LakesightError, ValueError):
    """The text is not JSON lakesight accepts; the message is one line saying why."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        repeated = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise UntrustedJSONError(f"key {repeated[:60]!r} appears twice in one object")
    return obj


def _integer(text: str) -> int:
    # Checked on the digits before int(): int() of a huge literal is slow and may raise itself.
    if len(text.lstrip("-")) > 19 or not INT_MIN <= (value := int(text)) <= INT_MAX:
        raise UntrustedJSONError(f"integer {text[:24]}{'…' if len(text) > 24 else ''} is outside the 64-bit range")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise UntrustedJSONError(f"number {text[:24]} is too large for a float")
    return value


def _constant(name: str) -> Any:
    raise UntrustedJSONError(f"{name} is not a JSON number")


def _check_depth(value: Any) -> None:
    """Refuse containers nested deeper than :data:`MAX_DEPTH` (iteratively: no recursion to exhaust)."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UntrustedJSONError(f"nested deeper than {MAX_DEPTH} levels")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def _check_text(value: Any, text: str) -> None:
    """Refuse lone surrogates (strings no UTF-8 writer can store)."""
    if not _SURROGATE_ESCAPE.search(text):
        return
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UntrustedJSONError("a string holds an unpaired UTF-16 surrogate escape") from exc


def decode_utf8(data: bytes) -> str:
    """``data`` as UTF-8 text (what Event Grid and the labeling exports send), or :class:`UntrustedJSONError`."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UntrustedJSONError(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc


def loads(data: bytes | str) -> Any:
    """The JSON value in ``data``, or :class:`UntrustedJSONError` (invalid, ambiguous or out of range)."""
    text = decode_utf8(data) if isinstance(data, bytes) else data
    if not text.strip():
        raise UntrustedJSONError("empty body")
    try:
        value = json.loads(
            text, object_pairs_hook=_unique_keys, parse_int=_integer, parse_float=_finite, parse_constant=_constant
        )
    except RecursionError as exc:  # raised by the C scanner itself, before any of our code could walk it
        raise UntrustedJSONError(f"nested deeper than {MAX_DEPTH} levels") from exc
    except json.JSONDecodeError as exc:
        raise UntrustedJSONError(f"not valid JSON: {exc}") from exc
    _check_depth(value)
    _check_text(value, text)
    return value
