from pathlib import Path

from infra.readme_sync import with_reference

ROOT = Path(__file__).resolve().parents[1]


def test_readme_configuration_reference_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme == with_reference(readme), "run: .venv/bin/python -m infra.readme_sync"


def test_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
