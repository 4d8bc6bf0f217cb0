"""The configuration reference: a Markdown table of every setting, generated from :class:`Settings`.

``lakesight config --reference`` prints it; docs/CONFIGURATION.md holds it between two markers, and
``tests/test_docs.py`` fails when that copy is stale (``python -m infra.settings_reference`` rewrites it).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import SecretStr

from infra.settings import Settings

BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "CONFIGURATION.md"


def reference_markdown() -> str:
    """The configuration reference table (README), generated from :class:`Settings`."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    defaults = Settings.model_construct()
    for name, info in Settings.model_fields.items():
        value = getattr(defaults, name, info.default)
        if isinstance(value, SecretStr):
            shown = "(secret)" if name != "blob_connection_string" else "(Azurite in local mode)"
        elif value in ("", {}, None):
            shown = "(derived)" if isinstance(value, str) else "(empty)"
        else:
            shown = f"`{value}`"
        lines.append(f"| `LAKESIGHT_{name.upper()}` | {shown} | {info.description or ''} |")
    return "\n".join(lines)


def with_reference(document: str) -> str:
    """``document`` with the block between the settings markers replaced by the generated table."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(document):
        raise ValueError("the document has no settings markers")
    return pattern.sub(lambda _m: f"{BEGIN}\n{reference_markdown()}\n{END}", document)


def sync(path: Path = DOC) -> bool:
    """Rewrite ``path`` when its reference is stale; True when it changed."""
    text = path.read_text()
    updated = with_reference(text)
    if updated != text:
        path.write_text(updated)
    return updated != text


if __name__ == "__main__":  # python -m infra.settings_reference
    print("updated" if sync() else "up to date")
