"""The documents a newcomer reads first stay true: the README's two commands, the settings reference."""

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
    import re

    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs/)?[A-Z_]+\.md)(?:#[^)]*)?\)", readme)
    assert links, "the README links its documents"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing
