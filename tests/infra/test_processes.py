"""Local processes: what an error quotes of a service's log when the service stops."""

from __future__ import annotations

from pathlib import Path

from infra.processes import Service, log_tail
from infra.settings import Settings


def test_the_end_of_a_log_starts_at_a_line(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    tail = log_tail(path, 100)
    assert tail.startswith("line ") and tail.endswith("line 999\n") and len(tail) <= 100
    assert log_tail(path, 100_000) == path.read_text()


def test_a_log_that_cannot_be_read_says_so_instead_of_failing(tmp_path: Path) -> None:
    assert log_tail(tmp_path / "never-written.log").startswith("(no log: No such file or directory")


def test_a_stopped_service_is_named_with_the_last_line_of_its_log_first(tmp_path: Path) -> None:
    service = Service("crasher", Settings(state_dir=tmp_path))
    service.settings.logs_dir.mkdir(parents=True)
    service.log_file.write_text(
        "Traceback (most recent call last):\n  File \"x.py\"\nTypeError: Unknown option 'x'\n\n"
    )

    message = service.exited("during start-up")

    first, rest = message.split("\n", 1)
    assert first == "crasher exited during start-up: TypeError: Unknown option 'x'"
    assert str(service.log_file) in rest and "Traceback" in rest
