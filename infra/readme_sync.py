"""Keep README's configuration reference equal to what the settings object generates."""

from __future__ import annotations

import re
from pathlib import Path

from infra.settings import reference_markdown

BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def with_reference(readme: str) -> str:
    """``readme`` with the block between the settings markers replaced by the generated table."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise ValueError("README has no settings markers")
    return pattern.sub(lambda _m: f"{BEGIN}\n{reference_markdown()}\n{END}", readme)


def sync(path: Path) -> bool:
    """Rewrite ``path`` when its reference is stale; True when it changed."""
    text = path.read_text()
    updated = with_reference(text)
    if updated != text:
        path.write_text(updated)
    return updated != text


if __name__ == "__main__":  # python -m infra.readme_sync
    print("updated" if sync(Path(__file__).resolve().parent.parent / "README.md") else "up to date")
