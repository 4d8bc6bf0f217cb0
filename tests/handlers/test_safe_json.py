"""Untrusted JSON: what json.loads would accept, crash on or misread is one clear UntrustedJSONError."""

from __future__ import annotations

import json

import pytest

from handlers.api import safe_json
from handlers.api.safe_json import MAX_DEPTH, UntrustedJSONError


def test_ordinary_json_is_returned_as_json_loads_would() -> None:
    text = '{"a": [1, -2, 3.5, "\\ud83d\\ude00", null, true], "b": {"c": 9223372036854775807}}'
    assert safe_json.loads(text.encode()) == {"a": [1, -2, 3.5, "\U0001f600", None, True], "b": {"c": 2**63 - 1}}


@pytest.mark.parametrize("text", [b"42", b'"text"', b"null", b"true"])
def test_scalars_are_json_too(text: bytes) -> None:
    assert safe_json.loads(text) == json.loads(text)


def test_depth_up_to_the_limit_is_accepted() -> None:
    assert safe_json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "nested deeper than"),  # json.loads: RecursionError
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper than"),
        (b'{"n": ' + b"9" * 5000 + b"}", "outside the 64-bit range"),  # json.loads: int-conversion ValueError
        (b'{"n": 9223372036854775808}', "outside the 64-bit range"),
        (b'{"n": 1e400}', "too large for a float"),
        (b'{"n": NaN}', "NaN is not a JSON number"),
        (b'{"n": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"a": 1, "a": 2}', "key 'a' appears twice"),
        (b'["\\ud800"]', "unpaired UTF-16 surrogate"),
        (b'["\xff"]', "not UTF-8"),
        (b"", "empty body"),
        (b"[1,", "not valid JSON"),
    ],
)
def test_hostile_json_is_refused_with_a_reason(text: bytes, reason: str) -> None:
    with pytest.raises(UntrustedJSONError, match=reason) as refused:
        safe_json.loads(text)
    assert "\n" not in str(refused.value) and isinstance(refused.value, ValueError)
