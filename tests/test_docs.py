"""The documents a newcomer reads first stay true: the README's two commands, the settings reference."""

import re
import subprocess
from pathlib import Path

from infra.settings_reference import DOC, with_reference

ROOT = Path(__file__).resolve().parents[1]


def test_the_configuration_reference_is_current() -> None:
    document = DOC.read_text()
    assert document == with_reference(document), "run: .venv/bin/python -m infra.settings_reference"


def test_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_document_the_readme_links_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs/)?[A-Z_]+\.md)(?:#[^)]*)?\)", readme)
    assert links, "the README links its documents"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing


_EXTENSIONS = {"py", "md", "yml", "yaml", "json", "toml", "txt", "html", "sh", "bicep"}  # file names, not modules
_FILE_NAMED = re.compile(
    r"(?<![\w/.-])((?:infra|streams|training|handlers|serving|tests|docs|jvm)/[\w/.-]*\w"
    r"\.(?:py|md|yml|yaml|json|bicep|html|sh|txt|toml|xml))"
)
_MODULE_NAMED = re.compile(r"(?<![\w./-])((?:infra|streams|training|handlers|serving)(?:\.[A-Za-z_]\w*)+)")


def _texts() -> list[tuple[str, str]]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    wanted = (".py", ".md", ".yml", ".toml", ".html", ".sh")
    return [(name, (ROOT / name).read_text()) for name in listed if name.endswith(wanted) and (ROOT / name).is_file()]


def _names_something(dotted: str) -> bool:
    """Whether ``a.b.c`` is a module, or a module's name (a definition or any word in its text)."""
    parts = dotted.split(".")
    path = ROOT / parts[0]
    for index, part in enumerate(parts[1:], start=1):
        if (path / part).is_dir():
            path = path / part
            continue
        if (path / f"{part}.py").is_file():
            path = path / f"{part}.py"
            rest = parts[index + 1 :]
            return not rest or re.search(rf"\b{re.escape(rest[0])}\b", path.read_text()) is not None
        init = path / "__init__.py"
        return init.is_file() and re.search(rf"\b{re.escape(part)}\b", init.read_text()) is not None
    return True


def test_every_file_and_module_that_code_and_docs_name_exists() -> None:
    """A move leaves no stale pointer behind: every repository path and dotted module named exists."""
    stale = set()
    for name, text in _texts():
        stale |= {(name, path) for path in _FILE_NAMED.findall(text) if not (ROOT / path).exists()}
        modules = [d for d in _MODULE_NAMED.findall(text) if d.rsplit(".", 1)[-1] not in _EXTENSIONS]
        stale |= {(name, dotted) for dotted in modules if not _names_something(dotted)}
    assert not sorted(stale)
